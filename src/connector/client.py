"""The consumer-side commands: thin calls to the local daemon's management API."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from connector import terminal
from connector.config import Settings, load_settings
from connector.core.errors import PeerError
from connector.core.ids import short_id
from connector.service.consumer import (
    CopyCounter,
    complete_records,
    copy_mismatch,
    retry_can_succeed,
)


class Management:
    """A client of one participant's management API (loopback, token)."""

    def __init__(self, settings: Settings) -> None:
        self._base = settings.management_url
        self._headers = {"Authorization": f"Bearer {settings.management_token()}"}
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def close(self) -> None:
        await self._session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        data = msgspec.json.encode(body) if body is not None else None
        try:
            async with self._session.request(method, self._base + path, data=data,
                                             headers=self._headers) as resp:
                raw = await resp.read()
                if resp.status >= 300:
                    raise PeerError(_error_text(raw), peer_status=resp.status)
                return msgspec.json.decode(raw)
        except aiohttp.ClientError as exc:
            raise PeerError(f"cannot reach the connector at {self._base}: {exc} "
                            "(is `connector run` going?)") from exc

    async def download(self, path: str, out: Path, *, append: bool = False,
                       progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
        """Stream ``path`` into ``out`` (appending if asked); returns (records, bytes) written.

        Raises PeerError if the stream is cut: what arrived stays in ``out`` for a resume.
        """
        records = size = 0
        try:
            async with self._session.get(self._base + path, headers=self._headers) as resp:
                if resp.status >= 300:
                    raise PeerError(_error_text(await resp.read()), peer_status=resp.status)
                with out.open("ab" if append else "wb") as f:
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        f.write(chunk)
                        records += chunk.count(b"\n")
                        size += len(chunk)
                        if progress is not None:
                            progress(records, size)
        except aiohttp.ClientError as exc:
            raise PeerError(f"stream cut after {records} records: {exc}") from exc
        return records, size


    async def stream(self, path: str) -> AsyncIterator[bytes]:
        """The body of a GET as it arrives; PeerError if refused or cut."""
        try:
            async with self._session.get(self._base + path, headers=self._headers) as resp:
                if resp.status >= 300:
                    raise PeerError(_error_text(await resp.read()), peer_status=resp.status)
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    yield chunk
        except aiohttp.ClientError as exc:
            raise PeerError(f"stream cut: {exc}") from exc


def _error_text(raw: bytes) -> str:
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw[:300].decode("utf-8", "replace")
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("reason") or doc)
    return str(doc)


async def catalog(m: Management, args: argparse.Namespace) -> int:
    doc = await m.call("GET", f"/api/catalog?provider={args.provider_url}")
    if args.json:
        terminal.print_json(doc)
        return 0
    rows = []
    for ds in _listed(doc.get("dataset")):
        for offer in _listed(ds.get("hasPolicy")):
            rows.append([ds.get("@id", ""), offer.get("@id", ""), ds.get("title", ""),
                         policy_summary(offer)])
    terminal.print_table(["DATASET", "OFFER", "TITLE", "CONSTRAINTS"], rows,
                        empty="no offers for us: the provider shows only offers whose "
                        "policy our pinned attributes satisfy; `connector negotiate URL "
                        "DATASET` says which terms a dataset needs")
    return 0


def _listed(value: Any) -> list[Any]:
    """A JSON-LD value that may be one item, a list of them, or absent, as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def policy_summary(policy: dict[str, Any]) -> str:
    """An ODRL policy's permission constraints as ``left op right; ...`` (for a table)."""
    parts = []
    for rule in _listed(policy.get("permission")):
        if not isinstance(rule, dict):
            continue
        for c in _listed(rule.get("constraint")):
            if isinstance(c, dict) and "leftOperand" in c:
                parts.append(f"{_term(c['leftOperand'])} {_term(c.get('operator'))} "
                             f"{_term(c.get('rightOperand'))}")
            elif isinstance(c, dict):
                parts.append("(a logical constraint)")
    return "; ".join(parts) or "none"


def _term(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("@id", value.get("@value", value))
    text = str(value)
    return text.rsplit("/", 1)[-1].removeprefix("odrl:")


async def negotiate(m: Management, args: argparse.Namespace) -> int:
    body = {"provider": args.provider_url, "datasetId": args.dataset_id, "offerId": args.offer}
    record = await m.call("POST", f"/api/negotiations?wait={args.timeout}", body)
    deadline = time.monotonic() + args.timeout
    while record["state"] not in ("FINALIZED", "TERMINATED") and time.monotonic() < deadline:
        record = await m.call("GET", f"/api/negotiations/{record['id']}?wait=5")
    if record["state"] == "FINALIZED":
        print(record["agreementId"])
        return 0
    if record["state"] != "TERMINATED":
        return await _unanswered(m, record, args.timeout)
    print(f"negotiation {record['id']} {record['state']}: {record.get('reason')}",
          file=sys.stderr)
    return 1


async def _unanswered(m: Management, record: dict[str, Any], timeout: float) -> int:
    """A negotiation the provider left unanswered: ended here (the provider is told), not
    left waiting for ever, with what to look at."""
    reason = f"no answer from the provider within {timeout:g} s"
    try:
        record = await m.call("POST", f"/api/negotiations/{record['id']}/terminate",
                              {"reason": reason})
    except PeerError:  # it ended meanwhile: say how
        record = await m.call("GET", f"/api/negotiations/{record['id']}")
    print(f"negotiation {record['id']} {record['state']}: {record.get('reason') or reason}; "
          "check that the provider runs, that each side pins the other and that both use the "
          "same [identity] mode (its log says what it refused; docs/troubleshooting.md)",
          file=sys.stderr)
    return 1


async def _end(m: Management, tid: str, reason: str) -> int:
    """Terminate a transfer the provider refuses for good, with its reason (the provider is
    told too), and say so; no advice to run again."""
    try:
        record = await m.call("POST", f"/api/transfers/{tid}/terminate", {"reason": reason})
    except PeerError:  # already ended on our side (e.g. the provider terminated it)
        record = await m.call("GET", f"/api/transfers/{tid}")
    print(f"\ntransfer {tid} {record['state']}: {reason}", file=sys.stderr)
    return 1


async def _open_or_resume(m: Management, args: argparse.Namespace, part: Path,
                          meta: Path) -> tuple[dict[str, Any], int] | None:
    """Resume the interrupted transfer recorded beside ``part``, or open a new one."""
    if part.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("agreement") == args.agreement_id:
            record = await m.call("GET", f"/api/transfers/{info['transfer']}")
            if record["state"] == "STARTED":
                records = complete_records(part).records
                print(f"resuming transfer {record['id']} at record {records}", file=sys.stderr)
                return record, records
    record = await m.call("POST", f"/api/transfers?wait={args.timeout}",
                          {"agreementId": args.agreement_id})
    if record["state"] != "STARTED":
        print(f"transfer {record['id']} is {record['state']}: "
              f"{record.get('reason') or 'the provider did not start it'}", file=sys.stderr)
        return None
    part.write_bytes(b"")
    meta.write_text(json.dumps({"agreement": args.agreement_id, "transfer": record["id"]}))
    return record, 0


async def _open(m: Management, args: argparse.Namespace,
                body: dict[str, Any] | None = None) -> dict[str, Any] | None:
    record: dict[str, Any] = await m.call("POST", f"/api/transfers?wait={args.timeout}",
                                          {"agreementId": args.agreement_id, **(body or {})})
    if record["state"] == "REQUESTED" or record["state"] == "TERMINATED":
        print(f"transfer {record['id']} is {record['state']}: "
              f"{record.get('reason') or 'the provider did not start it'}", file=sys.stderr)
        return None
    return record


async def _to_stdout(m: Management, args: argparse.Namespace) -> int:
    """``--out -``: stream the records to stdout, verify them, complete (no resume)."""
    record = await _open(m, args)
    if record is None:
        return 1
    tid = record["id"]
    summary = await m.call("GET", f"/api/transfers/{tid}/summary")
    counter = CopyCounter()
    out = sys.stdout.buffer
    async for chunk in m.stream(f"/api/transfers/{tid}/data"):
        out.write(chunk)
        counter.update(chunk)
    out.flush()
    got = counter.copy()
    problem = copy_mismatch(got, summary)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    await m.call("POST", f"/api/transfers/{tid}/complete")
    print(f"{got.records} records, {got.bytes} bytes, sha256 {got.sha256} verified -> stdout",
          file=sys.stderr)
    return 0


async def _by_daemon(m: Management, args: argparse.Namespace) -> int:
    """An SQLite-table sink: the daemon pulls into it, verifies and completes."""
    record = await _open(m, args)
    if record is None:
        return 1
    got = await m.call("POST", f"/api/transfers/{record['id']}/pull", {"sink": args.out})
    print(f"{got['records']} records, {got['bytes']} bytes, sha256 {got['sha256']} verified "
          f"-> {args.out}")
    return 0


async def _pushed(m: Management, args: argparse.Namespace) -> int:
    """``--push``: the provider streams to our daemon, which writes the sink and verifies
    count and SHA-256 before it accepts the completion. ``-`` spools to state/ first."""
    spool = None
    sink = args.out
    if sink == "-":
        spool = Path(args.dir).resolve() / "state" / f"push-{time.time_ns()}.jsonl"
        sink = str(spool)
    elif not sink.startswith("sqlite:"):
        sink = str(Path(sink).resolve())
    record = await _open(m, args, {"push": True, "sink": sink})
    if record is None:
        return 1
    tid = record["id"]
    deadline = time.monotonic() + args.timeout
    while record["state"] not in ("COMPLETED", "TERMINATED") and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        record = await m.call("GET", f"/api/transfers/{tid}")
    if record["state"] != "COMPLETED":
        print(f"push transfer {tid} {record['state']}: {record.get('reason') or 'timed out'}",
              file=sys.stderr)
        return 1
    got = await m.call("GET", f"/api/transfers/{tid}/push")
    line = (f"{got['records']} records, {got['bytes']} bytes, sha256 {got['sha256']} "
            f"verified (pushed) -> {args.out if spool is None else 'stdout'}")
    if spool is not None:
        with spool.open("rb") as f:
            while block := f.read(1 << 20):
                sys.stdout.buffer.write(block)
        sys.stdout.buffer.flush()
        spool.unlink()
        print(line, file=sys.stderr)
    else:
        print(line)
    return 0


async def transfer(m: Management, args: argparse.Namespace) -> int:
    """Pull an agreement's records into ``--out``; verify count and SHA-256; complete.

    Run again after an interruption, a pull into a file resumes at the first missing record.
    ``--out -`` writes to stdout, ``--out sqlite:///PATH#table`` into a table, ``--push`` has
    the provider push to this connector.
    """
    args.agreement_id = await _agreement_id(m, args.agreement_id)
    if args.push:
        return await _pushed(m, args)
    if args.out == "-":
        return await _to_stdout(m, args)
    if args.out.startswith("sqlite:"):
        return await _by_daemon(m, args)
    out = Path(args.out)
    part, meta = out.with_name(out.name + ".part"), out.with_name(out.name + ".part.json")
    opened = await _open_or_resume(m, args, part, meta)
    if opened is None:
        return 1
    record, offset = opened
    tid = record["id"]
    try:
        summary: dict[str, Any] | None = await m.call("GET", f"/api/transfers/{tid}/summary")
    except PeerError as exc:  # e.g. EDC's data plane: no count or checksum to check against
        if not retry_can_succeed(exc):  # refused for good: no pull can follow
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return await _end(m, tid, exc.message)
        print(f"the provider gives no summary ({exc.message}); the copy will be unverified",
              file=sys.stderr)
        summary = None
    try:
        with terminal.download_progress(summary["bytes"] if summary else None,
                                       part.stat().st_size) as progress:
            await m.download(f"/api/transfers/{tid}/data?offset={offset}", part,
                             append=True, progress=progress)
    except PeerError as exc:
        if not retry_can_succeed(exc):
            part.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return await _end(m, tid, exc.message)
        state = await m.call("GET", f"/api/transfers/{tid}")
        print(f"\ntransfer {tid} interrupted ({state['state']}"
              f"{': ' + state['reason'] if state.get('reason') else ''}): {exc.message}; "
              "run the same command again to resume", file=sys.stderr)
        return 1
    got = complete_records(part)
    problem = copy_mismatch(got, summary) if summary is not None else None
    if problem is not None:
        print(f"\n{problem}", file=sys.stderr)
        return 1
    part.replace(out)
    meta.unlink()
    await m.call("POST", f"/api/transfers/{tid}/complete")
    check = "verified" if summary is not None else "UNVERIFIED"
    print(f"\r{got.records} records, {got.bytes} bytes, sha256 {got.sha256} {check} -> {out}")
    return 0


async def status(m: Management, args: argparse.Namespace) -> int:
    daemon = await m.call("GET", "/api/status")
    negs = await m.call("GET", "/api/negotiations")
    ags = await m.call("GET", "/api/agreements")
    trs = await m.call("GET", "/api/transfers")
    if args.json:
        terminal.print_json({"daemon": daemon, "negotiations": negs, "agreements": ags,
                            "transfers": trs})
        return 0
    print("\n".join(daemon_lines(daemon)))
    short = short_id
    terminal.print_table(
        ["NEGOTIATION", "ROLE", "STATE", "DATASET", "AGREEMENT"],
        [[short(n["id"]), n["role"], n["state"], n["datasetId"], short(n.get("agreementId") or "")]
         for n in negs], title="negotiations")
    terminal.print_table(
        ["AGREEMENT", "ROLE", "DATASET", "ASSIGNEE", "REVOKED"],
        [[short(a["id"]), a["role"], a["datasetId"], a["assignee"], a.get("revoked") or ""]
         for a in ags], title="agreements")
    terminal.print_table(
        ["TRANSFER", "ROLE", "STATE", "AGREEMENT", "REASON"],
        [[short(t["id"]), t["role"], t["state"], short(t["agreementId"]), t.get("reason") or ""]
         for t in trs], title="transfers")
    return 0


def daemon_lines(daemon: dict[str, Any]) -> list[str]:
    """The daemon's own lines atop ``connector status``."""
    lines = [f"{daemon.get('name')} ({daemon.get('did')}), connector {daemon.get('version')}, "
             f"identity {daemon.get('identityMode')}",
             f"  public URL {daemon.get('publicUrl')}, management API "
             f"{daemon.get('managementUrl')}"]
    if daemon.get("restartNeeded"):
        lines.append(f"  restart needed to apply: {', '.join(daemon['restartNeeded'])}")
    for dataset, why in (daemon.get("unavailableDatasets") or {}).items():
        lines.append(f"  dataset {dataset} is not offered: {why}")
    problems = daemon.get("folderProblems") or []
    if problems:
        lines.append(f"  connector policy check finds {len(problems)} problem(s); the files "
                     "named are not in force:")
        lines += [f"    {problem}" for problem in problems]
    return lines


async def agreements(m: Management, args: argparse.Namespace) -> int:
    """The agreements with their provider, policy, uses (provider side) and revocation."""
    found = [await m.call("GET", f"/api/agreements/{a['id']}")
             for a in await m.call("GET", "/api/agreements")]
    if args.json:
        terminal.print_json(found)
        return 0
    terminal.print_table(
        ["AGREEMENT", "ROLE", "DATASET", "PROVIDER", "CONSUMER", "POLICY", "USES", "REVOKED"],
        [[short_id(a["id"]), a["role"], a["datasetId"], a["assigner"], a["assignee"],
          policy_summary(a.get("body") or {}),
          "" if a.get("uses") is None else a["uses"], a.get("revoked") or "no"]
         for a in found], empty="no agreements yet")
    return 0


async def _agreement_id(m: Management, given: str) -> str:
    return terminal.match_id(given, [a["id"] for a in await m.call("GET", "/api/agreements")],
                            "agreement")


async def revoke(m: Management, args: argparse.Namespace) -> int:
    aid = await _agreement_id(m, args.agreement_id)
    done = await m.call("POST", f"/api/agreements/{aid}/revoke", {"reason": args.reason})
    ended = done.get("terminated") or []
    print(f"revoked {aid}; {len(ended)} open transfer(s) terminated")
    return 0


async def negotiation(m: Management, args: argparse.Namespace) -> int:
    nid = terminal.match_id(args.id, [n["id"] for n in await m.call("GET", "/api/negotiations")],
                           "negotiation")
    record = await m.call("POST", f"/api/negotiations/{nid}/terminate", {"reason": args.reason})
    print(f"negotiation {nid} {record['state']}")
    return 0


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def timeline(kind: str, record: dict[str, Any]) -> list[str]:
    """A process's timeline as printed by ``connector why``."""
    subject = record.get("datasetId") or record.get("agreementId")
    lines = [f"{kind} {record['id']} ({record['role']}, {subject}): {record['state']}"]
    for entry in record.get("history", []):
        lines.append(f"  {_clock(entry['at'])}  {entry['by']:<8}  {entry['message']}"
                     f" -> {entry['state']}")
        lines += [f"{'':30}{line}" for line in entry.get("note", "").splitlines()]
    if record.get("policyHash"):
        lines.append(f"  agreed under policy sha256 {record['policyHash']}"
                     f" (git {record.get('policyCommit') or 'not a git folder'})")
    return lines


async def why(m: Management, args: argparse.Namespace) -> int:
    """The timeline of a negotiation or transfer, with the trace of each policy decision;
    for an agreement, its negotiation's timeline and then each transfer's."""
    negs = {n["id"]: n for n in await m.call("GET", "/api/negotiations")}
    trs = {t["id"]: t for t in await m.call("GET", "/api/transfers")}
    ags = {a["id"]: a for a in await m.call("GET", "/api/agreements")}
    pid = terminal.match_id(args.id, [*negs, *trs, *ags], "negotiation, transfer or agreement")
    if pid in ags:
        agreement = await m.call("GET", f"/api/agreements/{pid}")
        standing = (f"revoked: {agreement['revoked']}" if agreement.get("revoked")
                    else "in force")
        if agreement.get("uses") is not None:
            standing += f", used {agreement['uses']} time(s)"
        print(f"agreement {pid} ({agreement['role']}, {agreement['datasetId']}): {standing}")
        print(f"  policy: {policy_summary(agreement.get('body') or {})}")
        shown = [("negotiation", "/api/negotiations/", agreement["negotiationId"])]
        shown += [("transfer", "/api/transfers/", t) for t in agreement.get("transfers", [])]
    else:
        kind = "negotiation" if pid in negs else "transfer"
        shown = [(kind, f"/api/{kind}s/", pid)]
    for kind, path, each in shown:
        print("\n".join(timeline(kind, await m.call("GET", path + each))))
    return 0


COMMANDS = {"catalog": catalog, "negotiate": negotiate, "transfer": transfer, "status": status,
            "why": why, "agreements": agreements, "revoke": revoke, "negotiation": negotiation}


async def main(args: argparse.Namespace) -> int:
    m = Management(load_settings(args.dir))
    try:
        return await COMMANDS[args.command](m, args)
    finally:
        await m.close()
