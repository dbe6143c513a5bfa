"""TLS for the servers' ports: a certificate from files, mutual TLS, and renewed files
taken up without a restart.

The gateway (HTTP, gRPC, metrics) and the registry server serve one certificate chain and
key from PEM files; with a client CA file, clients must present a certificate that chains to
it (mutual TLS). A certificate renewed in place (cert-manager, a cron job) is taken up at the
first handshake after the files change, at most one check a second (modelgate/watched.py,
which token files use too): HTTP through the server context's SNI callback, which hands
each new connection the newest context, and gRPC through its certificate configuration
fetcher, which grpcio calls before each handshake.
Connections already open keep the certificate they began with. Files that do not load
(a key written before its certificate, say) leave the previous certificate serving and are
tried again once they change again.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from modelgate.watched import Watched

log = logging.getLogger(__name__)


class TlsError(ValueError):
    """Certificate files that cannot serve: the message names the setting and the fix."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where a server's certificate chain, key and (for mutual TLS) client CA are, and the
    names of the settings that said so (for the messages)."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    cert_setting: str = "tls_cert_file"
    key_setting: str = "tls_key_file"
    client_ca_setting: str = "tls_client_ca_file"


def tls_files(
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None = None,
    *,
    settings: tuple[str, str, str] = ("tls_cert_file", "tls_key_file", "tls_client_ca_file"),
) -> TlsFiles | None:
    """The files of a server's TLS settings; None when TLS is off (no certificate given).
    TlsError when only one of certificate and key is given, or a client CA without them."""
    cert_setting, key_setting, ca_setting = settings
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsError(
                f"{ca_setting} (mutual TLS) needs TLS: set {cert_setting} and {key_setting} too"
            )
        return None
    if cert is None or key is None:
        given, missing = (cert_setting, key_setting) if key is None else (key_setting, cert_setting)
        raise TlsError(f"{given} is set but {missing} is not: TLS needs both")
    return TlsFiles(cert, key, client_ca, cert_setting, key_setting, ca_setting)


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One successful load of the files."""

    context: ssl.SSLContext
    chain: bytes
    key: bytes
    client_ca: bytes | None


class ServerCertificate:
    """A server's certificate, key and client CA, loaded from `TlsFiles` and reloaded when
    they change. Raises TlsError (one line: which file, what is wrong) when they do not load.

    Shared by the threads that handshake (the event loop, grpcio's, the metrics server's).
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._loaded = Watched(
            (files.cert, files.key, files.client_ca),
            lambda: _load(files),
            taken_up=f"took up the renewed TLS certificate {files.cert}",
            keeping="still serving the previous certificate",
        )
        # Every server is given this first context; its callback switches each new
        # connection to the newest one (the first one itself until files change).
        self._first = self._loaded.value.context
        self._first.sni_callback = self._select

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (a client CA file is given)."""
        return self.files.client_ca is not None

    @property
    def generation(self) -> int:
        """How many times renewed files were taken up."""
        return self._loaded.generation

    def ssl_context(self) -> ssl.SSLContext:
        """The context to serve with (uvicorn, asyncio, `ssl.SSLContext.wrap_socket`)."""
        return self._first

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Credentials for `grpc.aio.Server.add_secure_port` that take up renewed files."""
        served = [self.generation]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            self.reload_if_changed()
            if served[0] == self.generation:
                return None
            served[0] = self.generation
            return self._grpc_configuration()

        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(), fetch, require_client_authentication=self.mutual
        )

    def _grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        current = self._loaded.value
        return grpc.ssl_server_certificate_configuration(
            [(current.key, current.chain)], root_certificates=current.client_ca
        )

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last look (at most one look a
        second); True when a renewed certificate was taken up."""
        return self._loaded.reload_if_changed()

    def _select(self, conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: object) -> None:
        try:
            self.reload_if_changed()
        except Exception as exc:  # a handshake must not fail for it: serve what we have
            log.warning("checking the TLS files failed: %s", exc)
        current = self._loaded.value.context
        if current is not conn.context:
            conn.context = current


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{setting} {path}: {exc.strerror or exc}") from None


def _load(files: TlsFiles) -> _Loaded:
    """The files as a server context and as bytes (for gRPC), checked to belong together."""
    chain = _read(files.cert, files.cert_setting)
    key = _read(files.key, files.key_setting)
    client_ca = (
        _read(files.client_ca, files.client_ca_setting) if files.client_ca is not None else None
    )
    _check_pem_certificates(chain, files.cert, files.cert_setting)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TlsError(
                f"the key in {files.key_setting} {files.key} does not match the certificate "
                f"in {files.cert_setting} {files.cert}: give the key the certificate was "
                "issued for"
            ) from None
        raise TlsError(
            f"{files.key_setting} {files.key}: not an unencrypted PEM private key"
        ) from None
    except OSError as exc:
        raise TlsError(f"{files.cert_setting} {files.cert}: {exc.strerror or exc}") from None
    if files.client_ca is not None:
        try:
            context.load_verify_locations(cafile=files.client_ca)
        except (ssl.SSLError, OSError):
            raise TlsError(
                f"{files.client_ca_setting} {files.client_ca}: no PEM CA certificate in it"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    # The bytes gRPC is given must be the files the context checked: a renewal that wrote
    # between the two reads is loaded again at the next look.
    if chain != _read(files.cert, files.cert_setting) or key != _read(files.key, files.key_setting):
        raise TlsError(f"{files.cert_setting} {files.cert} changed while it was read")
    return _Loaded(context, chain, key, client_ca)


def _check_pem_certificates(data: bytes, path: Path, setting: str) -> None:
    """TlsError unless `data` holds PEM certificates (a server context's own error for a
    bad certificate and for a bad key is the same "PEM lib")."""
    try:
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        probe.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise TlsError(f"{setting} {path}: no PEM certificate in it") from None
