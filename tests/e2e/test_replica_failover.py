"""A transfer carried on by the other replica: two provider replicas on PostgreSQL behind a
real HAProxy (tests/e2e/test_replicas.py's set-up), a data token refreshed and a push resumed
whichever replica answers (docs/storage.md).

HAProxy's admin socket sends new connections to one replica at a time (``only``), so which
replica serves each step is known, not left to round robin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.client import Management
from tests.e2e.haproxy import all_ready, only, sessions
from tests.e2e.postgres import Postgres
from tests.e2e.test_replicas import Replicas, management, two_replicas
from tests.harness import start

pytestmark = pytest.mark.asyncio(loop_scope="module")

TTL_S = 4  # the replicas' data tokens live this long (``[server] data_token_ttl_s``)
BIG = 200_000  # records of the dataset a transfer is cut in the middle of


@pytest.fixture(scope="module")
def failover(tmp_path_factory: pytest.TempPathFactory,
             postgres_server: Postgres) -> Iterator[Replicas]:
    """Replicas whose data tokens expire after TTL_S, offering a dataset of BIG records."""
    def big_dataset(folder: Path) -> None:
        with (folder / "data" / "big.jsonl").open("w") as f:
            f.writelines(f'{{"n": {i}, "text": "record number {i} of the big dataset"}}\n'
                         for i in range(BIG))
        (folder / "datasets" / "big.toml").write_text(
            'id = "big"\ntitle = "Big"\ndescription = "many records"\n'
            'keywords = ["big"]\npolicies = ["members-only"]\n'
            'formats = ["HttpData-PULL", "HttpData-PUSH"]\n'
            '[source]\ntype = "jsonl"\npath = "data/big.jsonl"\n')

    with two_replicas(tmp_path_factory.mktemp("failover"), postgres_server,
                       server_extra=f"data_token_ttl_s = {TTL_S}", prepare=big_dataset
                       ) as space:
        yield space


async def _big_agreement(consumer: Management, space: Replicas) -> str:
    record = await consumer.call("POST", "/api/negotiations?wait=20", {
        "provider": space.public_url, "datasetId": "big"})
    assert record["state"] == "FINALIZED", record
    return str(record["agreementId"])


def _token_of(record: dict[str, Any]) -> str:
    return str(next(p["value"] for p in record["dataAddress"]["endpointProperties"]
                    if p["name"] == "authorization"))


async def test_a_pull_whose_token_expires_refreshes_it_on_the_other_replica(
        failover: Replicas, tmp_path: Path) -> None:
    """Replica 0 starts the transfer and serves the first part of the pull; the token expires;
    only replica 1 is left to answer: the consumer refreshes the token there and pulls the
    rest from where it stopped. The copy is the dataset, byte for byte."""
    consumer = await management(failover.consumer)
    source = (failover.replicas[0].dir / "data" / "big.jsonl").read_bytes()
    part = tmp_path / "part.jsonl"
    try:
        only(failover.stats, 0)
        agreement = await _big_agreement(consumer, failover)
        transfer = await consumer.call("POST", "/api/transfers?wait=20",
                                       {"agreementId": agreement})
        assert transfer["state"] == "STARTED", transfer
        tid, first_token = transfer["id"], _token_of(transfer)
        got = b""
        async for chunk in consumer.stream(f"/api/transfers/{tid}/data"):
            got += chunk
            if got.count(b"\n") >= 10:
                break  # the consumer stops mid-transfer
        kept = got[:got.rindex(b"\n") + 1]
        offset = kept.count(b"\n")
        assert 10 <= offset < BIG
        part.write_bytes(kept)
        await asyncio.sleep(TTL_S + 1)  # the token expires meanwhile
        only(failover.stats, 1)
        before = sessions(failover.stats)
        summary = await consumer.call("GET", f"/api/transfers/{tid}/summary")  # refreshes
        assert summary["records"] == BIG, summary
        refreshed = await consumer.call("GET", f"/api/transfers/{tid}")
        assert _token_of(refreshed) != first_token
        records, _ = await consumer.download(
            f"/api/transfers/{tid}/data?offset={offset}", part, append=True)
        after = sessions(failover.stats)
    finally:
        all_ready(failover.stats)
        await consumer.close()
    assert records == BIG - offset
    assert part.read_bytes() == source
    assert after["replica1"] > before["replica1"] and after["replica0"] == before["replica0"]


async def test_a_push_whose_replica_is_killed_resumes_from_its_offset_on_the_other(
        failover: Replicas, tmp_path: Path) -> None:
    """Replica 0 pushes; it is SIGKILLed once the consumer holds some records; replica 1
    finds the push no live replica runs, asks the consumer what it holds and pushes the rest
    from there: the consumer verifies the whole copy and the transfer completes."""
    consumer = await management(failover.consumer)
    killed = failover.replicas[0]
    source = (killed.dir / "data" / "big.jsonl").read_bytes()
    sink = tmp_path / "pushed.jsonl"
    try:
        only(failover.stats, 0)
        agreement = await _big_agreement(consumer, failover)
        record = await consumer.call("POST", "/api/transfers?wait=20", {
            "agreementId": agreement, "push": True, "sink": str(sink)})
        assert record["state"] == "STARTED", (record.get("reason"), record.get("history"))
        while not sink.exists() or sink.stat().st_size == 0:  # the push is under way
            record = await consumer.call("GET", f"/api/transfers/{record['id']}")
            assert record["state"] == "STARTED", record
            await asyncio.sleep(0.005)
        assert killed.process is not None
        killed.process.kill()  # SIGKILL mid-push
        killed.process.wait()
        killed.process = None
        held = sink.stat().st_size
        assert held < len(source), "the push ended before the kill"
        only(failover.stats, 1)
        deadline = time.monotonic() + 120
        while record["state"] not in ("COMPLETED", "TERMINATED") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            record = await consumer.call("GET", f"/api/transfers/{record['id']}")
        assert record["state"] == "COMPLETED", (record.get("reason"), record.get("history"))
        pushed = await consumer.call("GET", f"/api/transfers/{record['id']}/push")
    finally:
        if killed.process is None:
            await asyncio.to_thread(start, killed)
        all_ready(failover.stats)
        await consumer.close()
    assert pushed["records"] == BIG and sink.read_bytes() == source
    survivor = await management(failover.replicas[1])
    try:
        theirs = next(t for t in await survivor.call("GET", "/api/transfers")
                      if t["consumerPid"] == record["consumerPid"])
        timeline = await survivor.call("GET", f"/api/transfers/{theirs['id']}")
    finally:
        await survivor.close()
    assert theirs["state"] == "COMPLETED"
    resumed = [h for h in timeline["history"] if h["message"] == "push resumed"]
    assert resumed and "by another replica" in resumed[0]["note"], timeline["history"]
