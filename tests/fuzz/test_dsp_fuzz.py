"""DSP messages generated from the official schemas and mutated, sent with valid self-issued
tokens to a running daemon over HTTPS: never a 5xx, the daemon stays up with bounded memory,
and a normal negotiation and transfer work afterwards.

Before the storm the scripted member peer opens real processes of both roles on the daemon
(a negotiation it requested, one finalized with a transfer started, one the daemon is offered
as consumer), so that generated messages carrying those pids reach the state machines in
every state and try illegal transitions, not only "unknown process".
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from connector.client import Management
from connector.config import load_settings
from tests.e2e.conftest import Space
from tests.e2e.test_bad_input import LINE_START
from tests.e2e.test_dsp_edge import CTX, call, finalized, open_negotiation
from tests.fuzz.conftest import requests, rss_kib
from tests.fuzz.generate import HOSTILE, Generator, body

pytestmark = pytest.mark.asyncio(loop_scope="session")
IN_FLIGHT = 8
# Growth of the daemon's resident memory allowed over a whole run, whatever its length: the
# allocator keeps some of what 1 MiB bodies and 50,000-item arrays needed, but a leak per
# request would pass this within a few thousand requests.
RSS_GROWTH_LIMIT_KIB = 96 * 1024

# (method, path under the DSP base, or from the root for /data and /push, schema kind)
ROUTES: list[tuple[str, str, str | None]] = [
    ("POST", "/catalog/request", "catalog/catalog-request-message"),
    ("GET", "/catalog/datasets/{id}", None),
    ("POST", "/negotiations/request", "negotiation/contract-request-message"),
    ("POST", "/negotiations/offers", "negotiation/contract-offer-message"),
    ("GET", "/negotiations/{pid}", None),
    ("POST", "/negotiations/{pid}/request", "negotiation/contract-request-message"),
    ("POST", "/negotiations/{pid}/offers", "negotiation/contract-offer-message"),
    ("POST", "/negotiations/{pid}/agreement", "negotiation/contract-agreement-message"),
    ("POST", "/negotiations/{pid}/agreement/verification",
     "negotiation/contract-agreement-verification-message"),
    ("POST", "/negotiations/{pid}/events", "negotiation/contract-negotiation-event-message"),
    ("POST", "/negotiations/{pid}/termination",
     "negotiation/contract-negotiation-termination-message"),
    ("POST", "/transfers/request", "transfer/transfer-request-message"),
    ("GET", "/transfers/{pid}", None),
    ("POST", "/transfers/{pid}/start", "transfer/transfer-start-message"),
    ("POST", "/transfers/{pid}/completion", "transfer/transfer-completion-message"),
    ("POST", "/transfers/{pid}/suspension", "transfer/transfer-suspension-message"),
    ("POST", "/transfers/{pid}/termination", "transfer/transfer-termination-message"),
    ("GET", "/data", None),
    ("GET", "/data/summary", None),
    ("POST", "/data/token", None),
    ("POST", "/push/{pid}", None),
    ("GET", "/push/{pid}", None),
    ("POST", "/push/{pid}/summary", None),
]
PRINTABLE = [h for h in HOSTILE if h.isprintable() and h.isascii()]  # what a header may hold
ODD_PIDS = ["", "%2F..%2F", "urn:uuid:" + "x" * 3000, "%00", "%0Aforged", "é", "..", "%25",
            "urn%3Auuid%3A1"]


@dataclass
class Request:
    index: int
    method: str
    url: str
    data: bytes | None
    headers: dict[str, str]
    what: list[str]


@dataclass
class Process:
    """One of the daemon's processes: the pid in its paths, and both pids of its messages."""

    path_pid: str
    consumer_pid: str
    provider_pid: str


async def _processes(http: aiohttp.ClientSession, s: Space) -> tuple[list[Process], list[str]]:
    """Real processes of both roles on the daemon, in several states; and more ids to mix
    in (agreement ids, made-up pids)."""
    m = s.members
    cpid, ppid = await open_negotiation(http, s, m)  # the provider answers with an agreement
    processes = [Process(ppid, cpid, ppid)]
    cpid, ppid, agreement = await finalized(http, s, m)
    processes.append(Process(ppid, cpid, ppid))
    transfer_cpid = f"urn:uuid:{uuid.uuid4()}"
    status, ack = await call(http, "POST", f"{s.base}/transfers/request", {
        "@context": CTX, "@type": "TransferRequestMessage", "consumerPid": transfer_cpid,
        "agreementId": agreement, "format": "HttpData-PULL", "callbackAddress": m.callback},
        m.token(s.provider_did))
    assert status == 201, ack
    processes.append(Process(ack["providerPid"], transfer_cpid, ack["providerPid"]))
    offered_ppid = f"urn:uuid:{uuid.uuid4()}"  # the daemon as consumer: offered by the member
    status, ack = await call(http, "POST", f"{s.base}/negotiations/offers", {
        "@context": CTX, "@type": "ContractOfferMessage", "providerPid": offered_ppid,
        "offer": {"@id": "urn:offer:fuzz", "@type": "Offer", "target": "example-weather",
                  "permission": [{"action": "use"}]},
        "callbackAddress": m.callback}, m.token(s.provider_did))
    assert status == 201, ack
    processes.append(Process(ack["consumerPid"], ack["consumerPid"], offered_ppid))
    made_up = [f"urn:uuid:{uuid.UUID(int=i)}" for i in range(3)]
    return processes, [agreement, *made_up]


def _quoted(text: str, safe: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe=safe)


def _plan(g: Generator, s: Space, processes: list[Process], count: int) -> list[Request]:
    """Every request of the run, decided up front from the seed alone."""
    planned = []
    for i in range(count):
        method, path, kind = g.rng.choice(ROUTES)
        aimed = g.rng.choice(processes) if g.rng.random() < 0.6 else None
        g.aimed = (aimed.consumer_pid, aimed.provider_pid) if aimed else None
        pid = (aimed.path_pid if aimed else g.rng.choice(g.pids) if g.rng.random() < 0.8
               else g.rng.choice(ODD_PIDS))
        path = path.format(pid=_quoted(pid, "%:"), id=_quoted(g.string(), ""))
        what = [f"{method} {path[:80]}"]
        headers = {"Content-Type": "application/json"}
        if path.startswith(("/data", "/push")):
            url = s.provider.url + path + g.rng.choice(["", "?offset=3", "?offset=-1",
                                                        "?offset=x", "?offset=" + "9" * 40])
            headers["Authorization"] = "Bearer " + g.rng.choice([*g.pids, *PRINTABLE])
        else:
            url = s.base + path
            # Mostly the member; sometimes the outsider, pinned but without the attributes
            # the policies ask for: a valid token whose claims are denied.
            caller = s.outsider if g.rng.random() < 0.1 else s.members
            headers["Authorization"] = "Bearer " + caller.token(s.provider_did)
        data = None
        if kind is not None:
            data, done = body(g, kind)
            what += done
        elif method == "POST":
            data = g.rng.choice([b"", b"{}", b"[" * 2000])
        if g.rng.random() < 0.05:
            headers["Content-Type"] = g.rng.choice(["text/plain", "application/xml", ""])
        planned.append(Request(i, method, url, data, headers, what))
    return planned


async def _send(http: aiohttp.ClientSession, r: Request) -> tuple[Request, int, bytes]:
    try:
        async with http.request(r.method, r.url, data=r.data, headers=r.headers) as resp:
            return r, resp.status, (await resp.read())[:300]
    except aiohttp.ClientError as exc:  # e.g. the daemon closed the connection on a 413
        return r, 0, f"{type(exc).__name__}: {exc}".encode()


async def _storm(http: aiohttp.ClientSession, planned: list[Request]
                 ) -> list[tuple[Request, int, bytes]]:
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(r: Request) -> tuple[Request, int, bytes]:
        async with gate:
            return await _send(http, r)

    return await asyncio.gather(*(one(r) for r in planned))


def assert_clean_log(log: Path, seed: int) -> None:
    """No traceback (a bug, whatever status it was answered with) and one line per record."""
    lines = log.read_text(errors="replace").splitlines()
    assert not [x for x in lines if "Traceback" in x], f"seed {seed}: a traceback in {log}"
    strays = [x for x in lines if not LINE_START.match(x)]
    assert strays == [], f"seed {seed}: lines that are not records: {strays[:3]}"


async def negotiate_and_pull(space: Space) -> None:
    """The consumer daemon negotiates and pulls from the provider daemon, as `connector` does."""
    api = Management(load_settings(space.consumer.dir))
    try:
        record = await api.call("POST", "/api/negotiations?wait=30",
                                {"provider": space.provider.url, "datasetId": "example-weather"})
        assert record["state"] == "FINALIZED", record
        transfer = await api.call("POST", "/api/transfers?wait=30",
                                  {"agreementId": record["agreementId"]})
        assert transfer["state"] == "STARTED", transfer
        out = space.consumer.dir / "state" / f"after-fuzz-{uuid.uuid4()}.jsonl"
        pulled = await api.call("POST", f"/api/transfers/{transfer['id']}/pull",
                                {"sink": str(out)})
        assert pulled["records"] == 10, pulled
    finally:
        await api.close()


async def test_generated_and_mutated_dsp_messages_never_get_a_5xx(
        fuzz_callbacks: Space, fuzz_http: aiohttp.ClientSession, seed: int) -> None:
    space, http = fuzz_callbacks, fuzz_http
    pid = space.provider.process.pid  # type: ignore[union-attr]
    processes, ids = await _processes(http, space)
    pids = [pid for p in processes for pid in (p.consumer_pid, p.provider_pid)] + ids
    g = Generator(random.Random(seed), pids, space.members.callback)
    planned = _plan(g, space, processes, requests("DSP"))
    rss_before = rss_kib(pid)
    t0 = time.monotonic()
    results = await _storm(http, planned)
    seconds = time.monotonic() - t0
    statuses = Counter(status for _, status, _ in results)
    rss_after = rss_kib(pid)
    print(f"fuzz seed {seed}: {len(planned)} DSP requests in {seconds:.1f}s, statuses "
          f"{dict(sorted(statuses.items()))}, provider RSS {rss_before} -> {rss_after} KiB")
    failures = [(r.index, r.what, status, answer) for r, status, answer in results
                if status >= 500 or (status == 0 and r.data is not None and len(r.data) < 1e6)]
    assert failures == [], f"seed {seed}: {failures[:5]}"
    assert space.provider.process.poll() is None, f"seed {seed}: the provider died"  # type: ignore[union-attr]
    assert_clean_log(space.provider.dir / "state" / "daemon.log", seed)
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, f"seed {seed}: RSS grew"
    await negotiate_and_pull(space)
