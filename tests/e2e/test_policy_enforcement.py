"""Usage policy enforced for real between two daemons, and explained."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys

import aiohttp
import msgspec
import pytest

from connector.client import Management
from tests.e2e.conftest import Space

pytestmark = pytest.mark.asyncio(loop_scope="session")



async def test_count_limit_holds_under_500_concurrent_requests(
        space: Space, apis: tuple[Management, Management]) -> None:
    provider, consumer = apis
    record = await consumer.call("POST", "/api/negotiations?wait=10",
                                 {"provider": space.provider.url, "datasetId": "counted"})
    assert record["state"] == "FINALIZED", record
    transfer = await consumer.call("POST", "/api/transfers?wait=10",
                                   {"agreementId": record["agreementId"]})
    address = transfer["dataAddress"]
    token = next(p["value"] for p in address["endpointProperties"]
                 if p["name"] == "authorization")
    connector = aiohttp.TCPConnector(ssl=space.tls, limit=500)
    async with aiohttp.ClientSession(connector=connector) as http:
        async def pull() -> int:
            async with http.get(address["endpoint"],
                                headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(pull() for _ in range(500)))
    assert statuses.count(200) == 100  # count lteq 100: never a 101st use
    assert statuses.count(403) == 400
    # The denials are in the provider's timeline of that transfer, naming the constraint.
    theirs = [t for t in await provider.call("GET", "/api/transfers")
              if t["consumerPid"] == transfer["consumerPid"]]
    notes = [h for h in theirs[0]["history"] if h["message"] == "data access denied"]
    assert notes and "count lteq" in notes[0]["note"]


async def test_denial_trace_and_why(space: Space, apis: tuple[Management, Management]) -> None:
    provider, consumer = apis
    record = await consumer.call("POST", "/api/negotiations?wait=10",
                                 {"provider": space.provider.url, "datasetId": "example-weather"})
    ours = next(n for n in await provider.call("GET", "/api/negotiations")
            if n["consumerPid"] == record["consumerPid"])
    decision = next(h for h in ours["history"] if h["by"] == "policy")
    assert "members-only granted" in decision["message"]
    assert "✓" in decision["note"] and "membership eq active" in decision["note"]
    why = subprocess.run([sys.executable, "-m", "connector.cli", "why", ours["id"], "--dir",
                          str(space.provider.dir)], capture_output=True, text=True, timeout=60)
    assert why.returncode == 0, why.stderr
    assert "ContractRequestMessage -> REQUESTED" in why.stdout
    assert "ContractNegotiationEventMessage:FINALIZED -> FINALIZED" in why.stdout
    assert "agreed under policy sha256" in why.stdout


async def test_agreement_records_policy_hash_and_stays_fixed(
        space: Space, apis: tuple[Management, Management]) -> None:
    provider, consumer = apis
    record = await consumer.call("POST", "/api/negotiations?wait=10",
                                 {"provider": space.provider.url, "datasetId": "example-weather"})
    agreements = {a["id"]: a for a in await provider.call("GET", "/api/agreements")}
    mine = agreements[record["agreementId"]]
    policy = json.loads((space.provider.dir / "policies" / "members-only.json").read_text())
    expected = hashlib.sha256(msgspec.json.encode(policy, order="sorted")).hexdigest()
    assert mine["policyHash"] == expected
    assert mine["body"]["permission"] == policy["permission"]


async def test_catalogue_says_where_constraints_are_enforced(
        space: Space, apis: tuple[Management, Management]) -> None:
    _, consumer = apis
    doc = await consumer.call("GET", f"/api/catalog?provider={space.provider.url}")
    where = {d["@id"]: d["enforcement"] for d in doc["dataset"]}
    assert where["counted"] == {"urn:offer:counted:count-limited": {"count": "every data access"}}
    assert where["example-weather"] == {"urn:offer:example-weather:members-only": {
        "membership": "catalogue, negotiation and every data access"}}
    # Not inside the offer: a client sending the offer back sends only ODRL.
    assert all("enforcement" not in p for d in doc["dataset"] for p in d["hasPolicy"])
