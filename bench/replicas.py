"""Negotiations per second with the provider's state in SQLite, in PostgreSQL (one replica),
and in PostgreSQL shared by two replicas behind HAProxy (TCP mode) — the same run, the same
consumer set-up (SQLite), the same driver as ``bench.negotiation`` (``POST
/api/negotiations?wait=30`` on the consumer's management API).

The three set-ups run side by side and the driver alternates timed phases at c=64 between
them (bench/ab.py: ABC, CBA, ...), so that a burst of other work on the box and the growth of
the stored negotiations fall on all three alike; each rate is completed negotiations over the
time of its phases, and each ratio is also given as the median of the rounds' ratios.

Per set-up: negotiations/s at c=64, p50 at c=1, the CPU per negotiation of each process
(provider replicas, consumer, HAProxy, and the PostgreSQL server's processes as ``postgres``:
its background processes and the backends of the set-up's own database) and their total, so
the gain on a larger machine can be projected; the host's cores left idle meanwhile (a set-up
that leaves some is paced by latencies, not by CPU); and, on PostgreSQL, the statements the
server ran per negotiation (a count the box's load cannot blur). The PostgreSQL server and HAProxy
are Debian's packages, started as the tests start them (tests/e2e/postgres.py,
tests/e2e/haproxy.py).

Then one and two PostgreSQL replicas again, each replica held to CAP_CORES of CPU in a cgroup
of its own (bench/cpu_cap.py), as a container's CPU limit holds a replica: the comparison where
a replica, not the box, is what one replica runs out of. On a box whose few cores every process
of the run shares, the uncapped comparison only says what a second replica costs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import aiohttp
from tests.e2e.haproxy import balancer
from tests.e2e.postgres import Postgres, log_statements, new_database, running_postgres
from tests.harness import Participant, create_space, free_port, start, stop
from tests.stores import set_port, use_postgres

from bench import LoadResult, cpu_seconds, emit, log, own_metrics
from bench.ab import Variant, compare, phase, round_ratio
from bench.cpu_cap import capped

KINDS = ("sqlite", "postgres", "postgres2")
ROUNDS = 4  # one phase of each set-up per round, in ABC CBA order
# Negotiations run one after the other with every statement logged, to count the statements
# the provider's replicas send per negotiation (a figure the box's load cannot blur).
STATEMENT_SAMPLE = 20
# Each replica's CPU in the capped comparison: a quarter of the host's cores (0.5 on two),
# below what one replica takes unconstrained here (about 0.75 cores at c=64), so that the
# replica bounds the one-replica set-up, as it does where a deployment needs a second; two
# so capped leave the consumer, the database server and the driver the rest of the box.
CAP_CORES = (os.cpu_count() or 1) / 4


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process on the host."""
    procs: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            procs[int(entry.name)] = (int(stat[1]), cmdline)
    return procs


def _haproxy_pid(root: Path) -> int | None:
    """The HAProxy balancing this set-up (found by its configuration file)."""
    cfg = str(root / "haproxy.cfg")
    return next((pid for pid, (_, cmd) in _processes().items()
                 if "haproxy" in cmd and cfg in cmd), None)


def _server_cpu_s(port: int, database: str, others: Collection[str]) -> float:
    """CPU seconds of this PostgreSQL server's processes working for ``database``: its
    postmaster (found by port), its background processes and the backends of ``database``,
    not those of the ``others`` (idle set-ups); processes that end in between are simply not
    counted."""
    procs = _processes()
    roots = {pid for pid, (_, cmd) in procs.items() if "postgres" in cmd and f"-p {port}" in cmd}
    total = 0.0
    for pid, (parent, cmd) in procs.items():
        if (pid in roots or parent in roots) and (
                database in cmd or not any(other in cmd for other in others)):
            try:
                total += cpu_seconds(pid)
            except OSError:
                continue
    return total


def _database(folder: Path) -> str:
    """The database a participant folder's ``keys/db.dsn`` names."""
    return (folder / "keys" / "db.dsn").read_text().strip().rsplit("/", 1)[1]


@contextmanager
def _setup(kind: str, root: Path, server: Postgres) -> Iterator[Variant]:
    """A started set-up; ``kind`` is sqlite, postgres or postgres2."""
    provider, consumer = create_space(root)
    replicas = [provider]
    with ExitStack() as stack:
        if kind != "sqlite":
            use_postgres(provider.dir, asyncio.run(new_database(server)))
        if kind == "postgres2":
            second = Participant("provider-b", root / "provider-b", provider.url)
            shutil.copytree(provider.dir, second.dir)
            ports = [free_port(), free_port()]
            set_port(provider.dir, "server", ports[0])
            set_port(second.dir, "server", ports[1])
            set_port(second.dir, "management", free_port())
            stack.enter_context(balancer(int(provider.url.rsplit(":", 1)[1]), ports, root))
            replicas.append(second)
        own_metrics(*(p.dir for p in [*replicas, consumer]))
        started: list[Participant] = []
        try:
            for p in [*replicas, consumer]:
                start(p)
                started.append(p)
            more = {f"provider{i + 2}": p.process.pid for i, p in enumerate(replicas[1:])
                    if p.process is not None}
            balancer_pid = _haproxy_pid(root)
            if balancer_pid is not None:
                more["haproxy"] = balancer_pid
            yield Variant(provider, consumer, more=more)
        finally:
            for p in reversed(started):
                stop(p)


async def _statements(server: Postgres, v: Variant, database: str) -> float:
    """Statements the PostgreSQL server ran on ``database`` per negotiation, over
    STATEMENT_SAMPLE of them one after the other (``log_statement = all`` meanwhile; each
    ``statement:`` or ``execute`` line of that database counts)."""
    assert server.log is not None
    await log_statements(server, True)
    try:
        await asyncio.sleep(0.5)  # every backend has read the new setting
        start = server.log.stat().st_size
        async with aiohttp.ClientSession() as session:
            await phase(session, v, 60.0, concurrency=1, count=STATEMENT_SAMPLE)
        await asyncio.sleep(0.5)  # the last steps' outbox rows are deleted
    finally:
        await log_statements(server, False)
    with server.log.open("rb") as f:
        f.seek(start)
        logged = f.read().decode(errors="replace")
    pattern = rf"db={re.escape(database)} .*LOG:  (?:statement|execute [^:]*):"
    return len(re.findall(pattern, logged)) / STATEMENT_SAMPLE


async def _measure(setups: dict[str, Variant], *, duration_s: float, warmup_s: float
                   ) -> dict[str, LoadResult]:
    """A phase at c=1 of each set-up, then the rounds at c=64 (``compare``)."""
    single = {}
    connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        for kind, v in setups.items():
            log(f"replicas {kind}: c=1 for {duration_s:g} s")
            await phase(session, v, warmup_s, concurrency=1)
            single[kind], _ = await phase(session, v, duration_s, concurrency=1)
    await compare(setups, rounds=ROUNDS, duration_s=duration_s, warmup_s=warmup_s,
                  label="replicas")
    return single


def _emit(kind: str, v: Variant, c1: LoadResult, statements: float | None) -> float:
    if statements is not None:
        emit(f"replicas_{kind}_statements_per_negotiation", statements, "statements")
    rate = v.rate()
    emit(f"replicas_{kind}_negotiations_per_s_c64", rate, "negotiations/s")
    emit(f"replicas_{kind}_negotiation_p50_ms_c1", c1.p(50), "ms")
    emit(f"replicas_{kind}_errors", v.errors + c1.errors, "count")
    processes = list(v.cpu_us[0])
    for name in processes:
        emit(f"replicas_{kind}_cpu_us_{name}_c64", v.median_cpu_us(name), "us/negotiation")
    total = v.median_cpu_us()
    emit(f"replicas_{kind}_cpu_us_total_c64", total, "us/negotiation")
    emit(f"replicas_{kind}_cores_busy_c64", total * rate / 1e6, "cores",
         limit=os.cpu_count())
    # Cores no process used: a set-up that leaves some idle is paced by its latencies, not by
    # the CPU it needs (the CPU figures above are what a larger box would project from).
    emit(f"replicas_{kind}_host_idle_cores_c64", v.median_idle_cores(), "cores",
         limit=os.cpu_count())
    # A projection, not a measure: the rate at which the busiest replica's one event loop
    # would fill its core, were every process given cores of its own (the PostgreSQL server
    # runs a process per connection, the consumer is not the provider's to scale).
    busiest = max(v.median_cpu_us(name) for name in processes if name.startswith("provider"))
    emit(f"replicas_{kind}_provider_capacity_projected", 1e6 / busiest, "negotiations/s")
    return rate


def _replica_pids(kind: str, v: Variant) -> dict[str, int]:
    """The provider replicas' pids of a set-up, named for their cgroups."""
    assert v.provider.process is not None
    more = {name: pid for name, pid in v.more.items() if name.startswith("provider")}
    return {f"{kind}-provider": v.provider.process.pid,
            **{f"{kind}-{name}": pid for name, pid in more.items()}}


def _capped(setups: dict[str, Variant], *, duration_s: float, warmup_s: float) -> None:
    """One and two PostgreSQL replicas again, each replica held to CAP_CORES (its own
    cgroup), alternated as before; their lines and the two-over-one target."""
    pairs = {kind: replace(setups[kind], results=[], cpu_us=[])
             for kind in ("postgres", "postgres2")}
    pids = {name: pid for kind, v in pairs.items() for name, pid in _replica_pids(kind, v).items()}
    with capped(pids, CAP_CORES):
        asyncio.run(compare(pairs, rounds=ROUNDS, duration_s=duration_s, warmup_s=warmup_s,
                            label=f"replicas capped at {CAP_CORES:g} cores each"))
    emit("replicas_capped_cores_per_replica", CAP_CORES, "cores", limit=os.cpu_count())
    for kind, v in pairs.items():
        rate = v.rate()
        emit(f"replicas_capped_{kind}_negotiations_per_s_c64", rate, "negotiations/s")
        emit(f"replicas_capped_{kind}_errors", v.errors, "count")
        for name in v.cpu_us[0]:
            if name.startswith("provider"):
                # The cap held: each replica's cores busy stay within it.
                emit(f"replicas_capped_{kind}_{name}_cores_c64",
                     v.median_cpu_us(name) * rate / 1e6, "cores", limit=CAP_CORES)
        emit(f"replicas_capped_{kind}_cpu_us_total_c64", v.median_cpu_us(), "us/negotiation")
        emit(f"replicas_capped_{kind}_host_idle_cores_c64", v.median_idle_cores(), "cores",
             limit=os.cpu_count())
    one, two = pairs["postgres"], pairs["postgres2"]
    emit("replicas_capped_postgres2_vs_postgres_c64", two.rate(), "negotiations/s",
         limit=one.rate())
    emit("replicas_capped_postgres2_vs_postgres_ratio_median_c64", round_ratio(two, one),
         "ratio")


def run(*, quick: bool) -> None:
    duration_s = 2.0 if quick else 5.0  # per phase
    warmup_s = 0.5 if quick else 1.0
    root = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    try:
        with running_postgres() as server, ExitStack() as stack:
            setups = {kind: stack.enter_context(_setup(kind, root / kind, server))
                      for kind in KINDS}
            databases = {kind: _database(v.provider.dir) for kind, v in setups.items()
                         if kind != "sqlite"}
            for kind, database in databases.items():
                others = [d for d in databases.values() if d != database]
                setups[kind].server_cpu = partial(_server_cpu_s, server.port, database, others)
            single = asyncio.run(_measure(setups, duration_s=duration_s, warmup_s=warmup_s))
            statements = {kind: asyncio.run(_statements(server, setups[kind], database))
                          for kind, database in databases.items()}
            rates = {kind: _emit(kind, v, single[kind], statements.get(kind))
                     for kind, v in setups.items()}
            # Targets (issue "past one machine"): one replica >= 70% of SQLite; two not
            # slower.
            for a, b in (("postgres", "sqlite"), ("postgres2", "postgres")):
                emit(f"replicas_{a}_vs_{b}_c64", rates[a], "negotiations/s", limit=rates[b])
                emit(f"replicas_{a}_vs_{b}_ratio_median_c64",
                     round_ratio(setups[a], setups[b]), "ratio")
            _capped(setups, duration_s=duration_s, warmup_s=warmup_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
