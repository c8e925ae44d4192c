"""The read-only facts of the policies and audit pages, read from the participant folder
and its database when the page is asked for (blocking IO: the console runs these in a
thread)."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.adapters.storage.audit_file import open_tables
from connector.audit_tool import entry_line
from connector.config import Settings
from connector.console import views
from connector.core.audit import Entry, Report, parse_checkpoint, verify_chain
from connector.participant.credentials import load_credentials
from connector.participant.datasets import DatasetDecl
from connector.participant.lint import check_folder
from connector.participant.policies import load_policies, policy_commits, policy_hash
from connector.participant.trust import Peer

# Entries the audit page lists (the whole trail is verified).
AUDIT_NEWEST = 50


@dataclass(frozen=True)
class FolderView:
    """What the policies, trust and identity page shows."""

    did: str
    signing_kid: str
    policies: Mapping[str, Mapping[str, Any]]  # name -> {"hash", "commit", "document"}
    problems: list[str]  # `connector policy check` results
    peers: list[Mapping[str, Any]]  # did, url, attributes, keys
    keys: list[str]  # kids in our did.json
    credentials: list[views.Credential]  # ours, presented in DCP mode
    offers: Mapping[str, list[str]]  # policy name -> dataset ids offering it


def read_folder_view(root: Path, *, did: str, signing_kid: str, peers: Iterable[Peer],
                     datasets: Iterable[DatasetDecl]) -> FolderView:
    """The policies page's facts, read from the participant folder ``root`` now."""
    documents = load_policies(root)
    commits = policy_commits(root)
    offers: dict[str, list[str]] = {}
    for d in datasets:
        for name in d.policies:
            offers.setdefault(name, []).append(d.id)
    did_doc = json.loads((root / "did.json").read_text(encoding="utf-8"))
    return FolderView(
        did=did, signing_kid=signing_kid,
        policies={name: {"hash": policy_hash(doc), "commit": commits.get(name, ""),
                         "document": doc} for name, doc in sorted(documents.items())},
        problems=[str(p) for p in check_folder(root)],
        peers=[{"did": p.did, "url": p.url, "attributes": dict(p.attributes),
                "keys": sorted(p.keys)} for p in peers],
        keys=[str(m.get("id", "")) for m in did_doc.get("verificationMethod", [])],
        credentials=[views.credential(jwt) for jwt in load_credentials(root)],
        offers=offers)


@dataclass(frozen=True)
class AuditState:
    report: Report
    signed_through: int
    newest: list[str]  # entries as `connector audit show` prints them, newest first


def audit_state(settings: Settings) -> AuditState:
    """The trail verified as `connector audit verify` does, and its newest entries."""
    document = json.loads((settings.root / "did.json").read_text(encoding="utf-8"))
    tail: deque[Entry] = deque(maxlen=AUDIT_NEWEST)
    with open_tables(settings) as tables:
        checkpoints = tables.read_checkpoints()

        def streamed() -> Iterator[Entry]:  # the chain is read as a stream; its tail is kept
            for entry in tables.iter_chain():
                tail.append(entry)
                yield entry

        report = verify_chain(streamed(), checkpoints, did=settings.did, document=document)
    signed = max((parse_checkpoint(c).seq for c in checkpoints), default=0)
    newest = [entry_line(e.decoded()) for e in reversed(tail)]
    return AuditState(report, signed, newest)
