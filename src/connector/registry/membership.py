"""Joining a registry, by pinning, as a small data space does it (tests and ``make demo``).

``join_registry`` pins the participant in the registry's ``trust/`` as a member, pins the
registry (with its TLS certificate, ``role = registry``) in the participant's ``trust/``, and
lists the registry in the participant's ``[registry] urls``. ``pair_registries`` pins two
registries in each other's ``trust/`` for replication.
"""

from __future__ import annotations

import re
from pathlib import Path

from connector.config import CONFIG_FILE, load_settings
from connector.participant.layout import DID_FILE, TLS_CERT, toml_str
from connector.participant.trust import add_trusted_peer
from connector.registry.daemon import load_registry_settings
from connector.registry.service import REGISTRY_ROLE

_URLS = re.compile(r"^urls\s*=.*$", re.MULTILINE)


def pin_registry(dir: Path, registry_dir: Path) -> None:
    """Pin a registry (its did.json and TLS certificate) in ``dir/trust`` as a registry."""
    add_trusted_peer(dir, registry_dir / DID_FILE, attributes={"role": REGISTRY_ROLE},
                     tls_cert=registry_dir / TLS_CERT)


def join_registry(participant_dir: Path, registry_dir: Path, *,
                  membership: str = "active") -> None:
    """Make the participant a member of the registry and a user of it."""
    add_trusted_peer(registry_dir, participant_dir, attributes={"membership": membership},
                     tls_cert=None)
    pin_registry(participant_dir, registry_dir)
    url = load_registry_settings(registry_dir).public_url
    registries = list(load_settings(participant_dir).registries)
    if url in registries:
        return
    line = "urls = [" + ", ".join(toml_str(u) for u in [*registries, url]) + "]"
    path = participant_dir / CONFIG_FILE
    text = path.read_text()
    if _URLS.search(text):
        text = _URLS.sub(line, text, count=1)
    else:
        text = text.rstrip("\n") + f"\n\n[registry]\n{line}\n"
    path.write_text(text)


def pair_registries(a: Path, b: Path) -> None:
    """Pin two registries in each other's trust/ (each lists the other in [replication])."""
    pin_registry(a, b)
    pin_registry(b, a)
