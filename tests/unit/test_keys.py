"""keys: private files are 0600 from birth, signing keys load only when private, TLS pins."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from connector.core.errors import ConfigError
from connector.keys import (
    generate_signing_key,
    generate_tls,
    load_signing_key,
    write_private,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_is_0600_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "sub" / "secret", b"s3cret")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "sub" / "secret") == 0o600
    assert (tmp_path / "sub" / "secret").read_bytes() == b"s3cret"


def test_write_private_refuses_to_overwrite(tmp_path: Path) -> None:
    write_private(tmp_path / "secret", b"one")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_private(tmp_path / "secret", b"two")
    assert (tmp_path / "secret").read_bytes() == b"one"


def test_signing_key_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "signing-key.pem"
    key = generate_signing_key(path)
    assert _mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    loaded = load_signing_key(path)
    assert loaded.private_bytes_raw() == key.private_bytes_raw()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_signing_key_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "signing-key.pem"
    generate_signing_key(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match=f"mode {mode:04o} allows group/other access"):
        load_signing_key(path)


def test_load_signing_key_refuses_other_key_types(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    write_private(tmp_path / "ec.pem", pem)
    with pytest.raises(ConfigError, match="must be Ed25519"):
        load_signing_key(tmp_path / "ec.pem")
    write_private(tmp_path / "junk.pem", b"not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key") as info:
        load_signing_key(tmp_path / "junk.pem")
    assert "not a key" not in str(info.value)


def test_load_signing_key_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_signing_key(tmp_path / "absent.pem")


def test_tls_certificate_sans_ca_and_validity(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "tls" / "cert.pem", tmp_path / "keys" / "tls-key.pem"
    generate_tls(cert_path, key_path, ["node.example.org", "localhost", "127.0.0.1", "localhost"])
    assert _mode(key_path) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 365 <= days <= 366


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> None:
    """Run a TLS handshake in memory, no sockets."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=host)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, conn, out, peer_in in (("c", c, c_out, s_in), ("s", s, s_out, c_in)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_certificate_can_be_pinned_with_cadata(tmp_path: Path, host: str) -> None:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_tls(cert_path, key_path, ["127.0.0.1", "localhost"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cadata=cert_path.read_text())
    client.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default
    _handshake(server, client, host)


def test_pinned_certificate_refuses_other_host(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_tls(cert_path, key_path, ["127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cadata=cert_path.read_text())
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client, "other.example.org")
