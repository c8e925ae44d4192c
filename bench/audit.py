"""What the audit trail costs: negotiations per second with it on and off, in the same run.

Two pairs of connector daemons (provider and consumer, created and started as ``make demo``
does) run side by side: one with the default ``[audit]`` (on), one with ``enabled = false``.
The driver alternates timed phases between them (on, off, off, on, ..., six each) at
concurrency 64 (``bench/ab.py``), so that both see the same load from the rest of the box;
each rate is completed negotiations over the time of its phases, the on/off ratio is also
given as the median of the rounds' ratios, and the CPU each daemon used per negotiation is
reported too (what the rest of the box's load sways least). Then one pull of a large
dataset from the audited provider shows how many audit entries a stream adds (a bounded
number, not one per record).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from tests.harness import Participant

from bench import emit
from bench.ab import Variant, compare, emit_cpu, make_pair, round_ratio, running
from connector.adapters.storage import audit_file
from connector.client import Management
from connector.config import load_settings
from connector.core.audit import verify_chain

ROUNDS = 6  # one phase of each variant per round, in ABBA order
# The pulled dataset: 1 GiB of JSON lines (64 MiB with --quick), written once per run.
PULL_BYTES, QUICK_PULL_BYTES = 1 << 30, 64 << 20


def _entries(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_entries").fetchone()[0])


async def _settled(db: Path, quiet_s: float = 1.0, deadline_s: float = 15.0) -> int:
    """The entry count once it has not changed for ``quiet_s`` (the provider writes the
    stream's last entry after the consumer has read its last byte)."""
    count, since = _entries(db), time.monotonic()
    end = since + deadline_s
    while time.monotonic() < end and time.monotonic() - since < quiet_s:
        await asyncio.sleep(0.1)
        now = _entries(db)
        if now != count:
            count, since = now, time.monotonic()
    return count


def _verify(provider: Participant) -> tuple[int, float]:
    """Verify the provider's trail as ``connector audit verify`` does: (entries, seconds)."""
    settings = load_settings(provider.dir)
    document = json.loads((provider.dir / "did.json").read_text())
    with audit_file.open_tables(settings) as tables:
        t0 = time.perf_counter()
        report = verify_chain(tables.iter_chain(), tables.read_checkpoints(), did=settings.did,
                              document=document)
        elapsed = time.perf_counter() - t0
    if not report.ok:
        raise RuntimeError(f"the provider's trail does not verify: {report.problem}")
    return report.entries, elapsed


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


async def _pull(provider: Participant, consumer: Participant, out: Path) -> tuple[int, int]:
    """Negotiate and start a transfer of the big dataset, then pull it whole; returns the
    records pulled and the audit entries the provider wrote during the pull alone."""
    api = Management(load_settings(consumer.dir))
    db = load_settings(provider.dir).database
    try:
        record = await api.call("POST", "/api/negotiations?wait=30",
                                {"provider": provider.url, "datasetId": "big"})
        transfer = await api.call("POST", "/api/transfers?wait=30",
                                  {"agreementId": record["agreementId"]})
        before = _entries(db)
        records, _ = await api.download(f"/api/transfers/{transfer['id']}/data", out)
        return int(records), await _settled(db) - before
    finally:
        await api.close()


def run(*, quick: bool) -> None:
    duration_s = 1.0 if quick else 5.0  # per phase
    warmup_s = 0.5 if quick else 1.0
    root = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        on = Variant(*make_pair(root / "on", ""))
        off = Variant(*make_pair(root / "off", "[audit]\nenabled = false"))
        records = _big_dataset(on.provider, QUICK_PULL_BYTES if quick else PULL_BYTES)
        with running(on, off):
            asyncio.run(compare({"on": on, "off": off}, rounds=ROUNDS, duration_s=duration_s,
                                warmup_s=warmup_s, label="audit"))
            pulled, added = asyncio.run(_pull(on.provider, on.consumer,
                                              root / "pulled.jsonl"))
            verified, verify_s = _verify(on.provider)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emit("negotiations_per_s_audit_off_c64", off.rate(), "negotiations/s")
    # The target: the audit trail keeps at least 90% of the rate without it.
    emit("negotiations_per_s_audit_on_c64", on.rate(), "negotiations/s", limit=off.rate())
    # The same, round by round (each "on" phase against the "off" phase of its round): the
    # median is less swayed by a burst of other work on a shared box than the sums above.
    emit("negotiations_per_s_audit_ratio_median_c64", round_ratio(on, off), "ratio")
    # What the box's load sways least: CPU (provider + consumer, then each) per negotiation.
    emit("negotiation_cpu_us_audit_off", off.median_cpu_us(), "us/negotiation")
    emit("negotiation_cpu_us_audit_on", on.median_cpu_us(), "us/negotiation",
         limit=off.median_cpu_us())
    emit_cpu("audit", on, off)
    emit("negotiation_errors_audit", on.errors + off.errors, "count")
    if pulled != records:
        raise RuntimeError(f"pulled {pulled} of {records} records")
    emit("audit_pull_records", pulled, "records")
    # The entries the provider wrote while it streamed them all: a bounded number.
    emit("audit_entries_per_pull", added, "entries")
    # `connector audit verify`'s walk (digests, links, checkpoint signatures) of the
    # provider's whole trail, after every phase above.
    emit("audit_verify_entries", verified, "entries")
    emit("audit_verify_entries_per_s", verified / verify_s if verify_s else 0.0, "entries/s")
