"""``make bench``: performance benchmarks of the connector on loopback.

Each benchmark prints one JSON object per line on stdout (see ``bench/README.md``);
progress goes to stderr. Shared here: the output format and a bounded load loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def log(*parts: Any) -> None:
    """Progress for a human: stderr only, so stdout stays one JSON object per line."""
    print("[bench]", *parts, file=sys.stderr, flush=True)


def emit(name: str, value: float, unit: str, limit: float | None = None) -> None:
    line: dict[str, Any] = {"name": name, "value": _round(value), "unit": unit}
    if limit is not None and limit > 0:
        line["limit"] = _round(limit)
        line["ratio"] = round(value / limit, 4)
    print(json.dumps(line), flush=True)


def own_metrics(*folders: Path) -> None:
    """A metrics listener of its own for each participant folder, on a free loopback port,
    as each process of a deployment has. Left to the default port, the first daemon a
    benchmark starts takes it and every later one runs without metrics: variants compared
    in one run would not pay the same costs."""
    from tests.harness import free_port

    for folder in folders:
        with (folder / "connector.toml").open("a") as f:
            f.write(f'\n[metrics]\nlisten = "127.0.0.1:{free_port()}"\n')


def _round(value: float) -> float:
    if isinstance(value, int):
        return value
    return round(value, 3) if abs(value) < 100 else round(value, 1)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


@dataclass
class LoadResult:
    completed: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str | None = None
    idle_cores: float = 0.0  # the host's cores left idle meanwhile, when metered

    @property
    def rate(self) -> float:
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies_ms), q)


async def load(call: Callable[[], Awaitable[bool]], *, concurrency: int, duration_s: float,
               max_count: int) -> LoadResult:
    """Keep ``concurrency`` calls in flight until ``duration_s`` or ``max_count`` calls.

    ``call`` returns True on success; an exception or False counts as an error. No call is
    started after the deadline; the ones in flight are awaited and their time counted, so
    the rate is completed calls over the wall time from first start to last completion.
    """
    result = LoadResult()
    started = 0
    t_start = time.perf_counter()
    deadline = t_start + duration_s

    async def worker() -> None:
        nonlocal started
        while started < max_count and time.perf_counter() < deadline:
            started += 1
            t0 = time.perf_counter()
            try:
                ok = await call()
            except Exception as exc:  # every failure is counted, none lost
                ok = False
                if result.first_error is None:
                    result.first_error = f"{type(exc).__name__}: {exc}"
            result.latencies_ms.append((time.perf_counter() - t0) * 1000)
            result.completed += 1
            if not ok:
                result.errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - t_start
    return result


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (10 ms ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


class CpuMeter:
    """CPU used by some processes over an interval, and by everything else on the host.

    ``foreign_cores`` is the host's busy CPU minus the watched processes', divided by the
    wall time: other work on the box (tests, builds) that competed with the benchmark.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.cpu_s: dict[str, float] = {}
        self.foreign_cores = 0.0
        self.idle_cores = 0.0
        self._t0 = 0.0
        self._host0 = 0.0
        self._cpu0: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._t0 = time.perf_counter()
        self._host0 = host_busy_seconds()
        self._cpu0 = {n: cpu_seconds(pid) for n, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = {n: cpu_seconds(pid) - self._cpu0[n] for n, pid in self.pids.items()}
        wall = time.perf_counter() - self._t0
        host = host_busy_seconds() - self._host0
        self.foreign_cores = max(0.0, host - sum(self.cpu_s.values())) / wall if wall else 0.0
        self.idle_cores = max(0.0, CORES - host / wall) if wall else 0.0


def _ephemeral_high() -> int:
    """The highest port the kernel hands out to outgoing connections (Linux: 60999)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 60999


class QuietPorts:
    """Port pairs (p, p+1) above the kernel's ephemeral range, each handed out once.

    A bench that creates hundreds of folders before their daemons start needs their ports to
    stay free for minutes: below the ephemeral range the test harness draws ports at random
    (tests.harness.free_port_pair) for whatever else runs on the box, and inside it the kernel
    picks the source ports of outgoing connections; above it nobody does."""

    def __init__(self) -> None:
        self.next = _ephemeral_high() + 1

    def pair(self) -> int:
        import socket

        while self.next + 1 <= 65535:
            port, self.next = self.next, self.next + 2
            try:
                with socket.socket() as a, socket.socket() as b:
                    a.bind(("127.0.0.1", port))
                    b.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
        raise RuntimeError("no free port pair left above the ephemeral range")
