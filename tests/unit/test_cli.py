"""The ``connector`` command line: help for every argument, the folder as ``--dir`` on every
command, ``--version``, the trust and key commands, and a closed pipe handled quietly."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from connector import __version__
from connector.cli import _build_parser, main
from connector.participant.init import init_folder
from connector.participant.trust import load_trust

SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
            ) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command words, parser) of every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    found = []
    for name, child in subs[0].choices.items():
        found += _leaves(child, (*path, name))
    return found


LEAVES = _leaves(_build_parser())


def _placeholders(parser: argparse.ArgumentParser) -> list[str]:
    """Values for the required arguments of ``parser`` (not the folder)."""
    words: list[str] = []
    for action in parser._actions:
        if action.dest in ("folder", "dir") or isinstance(action, SKIPPED_ACTIONS):
            continue
        value = "7" if action.type in (int, float) else "x"
        if not action.option_strings and action.nargs is None:
            words.append(value)
        elif action.required:
            words += [action.option_strings[0], value]
    return words


def test_the_commands_people_look_for_exist() -> None:
    names = {" ".join(path) for path, _ in LEAVES}
    assert {"trust add", "trust list", "trust remove", "keys list", "keys rotate",
            "agreements", "revoke", "negotiation terminate", "why", "status", "catalog",
            "search"} <= names


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_argument_has_help_with_its_default(
        path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, SKIPPED_ACTIONS):
            continue
        assert action.help, f"connector {' '.join(path)}: {action.dest} has no help"
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert f"default: {action.default}" in text or "(default:" in (action.help or ""), \
                f"connector {' '.join(path)}: {action.dest} does not show its default"


@pytest.mark.parametrize(("path", "parser"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_dir_works_on_every_command(path: tuple[str, ...], parser: argparse.ArgumentParser,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Every command works on a folder and takes it as --dir; checking a bundle needs none.
    if path == ("audit", "verify-bundle"):
        assert "--dir" not in parser._option_string_actions
        return
    assert "--dir" in parser._option_string_actions, f"connector {' '.join(path)}: no --dir"
    top = _build_parser()
    args = top.parse_args([*path, *_placeholders(parser), "--dir", "/some/where"])
    from connector.cli import _resolve_folder
    _resolve_folder(top, args)
    assert args.dir == Path("/some/where")


def test_the_positional_folder_stays_an_alias(tmp_path: Path) -> None:
    assert main(["init", str(tmp_path / "a"), "--name", "a",
                 "--url", "https://127.0.0.1:8443"]) == 0
    assert main(["init", "--dir", str(tmp_path / "b"), "--name", "b",
                 "--url", "https://127.0.0.1:9443"]) == 0
    assert main(["policy", "check", str(tmp_path / "a")]) == 0
    assert main(["policy", "check", "--dir", str(tmp_path / "b")]) == 0
    with pytest.raises(SystemExit):  # the folder twice, differently
        main(["policy", "check", str(tmp_path / "a"), "--dir", str(tmp_path / "b")])
    with pytest.raises(SystemExit):  # init needs to be told where
        main(["init", "--name", "c", "--url", "https://127.0.0.1:7443"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"connector {__version__}"


def test_top_level_help_speaks_to_a_user() -> None:
    text = _build_parser().format_help()
    assert "participant folder" in text and "docs/onboarding.md" in text
    assert "no business logic" not in text  # the module's docstring is for developers


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    init_folder(ours, name="ours", url="https://127.0.0.1:8443")
    init_folder(theirs, name="theirs", url="https://127.0.0.1:9443")
    return ours, theirs


THEIR_DID = "did:web:127.0.0.1%3A9443"


def test_trust_add_keeps_attributes_unless_told(two: tuple[Path, Path]) -> None:
    ours, theirs = two
    assert main(["trust", "add", str(theirs), "--attr", "membership=active",
                 "--dir", str(ours)]) == 0
    # Pinning again (after their key rotation) without --attr keeps what was pinned.
    assert main(["trust", "add", str(theirs), "--dir", str(ours)]) == 0
    assert dict(load_trust(ours)[THEIR_DID].attributes) == {"membership": "active"}
    assert main(["trust", "add", str(theirs), "--attr", "purpose=research",
                 "--dir", str(ours)]) == 0
    assert dict(load_trust(ours)[THEIR_DID].attributes) == {
        "membership": "active", "purpose": "research"}
    assert main(["trust", "add", str(theirs), "--replace-attrs", "--attr", "tier=gold",
                 "--dir", str(ours)]) == 0
    assert dict(load_trust(ours)[THEIR_DID].attributes) == {"tier": "gold"}


def test_trust_add_refuses_a_peer_without_its_certificate(
        two: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ours, theirs = two
    assert main(["trust", "add", str(theirs / "did.json"), "--dir", str(ours)]) == 2
    err = capsys.readouterr().err
    assert "no TLS certificate" in err and "--tls-cert" in err and "--system-ca" in err
    assert load_trust(ours) == {}
    assert main(["trust", "add", str(theirs / "did.json"), "--system-ca",
                 "--dir", str(ours)]) == 0
    assert load_trust(ours)[THEIR_DID].tls_cert_pem is None
    assert main(["trust", "add", str(theirs / "did.json"), "--tls-cert",
                 str(theirs / "tls" / "cert.pem"), "--dir", str(ours)]) == 0
    # Re-pinning from did.json alone (a key rotation) keeps the pinned certificate.
    assert main(["trust", "add", str(theirs / "did.json"), "--dir", str(ours)]) == 0
    assert load_trust(ours)[THEIR_DID].tls_cert_pem == (theirs / "tls/cert.pem").read_text()


def _on_a_terminal(argv: list[str], columns: int) -> list[str]:
    """The lines ``connector ARGV`` prints on a terminal ``columns`` wide (a pseudo-tty)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", *argv], stdout=follower,
                            stderr=subprocess.PIPE, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command has exited and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(60) == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())  # no colour codes
    return [line.rstrip() for line in text.replace("\r", "").splitlines() if line.strip()]


def test_trust_list_and_remove(two: tuple[Path, Path],
                               capsys: pytest.CaptureFixture[str]) -> None:
    ours, theirs = two
    assert main(["trust", "list", "--dir", str(ours)]) == 0
    assert "no pinned peers" in capsys.readouterr().out
    main(["trust", "add", str(theirs), "--attr", "membership=active", "--dir", str(ours)])
    capsys.readouterr()
    assert main(["trust", "list", "--json", "--dir", str(ours)]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["did"] == THEIR_DID and listed["attributes"] == {"membership": "active"}
    assert listed["tls"] == "pinned"
    assert main(["trust", "list", "--dir", str(ours)]) == 0
    assert "membership=active" in capsys.readouterr().out  # a pipe: rows are not folded
    lines = _on_a_terminal(["trust", "list", "--dir", str(ours)], columns=50)
    assert max(len(line) for line in lines) <= 50 and len(lines) > 2  # folded to fit
    assert main(["trust", "remove", "did:web:nobody", "--dir", str(ours)]) == 2
    assert "no pinned peer" in capsys.readouterr().err
    assert main(["trust", "remove", THEIR_DID, "--dir", str(ours)]) == 0
    assert load_trust(ours) == {}


def test_keys_list_follows_a_rotation(two: tuple[Path, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    ours, _ = two
    assert main(["keys", "list", "--json", "--dir", str(ours)]) == 0
    [only] = json.loads(capsys.readouterr().out)
    assert only["kid"].endswith("#key-1") and only["status"] == "signing"
    assert main(["keys", "rotate", "--dir", str(ours)]) == 0
    assert "re-pin" in capsys.readouterr().err
    assert main(["keys", "list", "--json", "--dir", str(ours)]) == 0
    listed = {k["kid"].rsplit("#", 1)[1]: k for k in json.loads(capsys.readouterr().out)}
    assert listed["key-1"]["status"] == "rotated out" and listed["key-1"]["since"]
    assert listed["key-2"]["status"] == "signing"
    assert main(["keys", "list", "--dir", str(ours)]) == 0
    assert "rotated out" in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly(two: tuple[Path, Path]) -> None:
    ours, theirs = two
    main(["trust", "add", str(theirs), "--dir", str(ours)])
    # The reader has gone before the command writes (`connector trust list | head -0`).
    proc = subprocess.Popen([sys.executable, "-m", "connector.cli", "trust", "list",
                             "--dir", str(ours)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 1


def _ca_issued(tmp_path: Path, host: str) -> tuple[Path, Path]:
    """A certificate for ``host`` signed by a throwaway CA (with the chain), and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=90))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    cert_path, key_path = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert_path.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_init_takes_a_certificate_from_a_ca_and_prints_next_steps(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = _ca_issued(tmp_path, "connector.acme.example")
    folder = tmp_path / "acme"
    assert main(["init", "--dir", str(folder), "--name", "acme", "--url",
                 "https://connector.acme.example", "--tls-cert", str(cert),
                 "--tls-key", str(key)]) == 0
    out = capsys.readouterr().out
    assert (folder / "tls" / "cert.pem").read_bytes() == cert.read_bytes()
    assert (folder / "keys" / "tls-key.pem").read_bytes() == key.read_bytes()
    assert (folder / "keys" / "tls-key.pem").stat().st_mode & 0o777 == 0o600
    assert "did:web:connector.acme.example" in out
    assert "management API:     http://127.0.0.1:444" in out  # the port is said
    assert "send each partner your public files: did.json\n" in out  # no certificate to pin
    assert "--system-ca" in out and "git add ." in out
    assert main(["policy", "check", "--dir", str(folder)]) == 0


def test_init_refuses_a_certificate_that_does_not_fit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = _ca_issued(tmp_path, "other.example")
    assert main(["init", "--dir", str(tmp_path / "a"), "--name", "a", "--url",
                 "https://connector.acme.example", "--tls-cert", str(cert),
                 "--tls-key", str(key)]) == 2
    assert "does not name connector.acme.example" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    _, other_key = _ca_issued(tmp_path / "b", "connector.acme.example")
    assert main(["init", "--dir", str(tmp_path / "c"), "--name", "c", "--url",
                 "https://other.example", "--tls-cert", str(cert),
                 "--tls-key", str(other_key)]) == 2
    assert "not the key of the certificate" in capsys.readouterr().err
    assert main(["init", "--dir", str(tmp_path / "d"), "--name", "d", "--url",
                 "https://other.example", "--tls-cert", str(cert)]) == 2
    assert "go together" in capsys.readouterr().err


def test_init_prints_what_to_send_a_partner(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "a"), "--name", "a",
                 "--url", "https://127.0.0.1:8443"]) == 0
    out = capsys.readouterr().out
    assert "send each partner your public files: did.json and tls/cert.pem" in out
    assert "management API:     http://127.0.0.1:8444" in out
    assert "--tls-cert THEIR-cert.pem" in out


def test_download_progress_draws_nothing_outside_a_terminal(
        capsys: pytest.CaptureFixture[str]) -> None:
    from connector.terminal import download_progress

    with download_progress(1000, 0) as progress:
        progress(5, 500)
    assert capsys.readouterr().err == ""
