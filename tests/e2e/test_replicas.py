"""Two provider replicas sharing one PostgreSQL database behind a real HAProxy (TCP mode), one
consumer: the provider's DID names the balancer, and any replica serves any request.

Each replica is a copy of the provider's folder differing only in the ports it listens on;
``[storage] postgres_dsn_file`` points both at the same database (docs/storage.md).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from connector.adapters.storage.engine import open_store
from connector.client import Management
from connector.config import load_settings
from tests.e2e.haproxy import balancer, sessions
from tests.e2e.postgres import Postgres, new_database
from tests.harness import Participant, create_space, free_port, start, stop
from tests.stores import set_port, use_postgres

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMIT = 50
POLICY = ('{"@context": ["https://w3id.org/dspace/2025/1/context.jsonld"], "@type": "Offer",'
          ' "permission": [{"action": "use", "constraint": [{"leftOperand": "count",'
          f' "operator": "lteq", "rightOperand": "{LIMIT}"}}]}}]}}')


@dataclass
class Replicas:
    consumer: Participant
    replicas: list[Participant]
    public_url: str
    stats: Path  # HAProxy's stats socket


@contextmanager
def two_replicas(root: Path, server: Postgres, *, server_extra: str = "",
                  prepare: Callable[[Path], None] = lambda _folder: None) -> Iterator[Replicas]:
    """Two provider replicas on one new database behind HAProxy, and a consumer, started;
    ``server_extra`` is added to the replicas' ``[server]`` table, and ``prepare`` is given
    the provider's folder before it is copied."""
    provider, consumer = create_space(root)
    prepare(provider.dir)
    (provider.dir / "policies" / "count-50.json").write_text(POLICY)
    (provider.dir / "datasets" / "counted50.toml").write_text(
        'id = "counted50"\ntitle = "Counted"\ndescription = "at most 50 uses"\n'
        'keywords = ["count"]\npolicies = ["count-50"]\n'
        '[source]\ntype = "jsonl"\npath = "data/example.jsonl"\n')
    if server_extra:
        config = provider.dir / "connector.toml"
        config.write_text(config.read_text().replace("[server]\n", f"[server]\n{server_extra}\n",
                                                     1))
    use_postgres(provider.dir, asyncio.run(new_database(server)))
    second = Participant("provider-b", root / "provider-b", provider.url)
    shutil.copytree(provider.dir, second.dir)
    ports = []
    for replica in (provider, second):
        ports.append(free_port())
        set_port(replica.dir, "server", ports[-1])
    set_port(second.dir, "management", free_port())
    public_port = int(provider.url.rsplit(":", 1)[1])
    with balancer(public_port, ports, root) as stats:
        started: list[Participant] = []
        try:
            for p in (provider, second, consumer):
                start(p)
                started.append(p)
            yield Replicas(consumer, [provider, second], provider.url, stats)
        finally:
            for p in reversed(started):
                stop(p)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory,
             postgres_server: Postgres) -> Iterator[Replicas]:
    with two_replicas(tmp_path_factory.mktemp("replicas"), postgres_server) as space:
        yield space


async def management(p: Participant) -> Management:
    return Management(load_settings(p.dir))


async def test_count_limit_exact_overtwo_replicas(replicas: Replicas) -> None:
    consumer = await management(replicas.consumer)
    try:
        record = await consumer.call("POST", "/api/negotiations?wait=20", {
            "provider": replicas.public_url, "datasetId": "counted50"})
        assert record["state"] == "FINALIZED", record
        transfer = await consumer.call("POST", "/api/transfers?wait=20",
                                       {"agreementId": record["agreementId"]})
    finally:
        await consumer.close()
    address = transfer["dataAddress"]
    assert address["endpoint"].startswith(replicas.public_url)  # through the balancer
    token = next(p["value"] for p in address["endpointProperties"]
                 if p["name"] == "authorization")
    before = sessions(replicas.stats)
    context = ssl.create_default_context(
        cafile=str(replicas.replicas[0].dir / "tls" / "cert.pem"))
    connector = aiohttp.TCPConnector(ssl=context, limit=300, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def pull() -> int:
            async with http.get(address["endpoint"],
                                headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(pull() for _ in range(300)))
    after = sessions(replicas.stats)
    served = {name: after[name] - before.get(name, 0) for name in after}
    assert all(n >= 50 for n in served.values()) and len(served) == 2, served  # both served
    assert statuses.count(200) == LIMIT, sorted(set(statuses))  # never a 51st use
    assert statuses.count(403) == 300 - LIMIT


JOBS = 200
CONCURRENCY = 16


async def _pull(http: aiohttp.ClientSession, address: dict[str, object]) -> int:
    """One pull through the balancer. A connection cut by a dying replica is retried; the
    dead replica may have counted that use already."""
    props = address["endpointProperties"]
    assert isinstance(props, list)
    token = next(p["value"] for p in props if p["name"] == "authorization")
    for _ in range(20):
        try:
            async with http.get(str(address["endpoint"]),
                                headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, ConnectionError):
            await asyncio.sleep(0.25)
    raise AssertionError("no replica answered the pull")


async def _settled(api: Management, pid: str) -> dict[str, object]:
    for _ in range(240):
        record: dict[str, object] = await api.call("GET", f"/api/negotiations/{pid}?wait=0.5")
        if record["state"] in ("FINALIZED", "TERMINATED"):
            return record
    raise AssertionError(f"{pid} never reached a terminal state: {record}")


async def test_a_replica_killed_mid_run_loses_nothing(replicas: Replicas,
                                                      postgres_server: Postgres) -> None:
    consumer = await management(replicas.consumer)
    killed = replicas.replicas[1]
    acknowledged: list[dict[str, object]] = []
    served: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(JOBS):
        queue.put_nowait(i)
    context = ssl.create_default_context(
        cafile=str(replicas.replicas[0].dir / "tls" / "cert.pem"))

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            if i == JOBS // 3 and killed.process is not None:
                killed.process.kill()  # SIGKILL: no drain, no goodbye
                killed.process.wait()
                killed.process = None
            record = await consumer.call("POST", "/api/negotiations?wait=30", {
                "provider": replicas.public_url, "datasetId": "example-weather"})
            acknowledged.append(record)
            record = await _settled(consumer, str(record["id"]))
            if record["state"] != "FINALIZED":
                continue
            transfer = await consumer.call("POST", "/api/transfers?wait=30",
                                           {"agreementId": record["agreementId"]})
            if transfer.get("dataAddress"):
                status = await _pull(http, transfer["dataAddress"])
                agreement = str(record["agreementId"])
                if status == 200:
                    served[agreement] = served.get(agreement, 0) + 1

    connector = aiohttp.TCPConnector(ssl=context, force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
        # Everything settles with the killed replica still down: the survivor sent what the
        # dead one had claimed (its claim ran out, tests/unit/test_store_engines.py).
        finals = [await _settled(consumer, str(r["id"])) for r in acknowledged]
        assert killed.process is None
        await asyncio.to_thread(start, killed)  # back later, into the rotation
        again = [await consumer.call("POST", "/api/negotiations?wait=30", {
            "provider": replicas.public_url, "datasetId": "example-weather"})
            for _ in range(10)]
        assert [(await _settled(consumer, str(r["id"])))["state"] for r in again] == [
            "FINALIZED"] * 10
    finally:
        await consumer.close()
    assert len(acknowledged) == JOBS
    assert all(r["state"] == "FINALIZED" for r in finals), [
        r["state"] for r in finals if r["state"] != "FINALIZED"]
    provider = await management(replicas.replicas[0])
    try:
        theirs = [n for n in await provider.call("GET", "/api/negotiations")
                  if n["consumerPid"] in {r["consumerPid"] for r in finals}]
        uses = {a["id"]: a for a in await provider.call("GET", "/api/agreements")}
    finally:
        await provider.close()
    assert len(theirs) == JOBS  # one provider process per request: none duplicated
    assert all(n["state"] == "FINALIZED" for n in theirs)
    assert {str(r["agreementId"]) for r in finals} <= set(uses)
    assert sum(served.values()) == JOBS  # every pull was served once
    counts = await _uses(replicas.replicas[0], list(served))
    # The counters equal the accesses served, except for a use that the replica counted just
    # before it was killed, whose answer never left (the client, or aiohttp's own retry of an
    # idempotent GET on a dropped connection, pulled again): only the pulls in flight at
    # the kill, one each at most. Never fewer uses counted than served.
    assert all(counts[a] >= served[a] for a in served)
    over = {a: counts[a] - served[a] for a in served if counts[a] != served[a]}
    assert all(n == 1 for n in over.values()) and len(over) <= CONCURRENCY, over


async def _uses(provider: Participant, agreements: list[str]) -> dict[str, int]:
    store = await open_store(load_settings(provider.dir))
    try:
        return {a: await store.agreement_uses(a) for a in agreements}
    finally:
        await store.close()


async def test_a_long_poll_on_one_replica_wakes_on_any_replicas_change(
        replicas: Replicas) -> None:
    """The offer starts on replica A; replica B is asked to wait for its end. The consumer's
    answers reach either replica (round robin); B's ``?wait=`` returns the terminal record
    whichever replica wrote it (LISTEN/NOTIFY), not its state at the timeout."""
    first, second = [await management(r) for r in replicas.replicas]
    consumer = await management(replicas.consumer)
    try:
        offered = await first.call("POST", "/api/offers", {
            "consumer": str(load_settings(replicas.consumer.dir).public_url),
            "datasetId": "example-weather"})
        mine: dict[str, object] = {}
        for _ in range(100):
            mine = await consumer.call("GET", f"/api/negotiations/{offered['consumerPid']}"
                                       "?wait=0.2")
            if mine["state"] == "OFFERED":
                break
        assert mine["state"] == "OFFERED", mine
        # B waits up to 120 s; without a wake-up from A's writes it would answer only then,
        # past the test's generous deadline of 40 s.
        waiting = asyncio.create_task(
            second.call("GET", f"/api/negotiations/{offered['id']}?wait=120"))
        await asyncio.sleep(0.2)  # B's poll is waiting before anything moves
        await consumer.call("POST", f"/api/negotiations/{mine['id']}/accept")
        done = await asyncio.wait_for(waiting, 40)
        assert done["state"] == "FINALIZED", done
    finally:
        for api in (first, second, consumer):
            await api.close()
