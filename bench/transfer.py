"""Pulling a 1 GB JSON-lines dataset over HTTPS between two connector daemons.

A provider and a consumer are created and started as ``make demo`` does
(``tests.harness.create_space``, ``start``); before the start, a ~1 GB JSON-lines file
(100 MB with ``--quick``) of ~100-byte records is written into the provider's
``data/big.jsonl`` and declared as dataset ``big`` under ``open-use``. The bench process
drives the consumer's management API (plain HTTP on port+1, bearer token): negotiate, start
a transfer, warm the provider's summary (its first computation reads the whole file), then
time ``POST /api/transfers/{id}/pull``: the consumer daemon pulls the records from the
provider's data plane over HTTPS into a file, checks count and SHA-256 against the
provider's summary and completes the transfer. Meanwhile a thread samples both daemons'
VmRSS every 50 ms.

The limit, measured in the same run on the same file before the daemons start: a minimal
aiohttp HTTPS server in its own process (``python -m bench.transfer CERT KEY FILE``)
streaming the file from disk in 1 MiB chunks, and an aiohttp client in the bench process
reading with ``iter_any`` and writing what arrives to a file, as the consumer daemon does.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import CpuMeter, emit, log, own_metrics
from bench.loopback import READY_TIMEOUT_S, RawServer

MB = 1_000_000
SIZE_FULL = 1_000 * MB
SIZE_QUICK = 100 * MB
MIN_FREE_BYTES = 5_000 * MB  # source + one copy at a time, with room to spare
RAW_CHUNK = 1024 * 1024  # the raw server's reads and writes, as the data plane's CHUNK
BLOCK_BYTES = 64 * 1024
SAMPLE_S = 0.05
TMP = "/tmp"
PULL_TIMEOUT_S = 600.0  # a 1 GB pull at even 5 MB/s ends well within it
PLACEHOLDER = b"BBBBBBBB"  # 8 digits: the block counter, written into every record


def write_dataset(path: Path, size: int) -> tuple[int, int]:
    """~``size`` bytes of JSON lines: one ~64 KiB block of varied records, repeated with
    the block number in every record. Returns (records, bytes); the file is fsynced."""
    lines: list[bytes] = []
    total = 0
    i = 0
    while total < BLOCK_BYTES:
        line = (b'{"block":%s,"i":%d,"station":"s-%02d","temp":%d.%d,"ok":%s,"payload":"%s"}\n'
                % (PLACEHOLDER, i, i % 97, -20 + i % 55, i % 10,
                   b"true" if i % 3 else b"false", b"abcdefghij"[i % 10:] * (1 + i % 4)))
        lines.append(line)
        total += len(line)
        i += 1
    block = b"".join(lines)
    blocks = -(-size // len(block))
    with path.open("wb") as f:
        for n in range(blocks):
            f.write(block.replace(PLACEHOLDER, b"%08d" % n))
        f.flush()
        os.fsync(f.fileno())  # no writeback of it during the measurements
    return blocks * len(lines), blocks * len(block)


def declare_dataset(provider_dir: Path) -> None:
    (provider_dir / "datasets" / "big.toml").write_text(
        'id = "big"\ntitle = "Big"\ndescription = "JSON lines for the transfer benchmark"\n'
        'keywords = ["bench"]\npolicies = ["open-use"]\n'
        '[source]\ntype = "jsonl"\npath = "data/big.jsonl"\n')


# -- the limit: a minimal aiohttp HTTPS file streamer ---------------------------------------

class StreamServer(RawServer):
    """``bench.loopback.RawServer``'s certificate and lifecycle, serving GET /stream of one
    file instead of POST /echo."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def start(self) -> None:
        from connector.keys import generate_tls

        generate_tls(self.cert, self.key, ["127.0.0.1"])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.transfer", str(self.cert), str(self.key),
             str(self.path)], stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith(b"ready "):
                self.url = f"https://127.0.0.1:{int(line.split()[1])}/stream"
                return
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the raw HTTPS stream server did not start")


@dataclass
class RawRun:
    variant: str
    bytes: int
    seconds: float
    cpu: CpuMeter

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds


async def _raw_stream(server: StreamServer, sink: Path | None, digest: bool) -> tuple[int, float]:
    import hashlib

    ctx = ssl.create_default_context(cafile=str(server.cert))
    timeout = aiohttp.ClientTimeout(total=PULL_TIMEOUT_S, sock_read=60)
    h = hashlib.sha256() if digest else None
    received = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=timeout) as session:
        t0 = time.perf_counter()
        async with session.get(server.url) as resp:
            resp.raise_for_status()
            if sink is None:
                async for chunk in resp.content.iter_any():
                    received += len(chunk)
            else:
                with sink.open("wb") as f:
                    async for chunk in resp.content.iter_any():
                        f.write(chunk)
                        if h is not None:
                            h.update(chunk)
                        received += len(chunk)
        return received, time.perf_counter() - t0


def measure_raw(path: Path, sink: Path, reps: int) -> tuple[list[RawRun], float]:
    """Every variant ``reps`` times, interleaved; returns the runs and the server's RSS."""
    from bench.negotiation import rss_mib

    variants = {"discard": (None, False), "file": (sink, False), "file_sha256": (sink, True)}
    server = StreamServer(path)
    runs: list[RawRun] = []
    try:
        server.start()
        assert server.process is not None
        pids = {"server": server.process.pid, "client": os.getpid()}
        for rep in range(reps):
            for variant, (out, digest) in variants.items():
                with CpuMeter(pids) as cpu:
                    n, seconds = asyncio.run(_raw_stream(server, out, digest))
                sink.unlink(missing_ok=True)
                runs.append(RawRun(variant, n, seconds, cpu))
                log(f"raw TLS stream {variant} #{rep + 1}: {n / MB:.0f} MB in {seconds:.2f} s "
                    f"= {n / MB / seconds:.0f} MB/s; CPU s server {cpu.cpu_s['server']:.2f}, "
                    f"client {cpu.cpu_s['client']:.2f}; other processes "
                    f"{cpu.foreign_cores:.2f} cores")
        server_rss = rss_mib(server.process.pid)
    finally:
        server.stop()
    return runs, server_rss


def _serve(cert: str, key: str, path: str) -> None:
    """The child process: serve GET /stream (the file, 1 MiB reads) until terminated."""
    import signal

    from aiohttp import web

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        with open(path, "rb") as f:  # page-cached; a 1 MiB read takes ~0.1 ms
            while chunk := f.read(RAW_CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response

    async def main() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_get("/stream", stream)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print(f"ready {runner.addresses[0][1]}", flush=True)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


# -- the connector: two daemons, the consumer pulls into a file -----------------------------

class RssSampler(threading.Thread):
    """VmRSS of some processes every SAMPLE_S seconds until ``stop``; keeps the peaks."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak_mib = {n: 0.0 for n in pids}
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        from bench.negotiation import rss_mib

        while True:
            for name, pid in self.pids.items():
                self.peak_mib[name] = max(self.peak_mib[name], rss_mib(pid))
            self.samples += 1
            if self._done.wait(SAMPLE_S):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def hwm_mib(pid: int) -> float:
    """VmHWM (the peak resident set over the process's life) from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


@dataclass
class Pull:
    wall_s: float
    result: dict[str, Any]
    cpu: CpuMeter
    peak_mib: dict[str, float]
    samples: int


@dataclass
class TransferRuns:
    summary_cold_s: float = 0.0
    summary_warm_ms: list[float] = field(default_factory=list)
    rss_before: dict[str, float] = field(default_factory=dict)
    pulls: list[Pull] = field(default_factory=list)
    hwm: dict[str, float] = field(default_factory=dict)


class Api:
    """The consumer's management API, from the bench process."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   expect: int = 200) -> dict[str, Any]:
        async with self.session.request(method, self.base + path, json=body,
                                        headers=self.headers) as resp:
            doc = await resp.json(content_type=None)
            if resp.status != expect:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {doc}")
            assert isinstance(doc, dict)
            return doc


async def drive(provider: Any, consumer: Any, out: Path, reps: int,
                expect: tuple[int, int]) -> TransferRuns:
    from bench.negotiation import _pid, rss_mib
    from connector.config import load_settings

    settings = load_settings(consumer.dir)
    pids = {"provider": _pid(provider), "consumer": _pid(consumer)}
    runs = TransferRuns()
    timeout = aiohttp.ClientTimeout(total=PULL_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        api = Api(session, settings.management_url, settings.management_token())
        neg = await api.call("POST", "/api/negotiations?wait=30",
                             {"provider": provider.url, "datasetId": "big"}, expect=201)
        if neg.get("state") != "FINALIZED" or not neg.get("agreementId"):
            raise RuntimeError(f"negotiation ended {neg.get('state')}: {neg}")
        for rep in range(reps):
            tp = await api.call("POST", "/api/transfers?wait=30",
                                {"agreementId": neg["agreementId"]}, expect=201)
            if tp.get("state") != "STARTED":
                raise RuntimeError(f"transfer is {tp.get('state')}, not STARTED: {tp}")
            t0 = time.perf_counter()
            summary = await api.call("GET", f"/api/transfers/{tp['id']}/summary")
            took = time.perf_counter() - t0
            if rep == 0:
                runs.summary_cold_s = took
                log(f"first summary (the provider reads the file once): {took:.2f} s, "
                    f"{summary}")
            else:
                runs.summary_warm_ms.append(took * 1000)
            if rep == 0:
                runs.rss_before = {n: rss_mib(pid) for n, pid in pids.items()}
            sampler = RssSampler(pids)
            sampler.start()
            try:
                with CpuMeter(pids | {"driver": os.getpid()}) as cpu:
                    t0 = time.perf_counter()
                    result = await api.call("POST", f"/api/transfers/{tp['id']}/pull",
                                            {"path": str(out)})
                    wall = time.perf_counter() - t0
            finally:
                sampler.stop()
                out.unlink(missing_ok=True)
            if (result.get("records"), result.get("bytes")) != expect or \
                    result.get("sha256") != summary.get("sha256"):
                raise RuntimeError(f"pull gave {result}, expected {expect} and {summary}")
            runs.pulls.append(Pull(wall, result, cpu, sampler.peak_mib, sampler.samples))
            log(f"pull #{rep + 1}: {result['bytes'] / MB:.0f} MB in {wall:.2f} s "
                f"(daemon says {result['seconds']} s) = {result['bytes'] / MB / wall:.0f} MB/s;"
                f" CPU s " + ", ".join(f"{n} {v:.2f}" for n, v in cpu.cpu_s.items())
                + "; peak RSS MiB " + ", ".join(f"{n} {v:.1f}" for n, v in
                                                 sampler.peak_mib.items())
                + f"; other processes {cpu.foreign_cores:.2f} cores")
        runs.hwm = {n: hwm_mib(pid) for n, pid in pids.items()}
    return runs


def run(*, quick: bool) -> None:
    from tests.harness import Participant, create_space, start, stop

    size = SIZE_QUICK if quick else SIZE_FULL
    reps = 1 if quick else 3
    free = shutil.disk_usage(TMP).free
    if free < MIN_FREE_BYTES:
        raise RuntimeError(f"skipped: {free / MB:.0f} MB free under {TMP}, "
                           f"the transfer benchmark needs {MIN_FREE_BYTES / MB:.0f} MB")

    root = Path(tempfile.mkdtemp(prefix="bench-transfer-", dir=TMP))
    participants: list[Participant] = []
    try:
        provider, consumer = create_space(root)
        own_metrics(provider.dir, consumer.dir)
        source = provider.dir / "data" / "big.jsonl"
        t0 = time.perf_counter()
        records, nbytes = write_dataset(source, size)
        write_s = time.perf_counter() - t0
        declare_dataset(provider.dir)
        log(f"wrote {records} records, {nbytes / MB:.0f} MB in {write_s:.2f} s (fsynced)")
        out = root / "received.jsonl"

        # 1. The limit, alone on the box: raw aiohttp TLS streaming of the same file.
        raw_runs, raw_rss = measure_raw(source, out, reps)

        # 2. The two daemons; the consumer pulls the file from the provider.
        participants = [provider, consumer]
        for p in participants:
            start(p)
            log(f"{p.name} ready at {p.url}")
        runs = asyncio.run(drive(provider, consumer, out, reps, (records, nbytes)))
    finally:
        for p in participants:
            stop(p)
        shutil.rmtree(root, ignore_errors=True)

    def median_rate(variant: str) -> float:
        return statistics.median(r.mb_per_s for r in raw_runs if r.variant == variant)

    def cpu_s_per_gb(cpu: CpuMeter, name: str, n: int) -> float:
        return cpu.cpu_s[name] / (n / 1000 / MB)

    limit = median_rate("file")
    emit("transfer_dataset_mb", nbytes / MB, "MB")
    emit("transfer_dataset_records", records, "records")
    emit("raw_tls_stream_mb_per_s_discard", median_rate("discard"), "MB/s")
    emit("raw_tls_stream_mb_per_s_file", limit, "MB/s")
    emit("raw_tls_stream_mb_per_s_file_sha256", median_rate("file_sha256"), "MB/s", limit=limit)
    file_runs = [r for r in raw_runs if r.variant == "file"]
    for name in ("server", "client"):
        emit(f"raw_tls_stream_cpu_s_per_gb_{name}",
             statistics.median(cpu_s_per_gb(r.cpu, name, r.bytes) for r in file_runs), "s/GB")
    emit("raw_tls_stream_server_rss_mib", raw_rss, "MiB")

    pulls = sorted(runs.pulls, key=lambda p: p.wall_s)
    mid = pulls[len(pulls) // 2]  # the median pull by wall time
    rate = nbytes / MB / mid.wall_s
    emit("transfer_mb_per_s", rate, "MB/s", limit=limit)
    emit("transfer_records_per_s", records / mid.wall_s, "records/s",
         limit=limit * MB / nbytes * records)
    emit("transfer_wall_s", mid.wall_s, "s")
    emit("transfer_daemon_reported_s", float(mid.result["seconds"]), "s")
    if len(pulls) > 1:
        emit("transfer_mb_per_s_min", nbytes / MB / pulls[-1].wall_s, "MB/s", limit=limit)
        emit("transfer_mb_per_s_max", nbytes / MB / pulls[0].wall_s, "MB/s", limit=limit)
    emit("transfer_summary_first_s", runs.summary_cold_s, "s")
    if runs.summary_warm_ms:
        emit("transfer_summary_cached_ms", statistics.median(runs.summary_warm_ms), "ms")
    for name in ("provider", "consumer", "driver"):
        emit(f"transfer_cpu_s_per_gb_{name}", cpu_s_per_gb(mid.cpu, name, nbytes), "s/GB")
    for name in ("provider", "consumer"):
        peak = max(p.peak_mib[name] for p in runs.pulls)
        emit(f"transfer_rss_mib_before_{name}", runs.rss_before[name], "MiB")
        emit(f"transfer_rss_mib_peak_{name}", peak, "MiB")
        emit(f"transfer_rss_growth_mib_{name}", peak - runs.rss_before[name], "MiB")
        emit(f"transfer_vmhwm_mib_{name}", runs.hwm[name], "MiB")
    emit("transfer_rss_samples", sum(p.samples for p in runs.pulls), "count")
    foreign = [r.cpu.foreign_cores for r in raw_runs] + [p.cpu.foreign_cores for p in pulls]
    emit("host_other_processes_cores_busy_max", max(foreign), "cores", limit=os.cpu_count())


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], sys.argv[3])
