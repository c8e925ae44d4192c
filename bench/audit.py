"""What the audit trail costs: negotiations per second with it on and off, in the same run.

Two pairs of connector daemons (provider and consumer, created and started as ``make demo``
does) run side by side: one with the default ``[audit]`` (on), one with ``enabled = false``.
The driver alternates timed phases between them (on, off, on, off) at concurrency 64, so
that both see the same load from the rest of the box; each rate is completed negotiations
over the time of its phases. Then one pull of a large dataset from the audited provider
shows how many audit entries a stream adds (a bounded number, not one per record).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from tests.harness import Participant, create_space, start, stop

from bench import LoadResult, emit, load, log
from connector.client import Management
from connector.config import load_settings

DATASET = "example-weather"
CONCURRENCY = 64
ROUNDS = 2  # on, off, on, off
MAX_PER_PHASE = 100_000
# The pulled dataset: 1 GiB of JSON lines (64 MiB with --quick), written once per run.
PULL_BYTES, QUICK_PULL_BYTES = 1 << 30, 64 << 20


def _space(root: Path, audit: bool) -> tuple[Participant, Participant]:
    provider, consumer = create_space(root)
    if not audit:
        for p in (provider, consumer):
            with (p.dir / "connector.toml").open("a") as f:
                f.write("\n[audit]\nenabled = false\n")
    return provider, consumer


async def _phase(provider: Participant, consumer: Participant, session: aiohttp.ClientSession,
                 duration_s: float) -> LoadResult:
    settings = load_settings(consumer.dir)
    url = settings.management_url + "/api/negotiations?wait=30"
    headers = {"Authorization": f"Bearer {settings.management_token()}",
               "Content-Type": "application/json"}
    body = msgspec.json.encode({"provider": provider.url, "datasetId": DATASET})

    async def call() -> bool:
        async with session.post(url, data=body, headers=headers) as resp:
            doc: dict[str, Any] = msgspec.json.decode(await resp.read())
            return resp.status == 201 and doc.get("state") == "FINALIZED"

    return await load(call, concurrency=CONCURRENCY, duration_s=duration_s,
                      max_count=MAX_PER_PHASE)


async def _compare(spaces: dict[str, tuple[Participant, Participant]], duration_s: float,
                   warmup_s: float) -> dict[str, tuple[int, float, int]]:
    """label -> (completed, seconds, errors) over its timed phases."""
    totals = {label: (0, 0.0, 0) for label in spaces}
    connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        for provider, consumer in spaces.values():
            await _phase(provider, consumer, session, warmup_s)
        for _ in range(ROUNDS):
            for label, (provider, consumer) in spaces.items():
                r = await _phase(provider, consumer, session, duration_s / ROUNDS)
                done, secs, errs = totals[label]
                totals[label] = (done + r.completed, secs + r.elapsed_s, errs + r.errors)
                log(f"audit {label}: {r.completed} negotiations, {r.rate:.1f}/s")
    return totals


def _entries(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0])


def _big_dataset(provider: Participant, size: int) -> int:
    """A dataset of ``size`` bytes of JSON lines on the provider; returns its records."""
    line = b'{"seq": %d, "station": "s-%d", "payload": "' + b"x" * 200 + b'"}\n'
    records = 0
    with (provider.dir / "data" / "big.jsonl").open("wb") as f:
        written = 0
        while written < size:
            chunk = b"".join(line % (records + i, i % 97) for i in range(10_000))
            f.write(chunk)
            written += len(chunk)
            records += 10_000
    (provider.dir / "datasets" / "big.toml").write_text(
        'id = "big"\ntitle = "Big"\ndescription = "many records"\nkeywords = ["big"]\n'
        'policies = ["members-only"]\n[source]\ntype = "jsonl"\npath = "data/big.jsonl"\n')
    return records


async def _pull(provider: Participant, consumer: Participant, out: Path) -> int:
    api = Management(load_settings(consumer.dir))
    try:
        record = await api.call("POST", "/api/negotiations?wait=30",
                                {"provider": provider.url, "datasetId": "big"})
        transfer = await api.call("POST", "/api/transfers?wait=30",
                                  {"agreementId": record["agreementId"]})
        records, _ = await api.download(f"/api/transfers/{transfer['id']}/data", out)
        return int(records)
    finally:
        await api.close()


def run(*, quick: bool) -> None:
    duration_s = 4.0 if quick else 20.0
    warmup_s = 0.5 if quick else 1.0
    root = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    running: list[Participant] = []
    try:
        spaces = {"on": _space(root / "on", True), "off": _space(root / "off", False)}
        records = _big_dataset(spaces["on"][0], QUICK_PULL_BYTES if quick else PULL_BYTES)
        for pair in spaces.values():
            for p in pair:
                start(p)
                running.append(p)
        totals = asyncio.run(_compare(spaces, duration_s, warmup_s))
        provider, consumer = spaces["on"]
        db = load_settings(provider.dir).database
        before = _entries(db)
        pulled = asyncio.run(_pull(provider, consumer, root / "pulled.jsonl"))
        added = _entries(db) - before
    finally:
        for p in running:
            stop(p)
        shutil.rmtree(root, ignore_errors=True)
    rates = {label: done / secs if secs else 0.0 for label, (done, secs, _) in totals.items()}
    emit("negotiations_per_s_audit_off_c64", rates["off"], "negotiations/s")
    # The target: the audit trail keeps at least 90% of the rate without it.
    emit("negotiations_per_s_audit_on_c64", rates["on"], "negotiations/s", limit=rates["off"])
    emit("negotiation_errors_audit", sum(e for _, _, e in totals.values()), "count")
    if pulled != records:
        raise RuntimeError(f"pulled {pulled} of {records} records")
    emit("audit_entries_per_pull_records", pulled, "records")
    # Entries the provider wrote for a negotiation, a transfer and the whole pull.
    emit("audit_entries_per_pull", added, "entries")
