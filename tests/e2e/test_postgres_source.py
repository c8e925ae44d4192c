"""The PostgreSQL query source between two real daemons over HTTPS, against a real server.

The server is Debian's PostgreSQL, started for the session by ``tests/e2e/postgres.py`` (which
installs it when absent, and fails when it cannot). The provider's dataset names its DSN only
by a 0600 secret file; the consumer pulls the query's rows end to end, the summary matches the
copy exactly, and a pull from an offset is the tail of the full copy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from connector.client import Management
from connector.config import load_settings
from connector.keys import write_private
from connector.participant.lint import check_folder
from tests.e2e.postgres import QUERY, ROWS, Postgres, row_values
from tests.harness import Participant, create_space, start, stop

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Pair:
    provider: Participant
    consumer: Participant


def _declare(folder: Path, dsn: str) -> None:
    write_private(folder / "keys" / "readings.dsn", (dsn + "\n").encode())
    (folder / "datasets" / "readings.toml").write_text(
        'id = "readings"\ntitle = "Readings"\npolicies = ["members-only"]\n'
        'formats = ["HttpData-PULL", "HttpData-PUSH"]\n'
        f'[source]\ntype = "postgres"\ndsn_file = "keys/readings.dsn"\nquery = "{QUERY}"\n')


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, postgres_server: Postgres) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("postgres")
    provider, consumer = create_space(root)
    _declare(provider.dir, postgres_server.dsn)
    assert check_folder(provider.dir) == []
    start(provider)
    start(consumer)
    try:
        yield Pair(provider, consumer)
    finally:
        stop(consumer)
        stop(provider)


@pytest_asyncio.fixture(loop_scope="session")
async def consumer(pair: Pair) -> AsyncIterator[Management]:
    api = Management(load_settings(pair.consumer.dir))
    yield api
    await api.close()


def expected_record(i: int) -> dict[str, Any]:
    """Row ``i`` as the source must send it."""
    (id_, station, amount, level, flagged, at, local_at, day, raw, ref, pair,
     extra) = row_values(i)
    return {"id": id_, "station": station, "amount": str(amount), "level": level,
            "flagged": flagged, "at": at.isoformat(), "local_at": local_at.isoformat(),
            "day": day.isoformat(), "raw": base64.b64encode(raw).decode(), "ref": str(ref),
            "pair": pair, "extra": json.loads(extra)}


async def _agreement(pair: Pair, api: Management) -> str:
    record = await api.call("POST", "/api/negotiations?wait=10",
                            {"provider": pair.provider.url, "datasetId": "readings"})
    assert record["state"] == "FINALIZED", record
    return str(record["agreementId"])


async def test_postgres_source_pulled_end_to_end_with_exact_summary(
        pair: Pair, consumer: Management) -> None:
    agreement = await _agreement(pair, consumer)
    out = pair.consumer.dir / "state" / "readings.jsonl"
    cmd = [sys.executable, "-m", "connector.cli", "transfer", agreement, "--out", str(out),
           "--dir", str(pair.consumer.dir)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, stderr.decode()
    assert b"verified" in stdout
    copy = out.read_bytes()
    assert [json.loads(line) for line in copy.splitlines()] == [
        expected_record(i) for i in range(ROWS)]
    transfer = await consumer.call("POST", "/api/transfers?wait=10", {"agreementId": agreement})
    summary = await consumer.call("GET", f"/api/transfers/{transfer['id']}/summary")
    assert summary == {"records": ROWS, "bytes": len(copy),
                       "sha256": hashlib.sha256(copy).hexdigest()}


async def test_resume_with_offset_on_the_postgres_source(
        pair: Pair, consumer: Management) -> None:
    agreement = await _agreement(pair, consumer)
    transfer = await consumer.call("POST", "/api/transfers?wait=10", {"agreementId": agreement})
    tid = transfer["id"]
    head = pair.consumer.dir / "state" / "readings-full.jsonl"
    records, _ = await consumer.download(f"/api/transfers/{tid}/data", head)
    assert records == ROWS
    full = head.read_bytes().splitlines(keepends=True)
    tail = pair.consumer.dir / "state" / "readings-tail.jsonl"
    records, _ = await consumer.download(f"/api/transfers/{tid}/data?offset=217", tail)
    assert records == ROWS - 217 and tail.read_bytes() == b"".join(full[217:])
    assert json.loads(full[217]) == expected_record(217)


async def test_push_from_the_postgres_source(pair: Pair, consumer: Management) -> None:
    agreement = await _agreement(pair, consumer)
    out = pair.consumer.dir / "state" / "readings-pushed.jsonl"
    record = await consumer.call("POST", "/api/transfers?wait=10",
                                 {"agreementId": agreement, "push": True, "sink": str(out)})
    for _ in range(200):
        state = await consumer.call("GET", f"/api/transfers/{record['id']}")
        if state["state"] in ("COMPLETED", "TERMINATED"):
            break
        await asyncio.sleep(0.05)
    assert state["state"] == "COMPLETED", state
    assert [json.loads(line) for line in out.read_bytes().splitlines()] == [
        expected_record(i) for i in range(ROWS)]
