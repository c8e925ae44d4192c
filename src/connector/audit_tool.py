"""What ``connector audit verify|show|export|verify-bundle|prune`` do (``audit_commands``
declares them).

They read the participant's database directly, SQLite or PostgreSQL
(``adapters.storage.audit_file``), so they work with the daemon running or stopped;
``export`` signs a checkpoint with the folder's current key when none covers the agreement's
last entry yet. See docs/audit.md.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connector.adapters.storage.audit_file import AuditTables, open_tables
from connector.config import Settings
from connector.core.audit import (
    Entry,
    Report,
    parse_checkpoint,
    sign_checkpoint,
    verify_chain,
    witness_problem,
)
from connector.core.audit_bundle import build_bundle, verify_bundle
from connector.core.errors import AuditError
from connector.core.identity import build_did_document
from connector.keys import load_any_signing_key
from connector.participant.trust import load_trust


def _document(settings: Settings) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((settings.root / "did.json").read_text())
    return doc


def _verified(settings: Settings, tables: AuditTables, keep: Collection[int] = ()
              ) -> tuple[Report, list[str]]:
    checkpoints = tables.read_checkpoints()
    return verify_chain(tables.iter_chain(), checkpoints, did=settings.did,
                        document=_document(settings), keep=keep), checkpoints


def verify(settings: Settings, witness: str | None) -> int:
    seen: list[tuple[int, str]] = []
    if witness is not None:
        from connector.registry.witness import witnessed

        seen = witnessed(settings, witness)
    with open_tables(settings) as tables:
        report, checkpoints = _verified(settings, tables, keep={seq for seq, _ in seen})
    if not report.ok:
        print(f"audit trail BROKEN at entry {report.broken}: {report.problem}")
        return 1
    if witness is not None:
        seq, problem = witness_problem(report, seen)
        if problem:
            print(f"audit trail BROKEN at entry {seq}: {problem} ({witness})")
            return 1
    print(_summary(report, checkpoints))
    return 0


def _summary(report: Report, checkpoints: list[str]) -> str:
    signed = max((parse_checkpoint(c).seq for c in checkpoints), default=0)
    if not report.entries:
        return "audit trail ok: no entries yet"
    return (f"audit trail ok: {report.entries} entries ({report.first_seq}..{report.last_seq}),"
            f" {report.checkpoints} checkpoints, signed through entry {signed}")


def show(settings: Settings, id: str) -> int:
    with open_tables(settings) as tables:
        entries = _concerning(tables, id)
    if not entries:
        raise AuditError(f"no audit entry concerns {id!r}")
    for entry in entries:
        print(entry_line(entry.decoded()))
    return 0


def _concerning(tables: AuditTables, id: str) -> list[Entry]:
    """The entries about ``id``; for an agreement, its negotiation's and transfers' too."""
    direct = tables.read_entries(tables.read_refs([id]))
    related = set()
    for entry in direct:
        body = entry.decoded()
        made = body["data"].get("agreement")
        if body.get("kind") == "negotiation" and isinstance(made, dict):
            related.add(str(made["negotiation"]))
        if body.get("kind") in ("transfer", "data.access", "data.sent"):
            related.add(str(body["data"].get("transfer") or body["refs"][0]))
    more = set(tables.read_refs(related)) - {e.seq for e in direct}
    return sorted([*direct, *tables.read_entries(more)], key=lambda e: e.seq)


def entry_line(body: dict[str, Any]) -> str:
    at = datetime.fromtimestamp(float(body["at"]), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data, kind = body["data"], body["kind"]
    if kind in ("negotiation", "transfer"):
        parts = [f"{data['role']} {data['state']}"]
        if data.get("in"):
            message = data["in"]
            parts.append(f"received {message['type']} from {message['peer']} "
                         f"({'bound' if message.get('bound') else 'unbound'})")
        parts += [f"{s['by']}: {s['message']} -> {s['state']}" for s in data["steps"]]
        parts += [f"DENIED {d['decision']}: " + " | ".join(d["reasons"])
                  for d in data.get("denials", [])]
        made = data.get("agreement")
        if isinstance(made, dict):
            parts.append(f"agreement {made['agreement']} ({made['assigner']} -> "
                         f"{made['assignee']}) policy {made['policyHash']} commit "
                         f"{made['policyCommit']}")
        parts += [f"sent {m['type']} to {m['peer']}" for m in data.get("out", [])]
        what = "; ".join(parts)
    elif kind in ("data.access", "data.sent"):
        what = (f"records {data['records']} bytes {data['bytes']} from offset "
                f"{data['offset']}, uses {data['usesAfter']}, complete {data['complete']}")
    else:
        what = json.dumps(data, sort_keys=True)[:300]
    return f"{body['seq']:>8} {at} {kind:<12} {what}"


def export(settings: Settings, agreement_id: str, out: Path) -> int:
    bundle, entries, signed = agreement_bundle(settings, agreement_id)
    out.write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: {entries} entries about {agreement_id}, signed through entry {signed}")
    return 0


def agreement_bundle(settings: Settings, agreement_id: str) -> tuple[dict[str, Any], int, int]:
    """The evidence bundle of an agreement (docs/audit.md), how many entries concern it,
    and the entry its checkpoint signs through (one is signed now if none covers it)."""
    with open_tables(settings) as tables:
        return _bundle(settings, tables, agreement_id)


def _bundle(settings: Settings, tables: AuditTables, agreement_id: str
            ) -> tuple[dict[str, Any], int, int]:
    concerning = _concerning(tables, agreement_id)
    agreement = next((made for e in concerning
                      if isinstance(made := e.decoded()["data"].get("agreement"), dict)), None)
    if agreement is None:
        raise AuditError(f"no agreement {agreement_id!r} in the audit trail")
    checkpoint = _covering_checkpoint(settings, tables, concerning[-1].seq)
    cp = parse_checkpoint(checkpoint)
    stretch = tables.read_range(concerning[0].seq, cp.seq)
    digests = _evidence_digests(concerning)
    peer = agreement["assignee"] if agreement["assigner"] == settings.did else agreement[
        "assigner"]
    evidence = tables.read_evidence([e.seq for e in concerning], digests)
    bundle = build_bundle(
        agreement_id=agreement_id, participant=settings.did, entries=stretch,
        concerning={e.seq for e in concerning}, checkpoint=checkpoint,
        did_documents={settings.did: _document(settings),
                       **_peer_document(settings, peer, evidence)},
        evidence=evidence)
    return bundle, len(concerning), cp.seq


def _covering_checkpoint(settings: Settings, tables: AuditTables, seq: int) -> str:
    """A checkpoint at or after ``seq`` signed with our current key; signs one if needed."""
    for jws in tables.read_checkpoints():
        cp = parse_checkpoint(jws)
        if cp.seq >= seq and cp.kid == settings.signing_kid:
            return jws
    head = tables.read_head()
    assert head is not None  # the agreement's own entries are there
    now = time.time()
    jws = sign_checkpoint(load_any_signing_key(settings.signing_key), kid=settings.signing_kid,
                          did=settings.did, seq=head.seq, head=head.hash, now=int(now))
    tables.add_checkpoint(head.seq, now, jws)
    return jws


def _evidence_digests(entries: list[Entry]) -> list[str]:
    out = []
    for entry in entries:
        data = entry.decoded()["data"]
        inbound, made = data.get("in"), data.get("agreement")
        if isinstance(inbound, dict):
            out += [str(inbound.get(k)) for k in ("tokenDigest", "bodyDigest", "peerDocument")]
        if isinstance(made, dict):
            out += [str(made.get("agreementDigest")), str(made.get("policyHash"))]
    return out


def _peer_document(settings: Settings, peer: str,
                   evidence: dict[str, tuple[str, bytes]]) -> dict[str, dict[str, Any]]:
    """The peer's DID document: the last one kept with its messages, else from trust/."""
    kept = [json.loads(content) for kind, content in evidence.values() if kind == "did"]
    mine = [d for d in kept if isinstance(d, dict) and d.get("id") == peer]
    if mine:
        return {peer: mine[-1]}
    pinned = load_trust(settings.root).get(peer)
    if pinned is None:
        return {}
    return {peer: build_did_document(peer, pinned.dsp_base or pinned.url,
                                     list(pinned.keys.items()))}


def verify_bundle_file(path: Path) -> int:
    try:
        bundle = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: cannot read: {exc}") from exc
    report = verify_bundle(bundle)
    for line in report.messages:
        print(f"  {line}")
    if not report.ok:
        print(f"bundle INVALID: {report.problem}")
        return 1
    print(f"bundle ok: agreement {report.agreement} between {report.participant} and "
          f"{report.peer}, {report.entries} entries, {len(report.messages)} peer messages "
          f"({report.unbound} unbound)")
    return 0


def prune(settings: Settings, before: float) -> int:
    """Drop the entries up to the newest checkpoint signed before ``before``."""
    with open_tables(settings) as tables:
        return _prune(settings, tables, before)


def _prune(settings: Settings, tables: AuditTables, before: float) -> int:
    report, _ = _verified(settings, tables)
    if not report.ok:
        raise AuditError(f"refusing to prune a broken trail (entry {report.broken}: "
                         f"{report.problem})")
    first = report.first_seq or 1
    anchors = [seq for seq, _ in tables.checkpoints_before(before) if seq >= first]
    if not anchors:
        print("nothing to prune: no checkpoint was signed before that date")
        return 0
    deleted = tables.prune_through(anchors[-1])
    print(f"pruned {deleted} entries; the trail now starts after the checkpoint at entry "
          f"{anchors[-1]}")
    return 0


def parse_date(text: str) -> float:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        print(f"error: --before {text!r} is not an ISO date", file=sys.stderr)
        raise SystemExit(2) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()

