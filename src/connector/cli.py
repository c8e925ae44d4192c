"""The ``connector`` command. Parses arguments and calls one function; no business logic here."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from connector import audit_commands, db_commands
from connector.core.errors import ConnectorError


def _dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("."),
                        help="participant folder (default: .)")


def _add_identity_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``keys rotate``, ``authority init|issue|revoke|run`` and ``credentials import``."""
    p = sub.add_parser("keys", help="signing keys")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    kr = ksub.add_parser("rotate", help="publish and sign with a new key; --retire an old one")
    kr.add_argument("dir", type=Path, nargs="?", default=Path("."))
    kr.add_argument("--publish-only", action="store_true",
                    help="add the key to did.json but keep signing with the old one")
    kr.add_argument("--activate", metavar="KID", default=None, help="sign with a published key")
    kr.add_argument("--retire", metavar="KID", default=None,
                    help="remove a rotated-out key once its tokens have expired")

    p = sub.add_parser("authority", help="a data-space authority issuing membership credentials")
    asub = p.add_subparsers(dest="authority_command", required=True)
    ai = asub.add_parser("init", help="create an authority folder")
    ai.add_argument("dir", type=Path)
    ai.add_argument("--url", required=True, help="public root URL, https://HOST:PORT")
    iss = asub.add_parser("issue", help="print a VC JWT for a member")
    iss.add_argument("dir", type=Path)
    iss.add_argument("--subject", required=True, help="the member's DID")
    iss.add_argument("--type", action="append", default=None, dest="types",
                     help="credential type (repeatable; default MembershipCredential)")
    iss.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE")
    iss.add_argument("--valid-days", type=int, default=365)
    iss.add_argument("--out", type=Path, default=None, help="also write the VC JWT here")
    ar = asub.add_parser("revoke", help="set a credential's bit in the revocation list")
    ar.add_argument("dir", type=Path)
    ar.add_argument("credential_id")
    arun = asub.add_parser("run", help="serve did.json and the revocation list over HTTPS")
    arun.add_argument("dir", type=Path, nargs="?", default=Path("."))

    p = sub.add_parser("credentials", help="the participant's verifiable credentials")
    csub = p.add_subparsers(dest="credentials_command", required=True)
    ci = csub.add_parser("import", help="store a VC JWT under credentials/")
    ci.add_argument("dir", type=Path)
    ci.add_argument("file", type=Path)


def _identity(args: argparse.Namespace) -> int:
    """Dispatch of the commands ``_add_identity_parsers`` declares. Prints no key material."""
    from connector import authority
    from connector.participant import credentials, keys

    if args.command == "keys":
        if args.retire:
            keys.retire_signing_key(args.dir, args.retire)
            print(f"retired {args.retire}")
        elif args.activate:
            keys.activate_signing_key(args.dir, args.activate)
            print(f"signing with {args.activate}")
        else:
            kid = keys.rotate_signing_key(args.dir, publish_only=args.publish_only)
            print(f"published {kid}" if args.publish_only else f"signing with {kid}")
        return 0
    if args.command == "credentials":
        print(f"imported {credentials.import_credential(args.dir, args.file)}")
        return 0
    command = args.authority_command
    if command == "init":
        settings = authority.init_authority(args.dir, url=args.url)
        print(f"initialised authority {settings.did}")
    elif command == "issue":
        attrs = dict(a.split("=", 1) for a in args.attr)
        credential_id, token = authority.issue_credential(
            args.dir, subject=args.subject, types=args.types or ["MembershipCredential"],
            attributes=attrs, valid_days=args.valid_days)
        if args.out:
            args.out.write_text(token + "\n")
        print(token)
        print(f"issued {credential_id}", file=sys.stderr)
    elif command == "revoke":
        index = authority.revoke_credential(args.dir, args.credential_id)
        print(f"revoked {args.credential_id} (status index {index})")
    else:
        authority.run_authority(args.dir)
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connector", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a participant folder (a git repository to be)")
    p.add_argument("dir", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--url", required=True, help="public root URL, https://HOST:PORT")
    p.add_argument("--management-port", type=int, default=None)

    p = sub.add_parser("policy", help="policy tools")
    psub = p.add_subparsers(dest="policy_command", required=True)
    pc = psub.add_parser("check", help="validate a participant folder; file:line per error")
    pc.add_argument("dir", type=Path, nargs="?", default=Path("."))

    p = sub.add_parser("trust", help="pinned trust")
    tsub = p.add_subparsers(dest="trust_command", required=True)
    ta = tsub.add_parser("add", help="pin a peer from its participant folder or did.json")
    ta.add_argument("source", type=Path, help="the peer's folder or its did.json")
    ta.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE")
    ta.add_argument("--tls-cert", type=Path, default=None, help="the peer's TLS certificate")
    _dir_arg(ta)
    _add_identity_parsers(sub)

    p = sub.add_parser("run", help="run the connector daemon")
    p.add_argument("dir", type=Path, nargs="?", default=Path("."))

    p = sub.add_parser("catalog", help="the offers a provider shows this participant")
    p.add_argument("provider_url")
    _dir_arg(p)

    p = sub.add_parser("negotiate", help="negotiate a contract; prints the agreement id")
    p.add_argument("provider_url")
    p.add_argument("dataset_id")
    p.add_argument("--offer", default=None, help="offer id (default: the first offer)")
    p.add_argument("--timeout", type=float, default=30.0)
    _dir_arg(p)

    p = sub.add_parser("transfer", help="pull (or be pushed) the records of an agreement "
                       "into a file, stdout or an SQLite table")
    p.add_argument("agreement_id")
    p.add_argument("--out", required=True,
                   help="a file, - for stdout, or sqlite:///ABSOLUTE/PATH.db#table")
    p.add_argument("--push", action="store_true",
                   help="have the provider push to this connector instead of pulling")
    p.add_argument("--timeout", type=float, default=60.0)
    _dir_arg(p)

    p = sub.add_parser("status", help="negotiations, agreements and transfers as a table")
    _dir_arg(p)

    p = sub.add_parser("why", help="a negotiation's or transfer's timeline, with each "
                       "policy decision's trace")
    p.add_argument("id", help="the negotiation or transfer id (see `connector status`)")
    _dir_arg(p)

    p = sub.add_parser("registry", help="the catalogue-metadata registry (its own daemon)")
    rsub = p.add_subparsers(dest="registry_command", required=True)
    ri = rsub.add_parser("init", help="create a registry folder")
    ri.add_argument("dir", type=Path)
    ri.add_argument("--url", required=True, help="public root URL, https://HOST:PORT")
    ri.add_argument("--name", default="registry")
    ri.add_argument("--peer", action="append", default=[], metavar="URL",
                    help="a peer registry to replicate from (repeatable)")
    rr = rsub.add_parser("run", help="run the registry daemon")
    rr.add_argument("dir", type=Path, nargs="?", default=Path("."))

    p = sub.add_parser("search", help="search the registries for datasets")
    p.add_argument("query", nargs="?", default="")
    for facet in ("keyword", "theme", "format"):
        p.add_argument(f"--{facet}", default=None)
    p.add_argument("--publisher", default=None, help="a publisher's DID")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--json", action="store_true", help="the registry's JSON answer")
    _dir_arg(p)
    audit_commands.add_parsers(sub)
    db_commands.add_parsers(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "init":
        from connector.participant.init import init_folder

        init_folder(args.dir, name=args.name, url=args.url, management_port=args.management_port)
        print(f"initialised {args.dir}")
        return 0
    if cmd == "policy":
        from connector.participant.lint import check_folder

        problems = check_folder(args.dir)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(problems)} problem(s)" if problems else "ok")
        return 1 if problems else 0
    if cmd == "audit":
        return audit_commands.run(args)
    if cmd == "db":
        return db_commands.run(args)
    if cmd in ("keys", "authority", "credentials"):
        return _identity(args)
    if cmd == "trust":
        from connector.participant.trust import add_trusted_peer

        attrs = dict(a.split("=", 1) for a in args.attr)
        path = add_trusted_peer(args.dir, args.source, attributes=attrs, tls_cert=args.tls_cert)
        print(f"pinned {path}")
        return 0
    if cmd == "registry":
        return _registry(args)
    if cmd == "search":
        from connector.registry.search import search_command

        return search_command(args)
    if cmd == "run":
        from connector.daemon import run_forever

        run_forever(args.dir)
        return 0
    from connector import client

    return asyncio.run(client.main(args))


def _registry(args: argparse.Namespace) -> int:
    from connector.registry import daemon

    if args.registry_command == "init":
        daemon.init_registry(args.dir, url=args.url, name=args.name, peers=args.peer)
        print(f"initialised registry {args.dir}")
        return 0
    daemon.run_forever(args.dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``connector`` console script."""
    args = _build_parser().parse_args(argv)
    try:
        return _run(args)
    except ConnectorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
