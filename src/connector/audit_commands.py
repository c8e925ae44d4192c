"""``connector audit verify|show|export|verify-bundle|prune``: the audit trail of a folder.

Only the arguments here, so that building the ``connector`` parser imports nothing heavy; the
commands themselves are in ``audit_tool`` (docs/audit.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``audit`` and its subcommands."""
    p = sub.add_parser("audit", help="the tamper-evident audit trail and evidence bundles")
    asub = p.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="recompute the chain and the checkpoint signatures")
    v.add_argument("--witness", metavar="REGISTRY_URL", default=None,
                   help="also check the chain holds what this registry witnessed")
    s = asub.add_parser("show", help="the story of one agreement, negotiation or transfer")
    s.add_argument("id", help="an agreement, negotiation or transfer id")
    e = asub.add_parser("export", help="an agreement's evidence bundle (verifies offline)")
    e.add_argument("agreement_id", help="the agreement to export")
    e.add_argument("--out", type=Path, required=True, help="where to write the bundle")
    b = asub.add_parser("verify-bundle", help="check an evidence bundle, offline")
    b.add_argument("file", type=Path, help="the bundle `audit export` wrote")
    r = asub.add_parser("prune", help="drop entries older than DATE, up to a signed checkpoint")
    r.add_argument("--before", required=True, help="ISO date or time, e.g. 2026-01-01")
    for q in (v, s, e, r):
        q.add_argument("--dir", type=Path, default=Path("."),
                       help="participant folder (default: .)")


def run(args: argparse.Namespace) -> int:
    """Dispatch of the commands ``add_parsers`` declares."""
    from connector import audit_tool
    from connector.config import load_settings

    command = args.audit_command
    if command == "verify-bundle":
        return audit_tool.verify_bundle_file(args.file)
    settings = load_settings(args.dir)
    if command == "verify":
        return audit_tool.verify(settings, args.witness)
    if command == "show":
        return audit_tool.show(settings, args.id)
    if command == "export":
        return audit_tool.export(settings, args.agreement_id, args.out)
    return audit_tool.prune(settings, audit_tool.parse_date(args.before))
