"""``python -m bench reusers [--reusers N]``: one public provider, N distinct reusers (1,000 by
default) admitted by the authority, each under the time and count limits of
examples/public-reuse; negotiations/s and pull latency with N distinct consumers, and the
provider's memory with N agreements and 100 uses each.

**The consumers.** N connector daemons of 70 MiB each do not fit on this machine (1,000 ×
70 MiB), so the consumers are **whole connectors embedded several hundred to a process**:
``python -m bench.reusers host LIST`` starts, in one asyncio loop, one ``connector.daemon.Daemon``
per folder of LIST (the composition root that ``connector run`` starts, as interop/ embeds
it). Each consumer is a participant of its own: its own folder made by ``connector init``,
its own port and did:web, its own signing key and TLS certificate, its own membership
credential issued by the authority, its own SQLite state, its own DSP, Credential Service and
management listeners. Nothing is shared but the process. The provider is a real ``connector
run`` process. So the provider sees exactly what 1,000 separate reusers would send: HTTPS from
1,000 DIDs, each token signed by its own key, each DID document resolved over HTTPS and each
presentation fetched from its own Credential Service and verified against the authority's
status list. The consumers' own CPU shares the 2 cores with the provider; the provider's CPU
per operation is the figure that does not depend on that.

**The uses.** Each agreement allows 100 uses (``count lteq 100``; the example allows 2). Two
pulls per reuser are served for real over HTTPS (uses 1 and 100); uses 2 to 99 are counted by a
faster path that goes through the same store code a served pull calls
(``Store.add_use(agreement, 1)``, service/transfers.py), one call per use, from the bench
process on the provider's database while the provider runs. Then a sample of reusers pulls a
101st time and must be refused naming the count constraint: the counters are the provider's
own.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import CpuMeter, LoadResult, QuietPorts, emit, load, log
from bench.negotiation import rss_mib
from bench.transfer import Api, hwm_mib
from connector import authority
from connector.config import load_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from space import Daemon, admit, dcp_identity, provider_folder  # noqa: E402

DATASET = "social-housing"
USES = 100  # per agreement: the bench's policy says count lteq 100
CONCURRENCY = 16
HOST_READY_TIMEOUT_S = 900.0  # a host starts a few hundred embedded connectors
REFUSAL_SAMPLE = 20
MAX_COUNT = 1_000_000  # every load phase is bounded by count as well as by time
PHASE_LIMIT_S = 1_800.0


# --- the host process: many whole connectors in one asyncio loop -------------------------------


# An embedded consumer's own chores, slowed down in the hosts: the readiness probe (4 a second,
# a store query each) and the folder watch (once a second). Nobody asks these consumers for
# their readiness and their folders do not change during the bench; at their own pace, 1,000
# of them kept the two cores busy and the hosts answered the provider's presentation queries
# too late. Nothing the provider is asked or does changes.
HOST_CHORE_INTERVAL_S = 30.0


async def _host(folders: list[Path]) -> None:
    from connector import daemon, logs
    from connector.adapters.http import health
    from connector.daemon import Daemon as Connector
    from connector.signals import until_signalled

    logs.setup(logs.LogSettings(level="WARNING"))
    health.PROBE_INTERVAL_S = daemon.RELOAD_INTERVAL_S = HOST_CHORE_INTERVAL_S
    started: list[Connector] = []
    try:
        for folder in folders:
            connector = Connector(load_settings(folder))
            try:
                await connector.start()
            except BaseException:
                await connector.stop()
                raise
            started.append(connector)
        gc.freeze()  # start-up objects live for ever, as `connector run` does
        await until_signalled(f"ready: {len(started)} consumers")
    finally:  # all at once: each waits for its open connections to close
        await asyncio.gather(*(connector.stop() for connector in started))


def host_main(listing: Path) -> None:
    asyncio.run(_host([Path(line) for line in listing.read_text().split()]))


# --- the space ---------------------------------------------------------------------------------


@dataclass
class Space:
    ministry: Daemon
    provider: Daemon
    consumers: list[Daemon]
    hosts: list[subprocess.Popen[bytes]] = field(default_factory=list)


def build(root: Path, n: int) -> Space:
    """The authority, the provider (the example's folder with 100 uses per agreement) and
    ``n`` consumer folders, every one in DCP mode and admitted."""
    from connector.participant.init import init_folder
    from connector.participant.trust import add_trusted_peer

    ports = QuietPorts()
    ministry = Daemon("authority", root / "authority", f"https://127.0.0.1:{ports.pair()}",
                      command=("authority", "run"), ready_word=b"serving")
    settings = authority.init_authority(ministry.dir, url=ministry.url)
    provider = provider_folder(root, "housing-registry", EXAMPLES / "public-reuse")
    policy = provider.dir / "policies" / "reuse-licence.yaml"
    text = policy.read_text()
    policy.write_text(text.replace("count lteq 2", f"count lteq {USES}")
                      .replace("at most 2 accesses", f"at most {USES} accesses"))
    consumers = []
    for i in range(1, n + 1):
        name = f"reuser-{i}"
        consumer = Daemon(name, root / "reusers" / name, f"https://127.0.0.1:{ports.pair()}")
        init_folder(consumer.dir, name=name, url=consumer.url)
        (consumer.dir / "datasets" / "example.toml").unlink()
        consumers.append(consumer)
    everyone = root / "space-ca.pem"  # the provider fetches from every consumer
    everyone.write_bytes((ministry.dir / authority.TLS_CERT).read_bytes() + b"".join(
        (m.dir / "tls" / "cert.pem").read_bytes() for m in (provider, *consumers)))
    few = root / "provider-ca.pem"  # a consumer talks to the provider and the authority
    few.write_bytes((ministry.dir / authority.TLS_CERT).read_bytes()
                    + (provider.dir / "tls" / "cert.pem").read_bytes())
    dcp_identity(provider, settings.did, [everyone])
    admit(ministry.dir, provider)
    for consumer in consumers:
        dcp_identity(consumer, settings.did, [few])
        with (consumer.dir / "connector.toml").open("a") as f:
            f.write("\n[metrics]\nenabled = false\n")  # one listener per process at most
        admit(ministry.dir, consumer)
        add_trusted_peer(consumer.dir, provider.dir, attributes={}, tls_cert=None)
    return Space(ministry, provider, consumers)


def start_hosts(space: Space, root: Path, hosts: int) -> None:
    """``hosts`` processes, each embedding its share of the consumers; wait for each."""
    import select

    share = -(-len(space.consumers) // hosts)
    for h in range(hosts):
        part = space.consumers[h * share:(h + 1) * share]
        listing = root / f"host-{h}.txt"
        listing.write_text("\n".join(str(c.dir) for c in part) + "\n")
        with (root / f"host-{h}.log").open("wb") as err:
            space.hosts.append(subprocess.Popen(
                [sys.executable, "-m", "bench.reusers", "host", str(listing)],
                stdout=subprocess.PIPE, stderr=err))
    deadline = time.monotonic() + HOST_READY_TIMEOUT_S
    for h, proc in enumerate(space.hosts):
        assert proc.stdout is not None
        line = b""
        while time.monotonic() < deadline and b"ready" not in line:
            if not select.select([proc.stdout], [], [], deadline - time.monotonic())[0]:
                break
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        if b"ready" not in line:
            tail = (root / f"host-{h}.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"consumer host {h} did not start; its log ends:\n{tail}")
        log(f"host {h}: {line.decode().strip()}")


def stop_hosts(space: Space) -> None:
    for proc in space.hosts:
        proc.terminate()
    for proc in space.hosts:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Driver:
    """Calls each consumer's management API (its own port and token)."""

    session: aiohttp.ClientSession
    apis: dict[str, Api]
    provider_url: str
    out: Path
    agreements: dict[str, str] = field(default_factory=dict)
    pull_ms: list[float] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    async def negotiate(self, name: str) -> bool:
        got = await self.apis[name].call("POST", "/api/negotiations?wait=60",
                                         {"provider": self.provider_url, "datasetId": DATASET},
                                         expect=201)
        if got.get("state") != "FINALIZED":
            raise RuntimeError(f"{name}: negotiation {got.get('state')}: {got.get('reason')}")
        self.agreements[name] = got["agreementId"]
        return True

    async def pull(self, name: str) -> bool:
        """One use: start a transfer, pull it into a file (the consumer's daemon verifies
        count and SHA-256 and completes). ``pull_ms`` keeps the time of the pull itself."""
        api = self.apis[name]
        record = await api.call("POST", "/api/transfers?wait=60",
                                {"agreementId": self.agreements[name]}, expect=201)
        if record.get("state") != "STARTED":
            raise RuntimeError(f"{name}: transfer {record.get('state')}: {record.get('reason')}")
        t0 = time.perf_counter()
        await api.call("POST", f"/api/transfers/{record['id']}/pull",
                       {"path": str(self.out / f"{name}.jsonl")})
        self.pull_ms.append((time.perf_counter() - t0) * 1000)
        return True

    async def refused(self, name: str) -> bool:
        """A use beyond the count: the pull must be refused naming the constraint."""
        api = self.apis[name]
        record = await api.call("POST", "/api/transfers?wait=60",
                                {"agreementId": self.agreements[name]}, expect=201)
        async with self.session.post(
                api.base + f"/api/transfers/{record['id']}/pull", headers=api.headers,
                json={"path": str(self.out / f"{name}-refused.jsonl")}) as resp:
            text = await resp.text()
        ok = resp.status in (403, 409) and f"count lteq {USES} failed" in text
        if not ok:
            raise RuntimeError(f"{name}: use {USES + 1} answered {resp.status}: {text[:300]}")
        self.refusals.append(text)
        return True


async def each(names: list[str], call: Any) -> LoadResult:
    """``call(name)`` once per name, CONCURRENCY in flight."""
    queue = iter(names)

    async def next_one() -> bool:
        name = next(queue, None)
        if name is None:
            return True
        return bool(await call(name))

    return await load(next_one, concurrency=min(CONCURRENCY, len(names)),
                      duration_s=PHASE_LIMIT_S, max_count=len(names))


async def count_uses_fast(provider_dir: Path, agreements: list[str], uses: int) -> float:
    """``uses`` calls of ``Store.add_use(agreement, 1)`` per agreement on the provider's
    database (the code a served pull calls); returns the seconds it took."""
    from connector.adapters.storage import engine

    store = await engine.open_store(load_settings(provider_dir))
    t0 = time.perf_counter()
    try:
        for agreement in agreements:
            for _ in range(uses):
                await store.add_use(agreement, 1)
    finally:
        await store.close()
    return time.perf_counter() - t0


@dataclass
class Phase:
    name: str
    result: LoadResult
    cpu: CpuMeter
    pulls_ms: list[float] = field(default_factory=list)


def _p(values: list[float], q: float) -> float:
    from bench import percentile

    return percentile(sorted(values), q)


async def drive(space: Space, out: Path, pids: dict[str, int]) -> dict[str, Any]:
    names = [c.name for c in space.consumers]
    provider_pid = pids["provider"]
    measured: dict[str, Any] = {"phases": [], "rss": {}}
    timeout = aiohttp.ClientTimeout(total=180)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        apis = {}
        for c in space.consumers:
            s = load_settings(c.dir)
            apis[c.name] = Api(session, s.management_url, s.management_token())
        driver = Driver(session, apis, space.provider.url, out)

        async def phase(name: str, call: Any, who: list[str]) -> Phase:
            driver.pull_ms = []
            with CpuMeter(pids) as cpu:
                result = await each(who, call)
            log(f"{name}: {result.completed} in {result.elapsed_s:.1f} s, {result.rate:.1f}/s, "
                f"errors {result.errors}; provider CPU {cpu.cpu_s['provider']:.1f} s; other "
                f"processes {cpu.foreign_cores:.2f} cores")
            if result.first_error:
                log(f"  first error: {result.first_error}")
            got = Phase(name, result, cpu, list(driver.pull_ms))
            measured["phases"].append(got)
            return got

        measured["rss"]["ready"] = rss_mib(provider_pid)
        await phase("negotiate", driver.negotiate, names)
        measured["rss"]["agreements"] = rss_mib(provider_pid)
        await phase("pull_first", driver.pull, [n for n in names if n in driver.agreements])
        agreements = [driver.agreements[n] for n in names if n in driver.agreements]
        log(f"counting uses 2..{USES - 1} of {len(agreements)} agreements through "
            "Store.add_use")
        measured["fast_s"] = await count_uses_fast(space.provider.dir, agreements, USES - 2)
        await phase("pull_last", driver.pull, [n for n in names if n in driver.agreements])
        measured["rss"]["uses"] = rss_mib(provider_pid)
        measured["hwm"] = hwm_mib(provider_pid)
        sample = [n for n in names if n in driver.agreements][:REFUSAL_SAMPLE]
        await phase("refused", driver.refused, sample)
        provider = load_settings(space.provider.dir)
        api = Api(session, provider.management_url, provider.management_token())
        async with session.get(api.base + "/api/agreements", headers=api.headers) as listed:
            rows = await listed.json()
        # What `connector agreements` shows: each agreement with the uses the provider counted.
        uses = [(await api.call("GET", f"/api/agreements/{a['id']}"))["uses"] for a in rows]
        measured["agreements"] = len(rows)
        measured["uses_total"] = sum(int(u or 0) for u in uses)
        measured["agreed"] = len(agreements)
        measured["refusal"] = driver.refusals[0] if driver.refusals else ""
    return measured


def run(*, quick: bool, reusers: int | None = None, hosts: int | None = None) -> None:
    n = reusers if reusers is not None else (50 if quick else 1000)
    k = hosts if hosts is not None else max(1, min(4, n // 100))
    root = Path(tempfile.mkdtemp(prefix="bench-reusers-"))
    space: Space | None = None
    try:
        t0 = time.perf_counter()
        space = build(root, n)
        log(f"{n} reuser folders admitted in {time.perf_counter() - t0:.1f} s")
        space.ministry.start()
        space.provider.start()
        t0 = time.perf_counter()
        start_hosts(space, root, k)
        host_start_s = time.perf_counter() - t0
        assert space.provider.process is not None
        pids = {"provider": space.provider.process.pid, "driver": os.getpid()} | {
            f"host-{h}": p.pid for h, p in enumerate(space.hosts)}
        (root / "pulls").mkdir()
        measured = asyncio.run(drive(space, root / "pulls", pids))
        host_rss = [rss_mib(p.pid) for p in space.hosts]
    finally:
        if space is not None:
            stop_hosts(space)
            space.provider.stop()
            space.ministry.stop()
        shutil.rmtree(root, ignore_errors=True)
    report(n, k, host_start_s, host_rss, measured)


def report(n: int, hosts: int, host_start_s: float, host_rss: list[float],
           measured: dict[str, Any]) -> None:
    phases = {p.name: p for p in measured["phases"]}
    neg, first, last, refused = (phases[k] for k in ("negotiate", "pull_first", "pull_last",
                                                     "refused"))
    errors = sum(p.result.errors for p in phases.values())
    emit("reusers_consumers", n, "distinct consumers")
    emit("reusers_consumer_hosts", hosts, "processes")
    emit("reusers_consumer_hosts_start_s", host_start_s, "s")
    emit("reusers_consumer_rss_mib_each", sum(host_rss) / n, "MiB/consumer")
    emit("reusers_errors", errors, "count")
    emit("reusers_negotiations_per_s", neg.result.rate, "negotiations/s")
    emit("reusers_negotiation_p50_ms", neg.result.p(50), "ms")
    emit("reusers_negotiation_p95_ms", neg.result.p(95), "ms")
    emit("reusers_negotiation_cpu_ms_provider",
         neg.cpu.cpu_s["provider"] / max(1, neg.result.completed) * 1000, "ms/negotiation")
    for tag, ph in (("first", first), ("last", last)):
        emit(f"reusers_pull_p50_ms_{tag}", _p(ph.pulls_ms, 50), "ms")
        emit(f"reusers_pull_p95_ms_{tag}", _p(ph.pulls_ms, 95), "ms")
        emit(f"reusers_transfers_per_s_{tag}", ph.result.rate, "transfers/s")
        emit(f"reusers_pull_cpu_ms_provider_{tag}",
             ph.cpu.cpu_s["provider"] / max(1, ph.result.completed) * 1000, "ms/transfer")
    emit("reusers_agreements", measured["agreements"], "agreements", limit=n)
    emit("reusers_uses_total", measured["uses_total"], "uses", limit=n * USES)
    emit("reusers_uses_served_by_pulls", first.result.completed + last.result.completed
         - first.result.errors - last.result.errors, "uses")
    emit("reusers_uses_counted_fast", measured["agreed"] * (USES - 2), "uses")
    emit("reusers_uses_counted_fast_s", measured["fast_s"], "s")
    emit("reusers_refused_over_count", refused.result.completed - refused.result.errors,
         "pulls", limit=refused.result.completed)
    emit("reusers_provider_rss_mib_ready", measured["rss"]["ready"], "MiB")
    emit("reusers_provider_rss_mib_agreements", measured["rss"]["agreements"], "MiB")
    emit("reusers_provider_rss_mib_uses", measured["rss"]["uses"], "MiB")
    emit("reusers_provider_vmhwm_mib", measured["hwm"], "MiB")
    emit("host_other_processes_cores_busy_max",
         max(p.cpu.foreign_cores for p in phases.values()), "cores", limit=os.cpu_count())
    log(f"a refusal: {measured['refusal'][:200]}")
    if errors:
        raise RuntimeError(f"{errors} calls failed")
    if measured["uses_total"] != n * USES or measured["agreements"] != n:
        raise RuntimeError(f"the provider counts {measured['agreements']} agreements and "
                           f"{measured['uses_total']} uses, not {n} and {n * USES}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "host":
        host_main(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m bench.reusers host LIST (python -m bench reusers runs it)")
