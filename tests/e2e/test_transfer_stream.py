"""Streaming transfers between two daemons: a cut and a resume, and a revocation mid-stream."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from connector.client import Management
from connector.config import load_settings
from tests.e2e.conftest import BIG_RECORDS, Space

pytestmark = pytest.mark.asyncio(loop_scope="session")



async def _agreement(space: Space, consumer: Management) -> str:
    record = await consumer.call("POST", "/api/negotiations?wait=10",
                                 {"provider": space.provider.url, "datasetId": "big"})
    assert record["state"] == "FINALIZED", record
    return str(record["agreementId"])


async def test_cut_mid_stream_then_resume_to_a_verified_copy(
        space: Space, apis: tuple[Management, Management]) -> None:
    _, consumer = apis
    agreement = await _agreement(space, consumer)
    out = space.consumer.dir / "state" / "big-copy.jsonl"
    part = out.with_name(out.name + ".part")
    cmd = [sys.executable, "-m", "connector.cli", "transfer", agreement, "--out", str(out),
           "--dir", str(space.consumer.dir)]
    cli = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # let a few MB arrive, then kill the command
        if part.exists() and part.stat().st_size > 4_000_000:
            break
        await asyncio.sleep(0.002)
    os.kill(cli.pid, signal.SIGKILL)
    cli.wait()
    assert not out.exists() and 0 < part.stat().st_size < 40_000_000, "the cut came too late"
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming transfer" in resumed.stderr
    source = (space.provider.dir / "data" / "big.jsonl").read_bytes()
    copy = out.read_bytes()
    assert hashlib.sha256(copy).digest() == hashlib.sha256(source).digest()
    seqs = [int(line.split(b",")[0].split(b":")[1]) for line in copy.splitlines()]
    assert seqs == list(range(BIG_RECORDS))  # no record lost or duplicated
    assert "verified" in resumed.stdout and not part.exists()


async def test_revocation_mid_stream_stops_it_and_terminates_with_reason(
        space: Space, apis: tuple[Management, Management]) -> None:
    provider, consumer = apis
    agreement = await _agreement(space, consumer)
    transfer = await consumer.call("POST", "/api/transfers?wait=10",
                                   {"agreementId": agreement})
    assert transfer["state"] == "STARTED"
    settings = load_settings(space.consumer.dir)
    url = f"{settings.management_url}/api/transfers/{transfer['id']}/data"
    headers = {"Authorization": f"Bearer {settings.management_token()}"}
    received = 0
    with pytest.raises(aiohttp.ClientPayloadError):
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_chunked(64 * 1024):
                received += len(chunk)
                if received > 1_000_000 and received - len(chunk) <= 1_000_000:
                    await provider.call("POST", f"/api/agreements/{agreement}/revoke",
                                        {"reason": "consent withdrawn"})
                await asyncio.sleep(0.001)  # a slow reader: the provider must stop early
    assert received < 40_000_000
    for _ in range(100):
        state = await consumer.call("GET", f"/api/transfers/{transfer['id']}")
        if state["state"] == "TERMINATED":
            break
        await asyncio.sleep(0.05)
    assert state["state"] == "TERMINATED"
    assert "agreement revoked: consent withdrawn" in state["reason"]
    # And no new access passes: a new transfer under the revoked agreement is refused at
    # once, and ends with the reason (nothing is left STARTED for a pull to be refused).
    again = await consumer.call("POST", "/api/transfers?wait=10", {"agreementId": agreement})
    assert again["state"] == "TERMINATED"
    assert "revoked by the provider: consent withdrawn" in again["reason"]


async def test_daemon_pulls_into_a_file_sink_and_completes(
        space: Space, apis: tuple[Management, Management]) -> None:
    _, consumer = apis
    agreement = await _agreement(space, consumer)
    transfer = await consumer.call("POST", "/api/transfers?wait=10", {"agreementId": agreement})
    out = space.consumer.dir / "state" / "sink.jsonl"
    result = await consumer.call("POST", f"/api/transfers/{transfer['id']}/pull",
                                 {"path": str(out)})
    source = (space.provider.dir / "data" / "big.jsonl").read_bytes()
    assert result["records"] == BIG_RECORDS and result["bytes"] == len(source)
    assert result["sha256"] == hashlib.sha256(source).hexdigest() == \
        hashlib.sha256(out.read_bytes()).hexdigest()
    done = await consumer.call("GET", f"/api/transfers/{transfer['id']}")
    assert done["state"] == "COMPLETED"
