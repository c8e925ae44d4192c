"""``credentials/*.jwt``: the verifiable credentials (VC JWTs) this participant presents.

An authority (``connector authority``) issues a membership credential; the member imports it
here (``connector credentials import``), and our Credential Service presents it to verifiers
(DCP 1.0 §5.4, presentation query). The files are public and may be committed.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from connector.config import load_settings
from connector.core.errors import AuthError, ConfigError
from connector.core.identity import parse_jws
from connector.participant.layout import CREDENTIALS_DIR


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-.") or "vc"


def import_credential(dir: Path, source: Path, *, now: float | None = None) -> Path:
    """Store the VC JWT in ``source`` under ``credentials/`` of the participant folder ``dir``.

    Its subject must be this participant's DID and it must not have expired; the signature is
    the verifier's business (it resolves the issuer). Returns the written path.
    """
    did = load_settings(dir).did
    try:
        token = source.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read a credential") from exc
    try:
        jws = parse_jws(token)
    except AuthError as exc:
        raise ConfigError(f"{source}: not a VC JWT ({exc.message})") from exc
    body = jws.payload.get("vc")
    subject = body.get("credentialSubject") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(subject, dict):
        raise ConfigError(f"{source}: not a VC JWT (no vc claim with a credentialSubject)")
    if subject.get("id") != did or jws.payload.get("sub", did) != did:
        raise ConfigError(f"{source}: the credential is about {subject.get('id')!r}, not {did}")
    exp = jws.payload.get("exp")
    if isinstance(exp, int) and exp < (time.time() if now is None else now):
        raise ConfigError(f"{source}: the credential has expired")
    name = _file_name(str(jws.payload.get("jti") or body.get("id") or uuid.uuid4()).split(":")[-1])
    target = dir / CREDENTIALS_DIR / f"{name}.jwt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(token + "\n")
    return target


def load_credentials(dir: Path) -> list[str]:
    """The VC JWTs of ``credentials/*.jwt``, for our Credential Service to present."""
    folder = dir / CREDENTIALS_DIR
    return [p.read_text().strip() for p in sorted(folder.glob("*.jwt"))] if folder.is_dir() else []
