"""``connector consent grant|withdraw|list``: the provider's consent register, through the
running daemon's management API, which writes ``consents/SUBJECT.toml`` and puts the change
in force before it answers (docs/consent.md)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``consent`` and its subcommands."""
    p = sub.add_parser("consent", help="provider: the data subjects' consents (consents/)")
    csub = p.add_subparsers(dest="consent_command", required=True, metavar="COMMAND")
    g = csub.add_parser("grant", help="record that SUBJECT allows a consumer a purpose")
    g.add_argument("subject", help="the subject id, as the dataset's subject_field holds it")
    g.add_argument("--consumer", required=True,
                   help="a DID, or attribute=value pinned for consumers (membership=care-team)")
    g.add_argument("--purpose", required=True,
                   help="one word, as the policy's `consent eq PURPOSE` constraint names it")
    g.add_argument("--until", required=True,
                   help="the end, an RFC 3339 date-time with its offset (2027-06-30T00:00:00Z)")
    w = csub.add_parser("withdraw", help="withdraw SUBJECT's consents in force; running "
                        "transfers stop serving the subject's records at the next record")
    w.add_argument("subject", help="the subject id")
    w.add_argument("--consumer", default=None, help="only the consents of this consumer")
    w.add_argument("--purpose", default=None, help="only the consents for this purpose")
    ls = csub.add_parser("list", help="every consent with its state")
    ls.add_argument("--json", action="store_true",
                    help="print JSON (for scripts) instead of a table")
    for q in (g, w, ls):
        q.add_argument("--dir", type=Path, default=None,
                       help="the folder (default: the current directory)")


def run(args: argparse.Namespace) -> int:
    """Dispatch of the commands ``add_parsers`` declares."""
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from connector.client import Management
    from connector.config import load_settings

    m = Management(load_settings(args.dir))
    try:
        return await _command(m, args)
    finally:
        await m.close()


async def _command(m: Any, args: argparse.Namespace) -> int:
    from connector import terminal

    if args.consent_command == "grant":
        await m.call("POST", "/api/consents", {
            "subject": args.subject, "consumer": args.consumer, "purpose": args.purpose,
            "until": args.until})
        print(f"consent of {args.subject} recorded: {args.consumer} for {args.purpose} "
              f"until {args.until}")
        return 0
    if args.consent_command == "withdraw":
        done = await m.call("POST", "/api/consents/withdraw", {
            "subject": args.subject, "consumer": args.consumer, "purpose": args.purpose})
        print(f"{done['withdrawn']} consent(s) of {args.subject} withdrawn; in force now")
        return 0
    rows = await m.call("GET", "/api/consents")
    if args.json:
        terminal.print_json(rows)
        return 0
    terminal.print_table(["SUBJECT", "CONSUMER", "PURPOSE", "UNTIL", "STATE"],
                         [[r["subject"], r["consumer"], r["purpose"], r["until"], r["state"]]
                          for r in rows], title="consents")
    return 0
