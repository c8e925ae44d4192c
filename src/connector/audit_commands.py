"""``connector audit verify|show|export|verify-bundle|prune``: the audit trail of a folder.

They read the folder's SQLite file directly (``adapters.storage.audit_file``), so they work
with the daemon running or stopped; ``export`` signs a checkpoint with the folder's current
key when none covers the agreement's last entry yet. See docs/audit.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connector.adapters.storage import audit_file
from connector.config import Settings, load_settings
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


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``audit`` and its subcommands."""
    p = sub.add_parser("audit", help="the tamper-evident audit trail and evidence bundles")
    asub = p.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="recompute the chain and the checkpoint signatures")
    v.add_argument("--witness", metavar="REGISTRY_URL", default=None,
                   help="also check the chain holds what this registry witnessed")
    s = asub.add_parser("show", help="the story of one agreement, negotiation or transfer")
    s.add_argument("id")
    e = asub.add_parser("export", help="an agreement's evidence bundle (verifies offline)")
    e.add_argument("agreement_id")
    e.add_argument("--out", type=Path, required=True)
    b = asub.add_parser("verify-bundle", help="check an evidence bundle, offline")
    b.add_argument("file", type=Path)
    r = asub.add_parser("prune", help="drop entries older than DATE, up to a signed checkpoint")
    r.add_argument("--before", required=True, help="ISO date or time, e.g. 2026-01-01")
    for q in (v, s, e, r):
        q.add_argument("--dir", type=Path, default=Path("."),
                       help="participant folder (default: .)")


def run(args: argparse.Namespace) -> int:
    """Dispatch of the commands ``add_parsers`` declares."""
    command = args.audit_command
    if command == "verify-bundle":
        return verify_bundle_file(args.file)
    settings = load_settings(args.dir)
    if command == "verify":
        return verify(settings, args.witness)
    if command == "show":
        return show(settings, args.id)
    if command == "export":
        return export(settings, args.agreement_id, args.out)
    return prune(settings, _date(args.before))


def _document(settings: Settings) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((settings.root / "did.json").read_text())
    return doc


def verify(settings: Settings, witness: str | None) -> int:
    entries, checkpoints = audit_file.read_chain(audit_file.location(settings))
    report = verify_chain(entries, checkpoints, did=settings.did, document=_document(settings))
    if not report.ok:
        print(f"audit trail BROKEN at entry {report.broken}: {report.problem}")
        return 1
    if witness is not None:
        from connector.registry.witness import witnessed

        seq, problem = witness_problem(entries, witnessed(settings, witness))
        if problem:
            print(f"audit trail BROKEN at entry {seq}: {problem} ({witness})")
            return 1
    print(_summary(report, checkpoints))
    return 0


def _summary(report: Report, checkpoints: list[str]) -> str:
    signed = max((parse_checkpoint(c).seq for c in checkpoints), default=0)
    return (f"audit trail ok: {report.entries} entries ({report.first_seq}..{report.last_seq}),"
            f" {report.checkpoints} checkpoints, signed through entry {signed}")


def show(settings: Settings, id: str) -> int:
    entries = _concerning(settings, id)
    if not entries:
        raise AuditError(f"no audit entry concerns {id!r}")
    for entry in entries:
        print(_line(entry.decoded()))
    return 0


def _concerning(settings: Settings, id: str) -> list[Entry]:
    """The entries about ``id``; for an agreement, its negotiation's and transfers' too."""
    db = audit_file.location(settings)
    seqs = set(audit_file.read_refs(db, [id]))
    entries, _ = audit_file.read_chain(db)
    by_seq = {e.seq: e for e in entries}
    related = set()
    for seq in seqs:
        body = by_seq[seq].decoded() if seq in by_seq else {}
        if body.get("kind") == "agreement":
            related.add(str(body["data"]["negotiation"]))
        if body.get("kind") in ("transfer", "data.access", "data.sent"):
            related.add(str(body["data"].get("transfer") or body["refs"][0]))
    seqs.update(audit_file.read_refs(db, related))
    return [by_seq[s] for s in sorted(seqs) if s in by_seq]


def _line(body: dict[str, Any]) -> str:
    at = datetime.fromtimestamp(float(body["at"]), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    data = body["data"]
    kind = body["kind"]
    if kind in ("negotiation", "transfer"):
        steps = "; ".join(f"{s['by']} {s['message']} -> {s['state']}" for s in data["steps"])
        what = f"{data['role']} {data['state']}" + (f" ({steps})" if steps else "")
    elif kind in ("dsp.in", "dsp.out"):
        bound = "" if kind == "dsp.out" else (" bound" if data.get("bound") else " unbound")
        what = f"{data['type']} {'from' if kind == 'dsp.in' else 'to'} {data['peer']}{bound}"
    elif kind == "denial":
        what = f"{data['decision']}: " + " | ".join(data["reasons"])
    elif kind == "agreement":
        what = (f"{data['agreement']} {data['assigner']} -> {data['assignee']} policy "
                f"{data['policyHash']} commit {data['policyCommit']}")
    elif kind in ("data.access", "data.sent"):
        what = (f"records {data['records']} bytes {data['bytes']} from offset "
                f"{data['offset']}, uses {data['usesAfter']}, complete {data['complete']}")
    else:
        what = json.dumps(data, sort_keys=True)[:300]
    return f"{body['seq']:>8} {at} {kind:<12} {what}"


def export(settings: Settings, agreement_id: str, out: Path) -> int:
    db = audit_file.location(settings)
    concerning = _concerning(settings, agreement_id)
    agreement = next((e.decoded()["data"] for e in concerning
                      if e.decoded()["kind"] == "agreement"), None)
    if agreement is None:
        raise AuditError(f"no agreement {agreement_id!r} in the audit trail")
    checkpoint = _covering_checkpoint(settings, concerning[-1].seq)
    cp = parse_checkpoint(checkpoint)
    entries, _ = audit_file.read_chain(db)
    stretch = [e for e in entries if concerning[0].seq <= e.seq <= cp.seq]
    digests = _evidence_digests(concerning)
    peer = agreement["assignee"] if agreement["assigner"] == settings.did else agreement[
        "assigner"]
    evidence = audit_file.read_evidence(db, digests)
    bundle = build_bundle(
        agreement_id=agreement_id, participant=settings.did, entries=stretch,
        concerning={e.seq for e in concerning}, checkpoint=checkpoint,
        did_documents={settings.did: _document(settings),
                       **_peer_document(settings, peer, evidence)},
        evidence=evidence)
    out.write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: {len(concerning)} entries about {agreement_id}, "
          f"signed through entry {cp.seq}")
    return 0


def _covering_checkpoint(settings: Settings, seq: int) -> str:
    """A checkpoint at or after ``seq`` signed with our current key; signs one if needed."""
    db = audit_file.location(settings)
    entries, checkpoints = audit_file.read_chain(db)
    for jws in checkpoints:
        cp = parse_checkpoint(jws)
        if cp.seq >= seq and cp.kid == settings.signing_kid:
            return jws
    head = entries[-1]
    now = time.time()
    jws = sign_checkpoint(load_any_signing_key(settings.signing_key), kid=settings.signing_kid,
                          did=settings.did, seq=head.seq, head=head.hash, now=int(now))
    audit_file.add_checkpoint(db, head.seq, now, jws)
    return jws


def _evidence_digests(entries: list[Entry]) -> list[str]:
    out = []
    for entry in entries:
        body = entry.decoded()
        data = body["data"]
        if body["kind"] == "dsp.in":
            out += [str(data.get(k)) for k in ("tokenDigest", "bodyDigest", "peerDocument")]
        elif body["kind"] == "agreement":
            out += [str(data.get("agreementDigest")), str(data.get("policyHash"))]
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
    db = audit_file.location(settings)
    entries, checkpoints = audit_file.read_chain(db)
    report = verify_chain(entries, checkpoints, did=settings.did, document=_document(settings))
    if not report.ok:
        raise AuditError(f"refusing to prune a broken trail (entry {report.broken}: "
                         f"{report.problem})")
    first = entries[0].seq if entries else 1
    anchors = [seq for seq, _ in audit_file.checkpoints_before(db, before) if seq >= first]
    if not anchors:
        print("nothing to prune: no checkpoint was signed before that date")
        return 0
    deleted = audit_file.prune_through(db, anchors[-1])
    print(f"pruned {deleted} entries; the trail now starts after the checkpoint at entry "
          f"{anchors[-1]}")
    return 0


def _date(text: str) -> float:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        print(f"error: --before {text!r} is not an ISO date", file=sys.stderr)
        raise SystemExit(2) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()

