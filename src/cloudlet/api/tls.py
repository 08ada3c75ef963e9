"""The server's self-signed certificate: made on first start, reused after.

The key is written 0600 before any byte of it; clients pin the certificate's SHA-256
fingerprint (printed at start), so no CA is involved.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import InvalidInput

CERT_NAME = "server.crt"
KEY_NAME = "server.key"
VALID_DAYS = 3650


@dataclass(frozen=True)
class ServerCert:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the DER certificate, as aa:bb:...


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _make(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cloudlet@{host}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(host),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    tmp_key = key_path.with_name(key_path.name + ".new")
    tmp_key.unlink(missing_ok=True)
    _write_private(
        tmp_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    tmp_cert = cert_path.with_name(cert_path.name + ".new")
    tmp_cert.unlink(missing_ok=True)
    _write_private(tmp_cert, cert.public_bytes(serialization.Encoding.PEM))
    tmp_key.replace(key_path)
    tmp_cert.replace(cert_path)


def fingerprint(cert_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def server_cert(directory: Path) -> ServerCert:
    """The certificate and key in ``directory`` (made now when missing)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    if not (cert_path.is_file() and key_path.is_file()):
        _make(cert_path, key_path)
    key_path.chmod(0o600)
    try:
        pem = cert_path.read_bytes()
        found = fingerprint(pem)
    except ValueError:
        raise InvalidInput(
            f"the server certificate {cert_path} cannot be read",
            hint="remove it and its key; a new pair is made at the next start",
        ) from None
    return ServerCert(cert_path, key_path, found)
