"""The consumer-side commands: thin calls to the local daemon's management API."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from connector.config import Settings, load_settings
from connector.core.errors import PeerError


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

    async def download(self, path: str, out: Path) -> tuple[int, int]:
        """Stream ``path`` into ``out``; returns (records, bytes)."""
        records = size = 0
        tmp = out.with_name(out.name + ".part")
        async with self._session.get(self._base + path, headers=self._headers) as resp:
            if resp.status >= 300:
                raise PeerError(_error_text(await resp.read()), peer_status=resp.status)
            with tmp.open("wb") as f:
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    f.write(chunk)
                    records += chunk.count(b"\n")
                    size += len(chunk)
        tmp.replace(out)
        return records, size


def _error_text(raw: bytes) -> str:
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw[:300].decode("utf-8", "replace")
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("reason") or doc)
    return str(doc)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


async def catalog(m: Management, args: argparse.Namespace) -> int:
    doc = await m.call("GET", f"/api/catalog?provider={args.provider_url}")
    rows = []
    for ds in doc.get("dataset", []) or []:
        offers = ds.get("hasPolicy", [])
        for offer in offers if isinstance(offers, list) else [offers]:
            rows.append([ds.get("@id", ""), offer.get("@id", ""), ds.get("title", "")])
    print(_table(rows, ["DATASET", "OFFER", "TITLE"]) if rows else "no offers for us")
    return 0


async def negotiate(m: Management, args: argparse.Namespace) -> int:
    body = {"provider": args.provider_url, "datasetId": args.dataset_id, "offerId": args.offer}
    record = await m.call("POST", f"/api/negotiations?wait={args.timeout}", body)
    deadline = time.monotonic() + args.timeout
    while record["state"] not in ("FINALIZED", "TERMINATED") and time.monotonic() < deadline:
        record = await m.call("GET", f"/api/negotiations/{record['id']}?wait=5")
    if record["state"] == "FINALIZED":
        print(record["agreementId"])
        return 0
    print(f"negotiation {record['id']} {record['state']}: {record.get('reason') or 'timed out'}",
          file=sys.stderr)
    return 1


async def transfer(m: Management, args: argparse.Namespace) -> int:
    record = await m.call("POST", f"/api/transfers?wait={args.timeout}",
                          {"agreementId": args.agreement_id})
    if record["state"] != "STARTED":
        print(f"transfer {record['id']} is {record['state']}: "
              f"{record.get('reason') or 'the provider did not start it'}", file=sys.stderr)
        return 1
    records, size = await m.download(f"/api/transfers/{record['id']}/data", args.out)
    print(f"{records} records, {size} bytes -> {args.out}")
    return 0


async def status(m: Management, args: argparse.Namespace) -> int:
    negs = await m.call("GET", "/api/negotiations")
    print(_table([[n["id"], n["role"], n["state"], n["datasetId"], n.get("agreementId") or ""]
                  for n in negs], ["NEGOTIATION", "ROLE", "STATE", "DATASET", "AGREEMENT"]))
    ags = await m.call("GET", "/api/agreements")
    print()
    print(_table([[a["id"], a["role"], a["datasetId"], a["assignee"]] for a in ags],
                 ["AGREEMENT", "ROLE", "DATASET", "ASSIGNEE"]))
    trs = await m.call("GET", "/api/transfers")
    print()
    print(_table([[t["id"], t["role"], t["state"], t["agreementId"]] for t in trs],
                 ["TRANSFER", "ROLE", "STATE", "AGREEMENT"]))
    return 0


COMMANDS = {"catalog": catalog, "negotiate": negotiate, "transfer": transfer, "status": status}


async def main(args: argparse.Namespace) -> int:
    m = Management(load_settings(args.dir))
    try:
        return await COMMANDS[args.command](m, args)
    finally:
        await m.close()
