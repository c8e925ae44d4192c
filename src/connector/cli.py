"""The ``connector`` command. Parses arguments and calls one function; no business logic here."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from connector import __version__, audit_commands, consent_commands, db_commands, terminal
from connector.core.errors import ConfigError, ConnectorError

DESCRIPTION = """\
Your organisation's data-space connector: share datasets with partners under usage
policies (Eclipse Dataspace Protocol 2025-1), and take theirs.

Everything lives in a participant folder (a git repository): connector.toml, did.json,
policies/, datasets/, trust/. Every command works on the current directory or on the
folder given with --dir."""

EPILOG = """\
first steps:
  connector init acme --name acme --url https://connector.acme.example
  connector trust add PARTNER/did.json --tls-cert PARTNER-cert.pem --attr membership=active
  connector run --dir acme
  connector catalog https://partner.example --dir acme
see docs/onboarding.md for the whole path, docs/troubleshooting.md when something is refused."""


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each argument's help ends with its default, unless it has none worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action) or text


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser under ``parser``, each once (aliases share one)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for child in action.choices.values():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield child
                    yield from _subparsers(child)


def _every_parser_explains(parser: argparse.ArgumentParser) -> None:
    """Subcommands get the same help format as the top level (defaults shown)."""
    for child in _subparsers(parser):
        child.formatter_class = _Help


def _folder(parser: argparse.ArgumentParser, *, positional: bool = True,
            required: bool = False) -> None:
    """The participant folder as ``--dir DIR`` and, where it always was, a positional DIR."""
    if positional:
        parser.add_argument("folder", type=Path, nargs="?", default=None, metavar="DIR",
                            help="the folder (the same as --dir DIR)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="the folder" + (" (required)" if required
                                             else " (default: the current directory)"))
    parser.set_defaults(folder_required=required)


def _init_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], help: str
                 ) -> argparse.ArgumentParser:
    """``init``: a folder to create (required) and the public URL it will serve."""
    parser = sub.add_parser("init", help=help)
    _folder(parser, required=True)
    parser.add_argument("--url", required=True,
                        help="public root URL, https://HOST[:PORT] (no port: 443)")
    return parser


def _resolve_folder(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.dir``: the folder given as DIR or ``--dir`` (the current directory if neither)."""
    given = {p for p in (getattr(args, "folder", None), args.dir) if p is not None}
    if len(given) > 1:
        parser.error("give the folder once, as DIR or as --dir DIR")
    if not given and getattr(args, "folder_required", False):
        parser.error(f"{args.command}: the folder to create is required (DIR or --dir DIR)")
    args.dir = given.pop() if given else Path(".")


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print JSON (for scripts) instead of tables")


def _add_trust_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``trust add|list|remove``."""
    p = sub.add_parser("trust", help="the peers this participant pins")
    tsub = p.add_subparsers(dest="trust_command", required=True, metavar="COMMAND")
    ta = tsub.add_parser("add", help="pin a peer from its participant folder or did.json "
                         "(again after it rotated its key)")
    ta.add_argument("source", type=Path, help="the peer's folder or its did.json")
    ta.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                    help="an attribute your policies may test (repeatable); added to those "
                    "already pinned")
    ta.add_argument("--replace-attrs", action="store_true",
                    help="drop the attributes already pinned for this peer")
    ta.add_argument("--tls-cert", type=Path, default=None,
                    help="the peer's TLS certificate (default: the one in its folder, or "
                    "the one already pinned)")
    ta.add_argument("--system-ca", action="store_true",
                    help="pin no certificate: the peer's server has one from a public CA")
    _folder(ta, positional=False)
    tl = tsub.add_parser("list", help="the pinned peers, their URLs and attributes")
    _json_arg(tl)
    _folder(tl, positional=False)
    tr = tsub.add_parser("remove", help="unpin a peer (its agreements are kept)")
    tr.add_argument("peer", help="its DID or its trust file's name (see `trust list`)")
    _folder(tr, positional=False)


def _add_identity_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``keys rotate|list``, ``authority init|issue|revoke|run`` and ``credentials import``."""
    p = sub.add_parser("keys", help="signing keys")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    kr = ksub.add_parser("rotate", help="publish and sign with a new key; --retire an old one")
    _folder(kr)
    kr.add_argument("--publish-only", action="store_true",
                    help="add the key to did.json but keep signing with the old one")
    kr.add_argument("--activate", metavar="KID", default=None, help="sign with a published key")
    kr.add_argument("--retire", metavar="KID", default=None,
                    help="remove a rotated-out key once its tokens have expired")
    kl = ksub.add_parser("list", help="the keys in did.json: which signs, which rotated out")
    _json_arg(kl)
    _folder(kl, positional=False)

    p = sub.add_parser("authority", help="a data-space authority issuing membership credentials")
    asub = p.add_subparsers(dest="authority_command", required=True, metavar="COMMAND")
    _init_parser(asub, "create an authority folder")
    iss = asub.add_parser("issue", help="print a VC JWT for a member")
    _folder(iss)
    iss.add_argument("--subject", required=True, help="the member's DID")
    iss.add_argument("--type", action="append", default=None, dest="types",
                     help="credential type (repeatable; default MembershipCredential)")
    iss.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE",
                     help="a claim of the credential (repeatable)")
    iss.add_argument("--valid-days", type=int, default=365, help="the credential's lifetime")
    iss.add_argument("--out", type=Path, default=None, help="also write the VC JWT here")
    ar = asub.add_parser("revoke", help="set a credential's bit in the revocation list")
    _folder(ar)
    ar.add_argument("credential_id", help="the id `authority issue` printed")
    arun = asub.add_parser("run", help="serve did.json and the revocation list over HTTPS")
    _folder(arun)

    p = sub.add_parser("credentials", help="the participant's verifiable credentials")
    csub = p.add_subparsers(dest="credentials_command", required=True, metavar="COMMAND")
    ci = csub.add_parser("import", help="store a VC JWT under credentials/")
    _folder(ci)
    ci.add_argument("file", type=Path, help="the VC JWT file an authority issued")


def _attributes(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict; ConfigError for one without ``=``."""
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
    if bad:
        raise ConfigError(f"--attr {bad[0]!r}: expected KEY=VALUE")
    return dict(p.split("=", 1) for p in pairs)


def _keys(args: argparse.Namespace) -> int:
    from connector.participant import keys

    if args.keys_command == "list":
        found = keys.signing_keys(args.dir)
        if args.json:
            terminal.print_json(found)
        else:
            terminal.print_table(["KID", "STATUS", "SINCE", "PRIVATE KEY"],
                                [[k["kid"], k["status"], k["since"] or "", k["key"] or ""]
                                 for k in found])
    elif args.retire:
        keys.retire_signing_key(args.dir, args.retire)
        print(f"retired {args.retire}")
    elif args.activate:
        keys.activate_signing_key(args.dir, args.activate)
        print(f"signing with {args.activate}")
    else:
        kid = keys.rotate_signing_key(args.dir, publish_only=args.publish_only)
        print(f"published {kid}" if args.publish_only else f"signing with {kid}")
        print("next: send your did.json to each partner and to each registry you publish to; "
              "they re-pin you with `connector trust add` (until then they refuse your "
              "tokens as signed by an older key); see docs/key-rotation.md", file=sys.stderr)
    return 0


def _identity(args: argparse.Namespace) -> int:
    """Dispatch of the commands ``_add_identity_parsers`` declares. Prints no key material."""
    from connector import authority
    from connector.participant import credentials

    if args.command == "keys":
        return _keys(args)
    if args.command == "credentials":
        print(f"imported {credentials.import_credential(args.dir, args.file)}")
        return 0
    command = args.authority_command
    if command == "init":
        settings = authority.init_authority(args.dir, url=args.url)
        print(f"initialised authority {settings.did}")
    elif command == "issue":
        credential_id, token = authority.issue_credential(
            args.dir, subject=args.subject, types=args.types or ["MembershipCredential"],
            attributes=_attributes(args.attr), valid_days=args.valid_days)
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


def _trust(args: argparse.Namespace) -> int:
    from connector.participant import trust

    if args.trust_command == "add":
        path = trust.add_trusted_peer(
            args.dir, args.source, attributes=_attributes(args.attr), tls_cert=args.tls_cert,
            system_ca=args.system_ca, replace_attributes=args.replace_attrs)
        print(f"pinned {path}")
    elif args.trust_command == "remove":
        print(f"unpinned {trust.remove_trusted_peer(args.dir, args.peer)}")
    else:
        peers = trust.pinned_peers(args.dir)
        tls = {path: "pinned" if p.tls_cert_pem else "system CAs" for path, p in peers}
        if args.json:
            terminal.print_json([{"file": path.name, "did": p.did, "url": p.url,
                                 "keys": sorted(p.keys), "attributes": dict(p.attributes),
                                 "tls": tls[path]} for path, p in peers])
        else:
            terminal.print_table(
                ["DID", "URL", "ATTRIBUTES", "TLS", "FILE"],
                [[p.did, p.url, ", ".join(f"{k}={a}" for k, a in p.attributes.items()),
                  tls[path], path.name] for path, p in peers], empty="no pinned peers")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="connector", description=DESCRIPTION,
                                     epilog=EPILOG, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"connector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _init_parser(sub, "create a participant folder (a git repository to be)")
    p.add_argument("--name", required=True, help="the participant's short name")
    p.add_argument("--management-port", type=int, default=None,
                   help="port of the management API on 127.0.0.1 (default: the public "
                   "port + 1)")
    p.add_argument("--tls-cert", type=Path, default=None,
                   help="a certificate (with its chain) a CA issued for the URL's host, "
                   "instead of a self-signed one (default: self-signed)")
    p.add_argument("--tls-key", type=Path, default=None,
                   help="the private key of --tls-cert (copied into keys/, 0600)")

    p = sub.add_parser("policy", help="policy tools")
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    pc = psub.add_parser("check", help="validate a participant folder; file:line per problem")
    _folder(pc)

    _add_trust_parsers(sub)
    _add_identity_parsers(sub)

    p = sub.add_parser("run", help="run the connector daemon")
    _folder(p)

    p = sub.add_parser("catalog", help="the offers a provider shows this participant")
    p.add_argument("provider_url", help="the provider's root URL, https://HOST[:PORT]")
    _json_arg(p)
    _folder(p, positional=False)

    p = sub.add_parser("negotiate", help="negotiate a contract; prints the agreement id")
    p.add_argument("provider_url", help="the provider's root URL, https://HOST[:PORT]")
    p.add_argument("dataset_id", help="the dataset's id, as `connector catalog` shows it")
    p.add_argument("--offer", default=None, help="offer id (default: the first offer)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the end")
    _folder(p, positional=False)

    p = sub.add_parser("negotiation", help="act on a negotiation")
    nsub = p.add_subparsers(dest="negotiation_command", required=True, metavar="COMMAND")
    nt = nsub.add_parser("terminate", help="end a negotiation that is not finished")
    nt.add_argument("id", help="the negotiation id or its first characters")
    nt.add_argument("--reason", default="terminated by operator",
                    help="told to the other side")
    _folder(nt, positional=False)

    p = sub.add_parser("transfer", help="pull (or be pushed) the records of an agreement "
                       "into a file, stdout or an SQLite table")
    p.add_argument("agreement_id", help="the agreement id or its first characters")
    p.add_argument("--out", required=True,
                   help="a file, - for stdout, or sqlite:///ABSOLUTE/PATH.db#table")
    p.add_argument("--push", action="store_true",
                   help="have the provider push to this connector instead of pulling")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the provider to start")
    _folder(p, positional=False)

    p = sub.add_parser("status", help="negotiations, agreements and transfers as tables")
    _json_arg(p)
    _folder(p, positional=False)

    p = sub.add_parser("agreements", help="the agreements made: provider, policy, uses, "
                       "revocation")
    _json_arg(p)
    _folder(p, positional=False)

    p = sub.add_parser("revoke", help="provider: withdraw an agreement; its open transfers "
                       "are terminated")
    p.add_argument("agreement_id", help="the agreement id or its first characters")
    p.add_argument("--reason", default="revoked by the provider",
                   help="told to the consumer")
    _folder(p, positional=False)

    p = sub.add_parser("why", help="the timeline of a negotiation, transfer or agreement, "
                       "with each policy decision's trace")
    p.add_argument("id", help="a negotiation, transfer or agreement id (or its first "
                   "characters; see `connector status`)")
    _folder(p, positional=False)

    p = sub.add_parser("registry", help="the catalogue-metadata registry (its own daemon)")
    rsub = p.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    ri = _init_parser(rsub, "create a registry folder")
    ri.add_argument("--name", default="registry", help="the registry's short name")
    ri.add_argument("--peer", action="append", default=[], metavar="URL",
                    help="a peer registry to replicate from (repeatable)")
    rr = rsub.add_parser("run", help="run the registry daemon")
    _folder(rr)

    p = sub.add_parser("search", help="search the registries for datasets")
    p.add_argument("query", nargs="?", default="", help="words to look for")
    for facet in ("keyword", "theme", "format"):
        p.add_argument(f"--{facet}", default=None, help=f"only datasets with this {facet}")
    p.add_argument("--publisher", default=None, help="a publisher's DID")
    p.add_argument("--limit", type=int, default=20, help="at most this many results")
    p.add_argument("--offset", type=int, default=0, help="skip this many results")
    _json_arg(p)
    _folder(p, positional=False)
    audit_commands.add_parsers(sub)
    db_commands.add_parsers(sub)
    consent_commands.add_parsers(sub)
    _every_parser_explains(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "init":
        from connector.participant.init import init_folder, next_steps

        if (args.tls_cert is None) != (args.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        tls = (args.tls_cert, args.tls_key) if args.tls_cert and args.tls_key else None
        init_folder(args.dir, name=args.name, url=args.url,
                    management_port=args.management_port, tls=tls)
        print("\n".join(next_steps(args.dir, public_ca=tls is not None)))
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
    if cmd == "consent":
        return consent_commands.run(args)
    if cmd in ("keys", "authority", "credentials"):
        return _identity(args)
    if cmd == "trust":
        return _trust(args)
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


def _reader_left() -> int:
    """``connector status | head``: the reader closed the pipe; stop quietly.

    Later writes (Python's own flush at exit included) go to /dev/null, so no
    BrokenPipeError traceback follows (Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``connector`` console script."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "dir"):
        _resolve_folder(parser, args)
    try:
        return _run(args)
    except BrokenPipeError:
        return _reader_left()
    except ConnectorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
