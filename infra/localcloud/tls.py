"""A self-signed certificate for localcloud's TLS fronts.

Google's high-level clients (the Vertex AI SDK among them) open gRPC channels with TLS and
offer no switch for a plaintext emulator. localcloud therefore also serves its gRPC APIs
over TLS with a certificate for `localhost` and `127.0.0.1`; a client trusts it through
gRPC's own setting, `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH=<dir>/roots.pem` (that certificate
plus the public roots). Nothing else in the client's code changes: endpoint and
credentials only."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
VALID_DAYS = 3650


@dataclass(frozen=True)
class Certificate:
    cert_path: Path
    key_path: Path

    @property
    def cert(self) -> bytes:
        return self.cert_path.read_bytes()

    @property
    def key(self) -> bytes:
        return self.key_path.read_bytes()


def certificate(directory: Path) -> Certificate:
    """The certificate kept in `directory`, made on first use (kept across restarts, so a
    client that trusts it keeps working after `down`/`up`)."""
    directory.mkdir(parents=True, exist_ok=True)
    found = Certificate(directory / CERT_FILE, directory / KEY_FILE)
    if found.cert_path.exists() and found.key_path.exists():
        return found
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localcloud")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    # Written to temporary names first: a crash mid-write must not leave half a key.
    key_tmp = found.key_path.with_suffix(".tmp")
    key_tmp.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_tmp.chmod(0o600)
    cert_tmp = found.cert_path.with_suffix(".tmp")
    cert_tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_tmp.replace(found.key_path)
    cert_tmp.replace(found.cert_path)
    return found


ROOTS_FILE = "roots.pem"


def trusted_roots(found: Certificate, inherited: str | None) -> Path:
    """A roots file for GRPC_DEFAULT_SSL_ROOTS_FILE_PATH: localcloud's certificate followed
    by the roots gRPC trusted before (`inherited`, that variable's previous value) or, when
    none, the public roots certifi ships — so a shell that trusts localcloud still reaches
    Google Cloud over TLS."""
    path = found.cert_path.parent / ROOTS_FILE
    # A shell that sourced this localcloud's env already points at `path`: start afresh.
    if inherited and Path(inherited).is_file() and Path(inherited).resolve() != path.resolve():
        public = Path(inherited).read_bytes()
    else:
        import certifi

        public = Path(certifi.where()).read_bytes()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(found.cert + b"\n" + public)
    tmp.replace(path)
    return path
