"""Key and certificate files: generate, write (0600, never briefly readable) and load.

Key material is never logged or printed; errors name the file, never its content.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connector.core.errors import ConfigError

PRIVATE_MODE = 0o600
# One year, as a self-signed pinned certificate is re-pinned by hand on renewal.
TLS_VALIDITY = datetime.timedelta(days=365)
# Tolerate peers whose clock is slightly behind ours when the certificate is brand new.
TLS_BACKDATE = datetime.timedelta(minutes=5)


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; refuse to overwrite.

    O_CREAT|O_EXCL with mode 0600 means the file is never, even briefly, readable by others.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_MODE)
    except FileExistsError as exc:
        raise ConfigError(f"{path}: refusing to overwrite an existing private file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _pkcs8_pem(key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_signing_key(path: Path) -> Ed25519PrivateKey:
    """Generate an Ed25519 signing key and write it to ``path`` as PKCS#8 PEM, mode 0600."""
    key = Ed25519PrivateKey.generate()
    write_private(path, _pkcs8_pem(key))
    return key


def check_private_mode(path: Path) -> None:
    """Raise ConfigError when ``path`` is missing or readable/writable by group or other."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigError(
            f"{path}: mode {mode:04o} allows group/other access; private keys must be 0600"
        )


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 signing key at ``path``; it must be mode 0600 and unencrypted PEM."""
    key = load_any_signing_key(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: signing key must be Ed25519")
    return key


def generate_ec_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Generate a P-256 (ES256) signing key and write it to ``path`` as PKCS#8 PEM, mode 0600.

    P-256 is what the DCP TCK and every EDC build accept (``make dcp-tck``, ``make interop``).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(path, _pkcs8_pem(key))
    return key


def load_any_signing_key(path: Path) -> Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
    """Load an Ed25519 or EC signing key at ``path`` (mode 0600, unencrypted PEM)."""
    check_private_mode(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        # The exception text may quote the file; keep only our own words.
        raise ConfigError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: signing key must be Ed25519 or EC")
    return key


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _tls_certificate(key: ec.EllipticCurvePrivateKey, hosts: list[str]) -> x509.Certificate:
    """A self-signed certificate that is both the server's leaf and its own trust anchor.

    basicConstraints CA=True lets peers pin it with ``ssl`` ``cadata``; SKI/AKI are present
    so OpenSSL's X509_STRICT mode (Python 3.13 default) accepts it.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - TLS_BACKDATE)
        .not_valid_after(now + TLS_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(eku, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def generate_tls(cert_path: Path, key_path: Path, hosts: list[str]) -> None:
    """Write a P-256 key (0600) and a one-year self-signed certificate for ``hosts``.

    Each host becomes a SAN, as an IP address when it parses as one, else as a DNS name.
    """
    unique = list(dict.fromkeys(h.strip("[]").lower() for h in hosts if h))
    if not unique:
        raise ConfigError("a TLS certificate needs at least one host name")
    key = ec.generate_private_key(ec.SECP256R1())
    write_private(key_path, _pkcs8_pem(key))
    cert = _tls_certificate(key, unique)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
