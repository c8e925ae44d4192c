"""``python -m bench labs [--labs N]``: one national aggregator collects one day of results
from N laboratory daemons (100 by default), the examples/lab-results space at scale.

Every participant is a real ``connector run`` process over HTTPS on 127.0.0.1, in DCP mode,
admitted by the ministry's authority (``connector authority run``), built by
``examples/lab-results/sidep.py`` exactly as the example builds its three laboratories. The
bench process drives the aggregator's management API as the aggregator's operator would
script the day's collection: per laboratory, ``POST /api/negotiations?wait=60`` (the
catalogue, then the DSP negotiation, each request verified through the laboratory's DID
document, Credential Service and the ministry's status list), then ``POST /api/transfers``
with ``push`` (the laboratory pushes its batch, the aggregator's daemon checks count and
SHA-256), polling ``GET /api/transfers/{id}`` until COMPLETED, ``GET
/api/transfers/{id}/push`` for the verified copy; then the batch goes into the national table
(``NationalTable``), keyed by result id. ``concurrency`` laboratories are in flight at once.

The aggregator's CPU (``/proc/<pid>/stat``) and RSS (``VmRSS``) are read around the
collection, the laboratories' RSS after it; bench/README.md "labs" gives the lines and the
projection to 5,000 laboratories.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench import CpuMeter, QuietPorts, cpu_seconds, emit, log, percentile
from bench.negotiation import rss_mib
from bench.transfer import Api, hwm_mib
from connector.config import load_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
sys.path.insert(0, str(EXAMPLES / "lab-results"))

from sidep import DATASET, NationalTable, Space, build  # noqa: E402
from space import Daemon  # noqa: E402

# Results per laboratory and day: SI-DEP took up to ~2 million tests a day from ~5,000
# laboratory sites at its peaks, ~400 per site.
RECORDS = 400
TARGET_LABS = 5_000
# The projection: one aggregator replica (one asyncio process, one core) must collect the
# whole day within this window, using at most this share of its core.
WINDOW_S = 900.0
CORE_SHARE = 0.7
# The aggregator keeps each laboratory's TLS connections open after its collection: its
# clients for 30 s (DID documents, Credential Services) and 60 s (DSP), aiohttp's server for
# 75 s (the laboratory's pushes and DSP calls). RSS is read again once they are all closed.
KEEPALIVE_HELD_S = 75.0
SETTLE_S = 90.0
START_BATCH = 4  # laboratory daemons started at once
READY_TIMEOUT_S = 180.0
POLL_S = 0.25  # GET /api/transfers/{id} until the push completed
CALL_TIMEOUT_S = 120.0


@dataclass
class Collected:
    """One laboratory's day, as the driver saw it."""

    lab: str
    ok: bool
    seconds: float = 0.0
    records: int = 0
    error: str = ""


@dataclass
class Collection:
    results: list[Collected] = field(default_factory=list)
    wall_s: float = 0.0
    added: int = 0
    duplicates: int = 0


def _pid(daemon: Daemon) -> int:
    assert daemon.process is not None, f"{daemon.name} is not running"
    return daemon.process.pid


def start_all(space: Space) -> dict[str, float]:
    """The ministry and the aggregator, then the laboratories START_BATCH at a time (each
    batch waits for every ready line); returns each laboratory's start-up in ms (its batch's
    wall time: they start together)."""
    for daemon in space.daemons():  # each starts among up to 100 others on 2 shared cores
        daemon.ready_timeout_s = READY_TIMEOUT_S
    space.ministry.start()
    space.aggregator.start()
    startup: dict[str, float] = {}
    with ThreadPoolExecutor(START_BATCH) as pool:
        for first in range(0, len(space.labs), START_BATCH):
            batch = space.labs[first:first + START_BATCH]
            t0 = time.perf_counter()
            list(pool.map(Daemon.start, batch))  # raises if one did not start
            took = (time.perf_counter() - t0) * 1000
            startup |= {lab.name: took for lab in batch}
            log(f"laboratories {first + 1}..{first + len(batch)} ready in {took:.0f} ms")
    return startup


def stop_all(space: Space) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(Daemon.stop, [*space.labs, *space.others]))
    space.aggregator.stop()
    space.ministry.stop()


async def collect_one(api: Api, lab: Daemon, batch: Path) -> Collected:
    """Negotiate with one laboratory, have it push its batch, return the verified copy."""
    t0 = time.perf_counter()
    negotiation = await api.call("POST", "/api/negotiations?wait=60",
                                 {"provider": lab.url, "datasetId": DATASET}, expect=201)
    if negotiation.get("state") != "FINALIZED":
        return Collected(lab.name, False, error=f"negotiation {negotiation.get('state')}: "
                         f"{negotiation.get('reason')}")
    record = await api.call("POST", "/api/transfers?wait=60",
                            {"agreementId": negotiation["agreementId"], "push": True,
                             "sink": str(batch)}, expect=201)
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while record["state"] not in ("COMPLETED", "TERMINATED") and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        record = await api.call("GET", f"/api/transfers/{record['id']}")
    if record["state"] != "COMPLETED":
        return Collected(lab.name, False, error=f"transfer {record['state']}: "
                         f"{record.get('reason') or 'timed out'}")
    pushed = await api.call("GET", f"/api/transfers/{record['id']}/push")
    sent = hashlib.sha256((lab.dir / "data" / f"{DATASET}.jsonl").read_bytes()).hexdigest()
    if pushed["sha256"] != sent or batch.read_bytes() != (lab.dir / "data" /
                                                          f"{DATASET}.jsonl").read_bytes():
        return Collected(lab.name, False, error="the verified copy is not the laboratory's day")
    return Collected(lab.name, True, time.perf_counter() - t0, int(pushed["records"]))


async def collect(aggregator: Daemon, labs: list[Daemon], out: Path, table: NationalTable,
                  concurrency: int) -> Collection:
    """Collect the day of ``labs``, ``concurrency`` at a time; each verified batch is taken
    into the national table as soon as it arrives."""
    settings = load_settings(aggregator.dir)
    done = Collection()
    queue = list(labs)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        api = Api(session, settings.management_url, settings.management_token())

        async def worker() -> None:
            while queue:
                lab = queue.pop(0)
                batch = out / f"{lab.name}.jsonl"
                try:
                    got = await collect_one(api, lab, batch)
                except Exception as exc:  # counted as an error, the others go on
                    got = Collected(lab.name, False, error=f"{type(exc).__name__}: {exc}")
                if got.ok:
                    ingested = table.ingest(batch)
                    done.added += ingested.added
                    done.duplicates += ingested.duplicates
                    if ingested.records != got.records:
                        got = Collected(lab.name, False, error="batch file and push differ")
                done.results.append(got)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        done.wall_s = time.perf_counter() - t0
    return done


@dataclass
class Phase:
    """A part of the day's collection, with the CPU and the aggregator's RSS after it."""

    labs: int
    done: Collection
    cpu: CpuMeter
    rss_after: float


def collect_day(space: Space, out: Path, table: NationalTable, concurrency: int
                ) -> tuple[Phase, Phase]:
    """The day in two phases: the first fifth of the laboratories (the aggregator's first
    contacts: caches filled, code paths warmed), then the rest, whose CPU and RSS growth per
    laboratory are the marginal costs the projection uses."""
    aggregator = space.aggregator
    pids = {"aggregator": _pid(aggregator), "driver": os.getpid()} | {
        lab.name: _pid(lab) for lab in space.labs}
    split = max(1, len(space.labs) // 5)
    phases = []
    for part in (space.labs[:split], space.labs[split:]):
        with CpuMeter(pids) as cpu:
            done = asyncio.run(collect(aggregator, part, out, table, concurrency))
        phases.append(Phase(len(part), done, cpu, rss_mib(_pid(aggregator))))
        log(f"  {len(part)} laboratories in {done.wall_s:.1f} s, aggregator CPU "
            f"{cpu.cpu_s['aggregator']:.2f} s, RSS {phases[-1].rss_after:.1f} MiB; other "
            f"processes {cpu.foreign_cores:.2f} cores")
    return phases[0], phases[1]


def sockets(pid: int) -> int:
    """The sockets a process holds open (/proc/<pid>/fd)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:  # closed meanwhile
            continue
    return count


def idle_cpu(pid: int, seconds: float) -> float:
    """CPU seconds per second a process spends while nothing is asked of it."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / seconds


def run(*, quick: bool, labs: int | None = None, concurrency: int = 16) -> None:
    n = labs if labs is not None else (10 if quick else 100)
    if n < 2:
        raise ValueError("--labs: at least 2 (the day is collected in two phases)")
    root = Path(tempfile.mkdtemp(prefix="bench-labs-"))
    space: Space | None = None
    try:
        t0 = time.perf_counter()
        space = build(root, n, RECORDS, port_pair=QuietPorts().pair)
        log(f"{n} laboratory folders (+ ministry, aggregator) in {time.perf_counter() - t0:.1f} s")
        startup = start_all(space)
        aggregator = _pid(space.aggregator)
        rss_before = rss_mib(aggregator)
        sockets_before = sockets(aggregator)
        idle = idle_cpu(aggregator, 2.0 if quick else 5.0)
        table = NationalTable(root / "national.db")
        log(f"collecting one day from {n} laboratories, {concurrency} at a time")
        first, rest = collect_day(space, root, table, concurrency)
        held = sockets(aggregator)
        log(f"waiting {SETTLE_S:g} s for the keep-alive connections to close")
        time.sleep(SETTLE_S)
        settled = Settled(sockets_before, held, sockets(aggregator), rss_mib(aggregator))
        hwm = hwm_mib(aggregator)
        lab_rss = sorted(rss_mib(_pid(lab)) for lab in space.labs)
        stored = table.count()
        table.close()
    finally:
        if space is not None:
            stop_all(space)
        shutil.rmtree(root, ignore_errors=True)
    report(Day(n, concurrency, first, rest, stored, rss_before, hwm, lab_rss, idle,
               list(startup.values()), settled))


@dataclass
class Settled:
    """The aggregator's sockets before and right after the collection, and its sockets and
    RSS once the keep-alive connections closed."""

    sockets_before: int
    sockets_held: int
    sockets_after: int
    rss_mib: float


@dataclass
class Day:
    """Everything measured, for the report."""

    labs: int
    concurrency: int
    first: Phase
    rest: Phase
    stored: int
    rss_before: float
    hwm: float
    lab_rss: list[float]
    idle_cores: float
    startup_ms: list[float]
    settled: Settled

    def cpu(self, name: str) -> float:
        return self.first.cpu.cpu_s[name] + self.rest.cpu.cpu_s[name]


def report(day: Day) -> None:
    n = day.labs
    results = day.first.done.results + day.rest.done.results
    failed = [c for c in results if not c.ok]
    for c in failed[:5]:
        log(f"  {c.lab}: {c.error}")
    wall = day.first.done.wall_s + day.rest.done.wall_s
    duplicates = day.first.done.duplicates + day.rest.done.duplicates
    expected = n * RECORDS
    foreign = max(day.first.cpu.foreign_cores, day.rest.cpu.foreign_cores)
    log(f"{n - len(failed)} of {n} laboratories collected in {wall:.1f} s; national "
        f"table {day.stored} of {expected}")
    agg_cpu = day.cpu("aggregator")
    # Marginal costs: the laboratories after the first fifth.
    marginal_cpu = day.rest.cpu.cpu_s["aggregator"] / day.rest.labs
    marginal_rss = max(0.0, day.rest.rss_after - day.first.rss_after) / day.rest.labs
    labs_cpu = sum(day.cpu(k) for k in day.first.cpu.cpu_s if k.startswith("lab-"))
    latencies = sorted(c.seconds for c in results if c.ok)
    emit("labs_count", n, "laboratories")
    emit("labs_records_per_lab", RECORDS, "records")
    emit("labs_concurrency", day.concurrency, "laboratories in flight")
    emit("labs_collect_errors", len(failed), "count")
    emit("labs_national_records", day.stored, "records", limit=expected)
    emit("labs_duplicates_detected", duplicates, "records")
    emit("labs_collect_day_s", wall, "s")
    emit("labs_collect_per_s", n / wall if wall else 0.0, "laboratories/s")
    emit("labs_collect_one_p50_s", percentile(latencies, 50), "s")
    emit("labs_collect_one_p95_s", percentile(latencies, 95), "s")
    emit("labs_aggregator_cpu_s", agg_cpu, "s")
    emit("labs_aggregator_cpu_ms_per_lab", agg_cpu / n * 1000, "ms/laboratory")
    emit("labs_aggregator_cpu_ms_per_lab_marginal", marginal_cpu * 1000, "ms/laboratory")
    emit("labs_aggregator_idle_cores", day.idle_cores, "cores")
    emit("labs_aggregator_rss_mib_before", day.rss_before, "MiB")
    emit("labs_aggregator_rss_mib_after", day.rest.rss_after, "MiB")
    emit("labs_aggregator_vmhwm_mib", day.hwm, "MiB")
    emit("labs_aggregator_rss_kib_per_lab_marginal", marginal_rss * 1024, "KiB/laboratory")
    emit("labs_aggregator_sockets_before", day.settled.sockets_before, "sockets")
    emit("labs_aggregator_sockets_held", day.settled.sockets_held, "sockets")
    emit("labs_aggregator_sockets_settled", day.settled.sockets_after, "sockets")
    emit("labs_aggregator_rss_mib_settled", day.settled.rss_mib, "MiB")
    emit("labs_lab_cpu_ms_each", labs_cpu / n * 1000, "ms/laboratory")
    emit("labs_lab_rss_mib_median", statistics.median(day.lab_rss), "MiB")
    emit("labs_lab_rss_mib_max", day.lab_rss[-1], "MiB")
    emit("labs_lab_rss_mib_total", sum(day.lab_rss), "MiB")
    emit("labs_lab_startup_ms_batch_median", statistics.median(day.startup_ms), "ms")
    emit("labs_driver_cpu_ms_per_lab", day.cpu("driver") / n * 1000, "ms/laboratory")
    # The projection (bench/README.md "labs"): CPU, then memory, of one aggregator replica.
    budget = WINDOW_S * CORE_SHARE
    per_replica = math.floor(budget / marginal_cpu) if marginal_cpu > 0 else 0
    emit("labs_projection_labs_per_replica", per_replica, "laboratories", limit=TARGET_LABS)
    emit("labs_projection_replicas_for_5000",
         math.ceil(TARGET_LABS / per_replica) if per_replica else 0, "replicas")
    emit("labs_projection_aggregator_cpu_s_5000", marginal_cpu * TARGET_LABS, "s")
    emit("labs_projection_one_core_day_s_5000", marginal_cpu * TARGET_LABS / CORE_SHARE, "s",
         limit=WINDOW_S)
    # Memory: what a laboratory adds is held while its connections live (KEEPALIVE_HELD_S);
    # at the window's pace, that many laboratories at once.
    live = min(TARGET_LABS, math.ceil(TARGET_LABS / WINDOW_S * KEEPALIVE_HELD_S))
    emit("labs_projection_live_labs_5000", live, "laboratories")
    emit("labs_projection_aggregator_rss_mib_5000", day.rss_before + marginal_rss * live, "MiB")
    emit("labs_projection_aggregator_rss_mib_5000_all_held",
         day.rss_before + marginal_rss * TARGET_LABS, "MiB")
    emit("host_other_processes_cores_busy_max", foreign, "cores", limit=os.cpu_count())
    if failed:
        raise RuntimeError(f"{len(failed)} laboratories not collected; first: {failed[0].error}")
    if day.stored != expected or duplicates:
        raise RuntimeError(f"the national table holds {day.stored} results, not {expected} once")
