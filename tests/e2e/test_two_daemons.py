"""Two connector daemons (separate processes, HTTPS) driven through their management APIs."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from connector.adapters.storage.schema import ENGINES
from connector.client import Management
from connector.config import load_settings
from connector.core.errors import PeerError
from tests.e2e.conftest import Space

# The main two-daemon tests run on both storage engines, whatever CONNECTOR_E2E_ENGINES says.
pytestmark = [pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.engines(*ENGINES)]



async def _until(api: Management, pid: str, state: str) -> dict[str, object]:
    for _ in range(100):
        record: dict[str, object] = await api.call("GET", f"/api/negotiations/{pid}?wait=0.2")
        if record["state"] == state:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pid} never reached {state}: {record}")


async def test_consumer_initiated_to_finalized_on_both_sides(
        space: Space, apis: tuple[Management, Management]) -> None:
    provider, consumer = apis
    record = await consumer.call("POST", "/api/negotiations?wait=10",
                                 {"provider": space.provider.url, "datasetId": "example-weather"})
    assert record["state"] == "FINALIZED" and record["agreementId"]
    theirs = [n for n in await provider.call("GET", "/api/negotiations")
              if n["consumerPid"] == record["consumerPid"]]
    assert len(theirs) == 1 and theirs[0]["providerPid"] == record["providerPid"]
    await _until(provider, theirs[0]["id"], "FINALIZED")
    agreements = {a["id"] for a in await provider.call("GET", "/api/agreements")}
    assert record["agreementId"] in agreements


async def test_provider_initiated_offer_accepted_by_consumer_operator(
        space: Space, apis: tuple[Management, Management]) -> None:
    provider, consumer = apis
    offered = await provider.call("POST", "/api/offers",
                                  {"consumer": space.consumer.url, "datasetId": "example-weather"})
    assert offered["state"] == "OFFERED" and offered["consumerPid"]
    mine = await _until(consumer, str(offered["consumerPid"]), "OFFERED")
    assert mine["role"] == "consumer" and mine["providerPid"] == offered["id"]
    # The consumer's operator accepts; provider agrees, consumer verifies, provider finalizes.
    await consumer.call("POST", f"/api/negotiations/{mine['id']}/accept")
    done = await _until(consumer, str(mine["id"]), "FINALIZED")
    await _until(provider, str(offered["id"]), "FINALIZED")
    assert done["agreementId"]


async def test_operator_terminates_and_peer_sees_reason(
        space: Space, apis: tuple[Management, Management]) -> None:
    provider, consumer = apis
    offered = await provider.call("POST", "/api/offers",
                                  {"consumer": space.consumer.url, "datasetId": "example-weather"})
    pid = str(offered["consumerPid"])
    await _until(consumer, pid, "OFFERED")
    await consumer.call("POST", f"/api/negotiations/{pid}/terminate", {"reason": "not today"})
    theirs = await _until(provider, str(offered["id"]), "TERMINATED")
    assert "not today" in str(theirs["reason"])
    with pytest.raises(PeerError) as info:  # terminal: a second termination is refused
        await consumer.call("POST", f"/api/negotiations/{pid}/terminate", {"reason": "again"})
    assert info.value.peer_status == 400


async def test_transfer_through_management_api(space: Space,
                                               apis: tuple[Management, Management]) -> None:
    _, consumer = apis
    record = await consumer.call("POST", "/api/negotiations?wait=10",
                                 {"provider": space.provider.url, "datasetId": "example-weather"})
    transfer = await consumer.call("POST", "/api/transfers?wait=10",
                                   {"agreementId": record["agreementId"]})
    assert transfer["state"] == "STARTED"
    out = space.consumer.dir / "state" / "received.jsonl"
    records, size = await consumer.download(f"/api/transfers/{transfer['id']}/data", out)
    assert records == 10 and size == out.stat().st_size
    assert out.read_bytes() == (space.provider.dir / "data" / "example.jsonl").read_bytes()
    summary = await consumer.call("GET", f"/api/transfers/{transfer['id']}/summary")
    assert summary == {"records": 10, "bytes": size,
                       "sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
    assert (await consumer.call("GET", f"/api/transfers/{transfer['id']}"))["state"] == "STARTED"
    await consumer.call("POST", f"/api/transfers/{transfer['id']}/complete")
    done = await consumer.call("GET", f"/api/transfers/{transfer['id']}")
    assert done["state"] == "COMPLETED"


async def test_management_api_requires_its_token(space: Space) -> None:
    settings = load_settings(space.consumer.dir)
    api = Management(settings)
    api._headers = {"Authorization": "Bearer wrong"}
    try:
        with pytest.raises(PeerError) as info:
            await api.call("GET", "/api/negotiations")
        assert info.value.peer_status == 401
    finally:
        await api.close()
