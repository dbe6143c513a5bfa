"""The TLS certificates and API tokens of one gateway process, from its settings.

HTTP and gRPC serve the certificate of `tls_cert_file` and, with `tls_client_ca_file`,
require client certificates (mutual TLS); the metrics port serves the same certificate
without asking for one (scrapers authenticate with a token, `protect_metrics`). Certificates
are taken up again when their files change (modelgate/tls.py), and so is the token file
(modelgate/tokens.py).
"""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass

import grpc

from modelgate.gateway.core.access import Access, load_tokens
from modelgate.gateway.settings import ServerSettings
from modelgate.tls import ServerCertificate, tls_files
from modelgate.tokens import TokenFile


@dataclass(frozen=True, slots=True)
class Security:
    """What one gateway's ports serve and check; every part None when not configured."""

    api: ServerCertificate | None  # HTTP and gRPC
    metrics: ServerCertificate | None
    access: Access | None
    protect_metrics: bool = False

    @classmethod
    def of(cls, settings: ServerSettings) -> Security:
        """Load the certificates and tokens the settings name. ValueError (TlsError among
        them), one line naming the setting and file, when they cannot serve."""
        files = tls_files(
            settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
        )
        api = metrics = None
        if files is not None:
            api = ServerCertificate(files)
            plain = dataclasses.replace(files, client_ca=None)
            metrics = api if files.client_ca is None else ServerCertificate(plain)
        access = None
        if settings.auth_tokens_file is not None:
            access = Access(TokenFile(settings.auth_tokens_file, load_tokens))
        return cls(api, metrics, access, settings.protect_metrics)

    def http_context(self) -> ssl.SSLContext | None:
        """The HTTP port's server context; None: plain text."""
        return self.api.ssl_context() if self.api is not None else None

    def grpc_credentials(self) -> grpc.ServerCredentials | None:
        """The gRPC port's credentials; None: plain text."""
        return self.api.grpc_credentials() if self.api is not None else None
