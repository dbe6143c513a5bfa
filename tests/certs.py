"""Certificates made for the TLS tests: a CA, server and client certificates it issues
(valid, expired), and a second CA whose certificates the servers must refuse; and a client
that never completes its handshake, alone or many at once."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Pair:
    """A certificate and its key as PEM files (and the certificate's bytes)."""

    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


class Authority:
    """A CA that issues server and client certificates into `folder`."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self._cert = (
            _builder(subject, subject, self._key, now - _DAY, now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert = folder / f"{name}.pem"
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, client: bool = False, expired: bool = False) -> Pair:
        """A certificate for 127.0.0.1 and localhost (server) or for `name` (client)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        start, end = (now - 10 * _DAY, now - _DAY) if expired else (now - _DAY, now + 10 * _DAY)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = _builder(subject, self._cert.subject, key, start, end).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        pair = Pair(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return pair


_DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: Key,
    start: datetime.datetime,
    end: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


@dataclass(frozen=True, slots=True)
class Pki:
    """Everything the TLS tests use: `ca` issues the server's and the good client's
    certificates; `expired_client` is `ca`'s but expired; `stranger` is another CA's."""

    ca: Authority
    server: Pair
    client: Pair
    expired_client: Pair
    stranger: Pair


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = Authority(folder, "test-ca")
    other = Authority(folder, "other-ca")
    return Pki(
        ca,
        ca.issue("server"),
        ca.issue("client", client=True),
        ca.issue("expired-client", client=True, expired=True),
        other.issue("stranger", client=True),
    )


# The start of a ClientHello: a TLS record announcing 512 bytes, of which a few come.
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32)


async def closed_before(address: str, sent: bytes, seconds: float) -> bool:
    """Whether the server at `address` (host:port) closes a TCP connection that sends
    `sent` (nothing, or the start of a handshake) and then waits, within `seconds`."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(sent)
        await asyncio.wait_for(reader.read(), seconds)  # until the server closes
    except TimeoutError:
        return False
    except ConnectionError:  # closed with a reset
        pass
    finally:
        writer.close()
    return True


async def stalled_handshakes(
    address: str, count: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`count` TCP connections to `address` that each send the start of a ClientHello and
    then nothing: TLS handshakes the server holds until its timeout."""
    host, _, port = address.rpartition(":")
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        writer.write(PARTIAL_CLIENT_HELLO)
        await writer.drain()
        held.append((reader, writer))
    return held
