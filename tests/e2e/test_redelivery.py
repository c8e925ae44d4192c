"""Messages delivered twice over real HTTPS: the second is harmless (``core.process``).

The outbox delivers at least once: a crash between sending a message and forgetting it sends
it again. These are the sequences that once went wrong: a second provider negotiation opened
by a repeated initial request; a repeated verification answered 400 after the provider had
finalised, which made the consumer drop an agreement the provider kept; a repeated
completion answered 400.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from connector.client import Management
from connector.config import load_settings
from connector.core import codec
from connector.core.identity import did_web_from_url
from connector.core.messages import (
    ContractAgreementVerificationMessage,
    ContractNegotiationEventMessage,
)
from tests.e2e.conftest import Space
from tests.e2e.test_dsp_edge import CTX, call, finalized, request_body
from tests.harness import Participant, create_space, start, stop
from tests.stores import StateDb

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def provider_negotiations(http: aiohttp.ClientSession, s: Space, consumer_pid: str
                                ) -> list[dict[str, Any]]:
    """The provider's negotiations for one consumerPid (its management API)."""
    port = int(s.provider.url.rsplit(":", 1)[1]) + 1
    token = (s.provider.dir / "keys" / "management.token").read_text().strip()
    async with http.get(f"http://127.0.0.1:{port}/api/negotiations",
                        headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        return [n for n in await resp.json() if n["consumerPid"] == consumer_pid]


async def test_a_repeated_initial_request_gets_the_same_negotiation(
        http: aiohttp.ClientSession, callbacks: Space) -> None:
    s, peer = callbacks, callbacks.members
    body = request_body(peer)
    acks = []
    for _ in range(2):
        status, ack = await call(http, "POST", f"{s.base}/negotiations/request", body,
                                 peer.token(s.provider_did))
        assert status == 201, ack
        acks.append(ack)
    assert acks[0]["providerPid"] == acks[1]["providerPid"]
    assert acks[1]["consumerPid"] == body["consumerPid"]
    theirs = await provider_negotiations(http, s, body["consumerPid"])
    assert [n["id"] for n in theirs] == [acks[0]["providerPid"]]


async def test_a_repeated_initial_offer_gets_the_same_negotiation(
        http: aiohttp.ClientSession, callbacks: Space) -> None:
    """The provider-initiated opening (POST /negotiations/offers), sent twice: the daemon,
    consumer here, holds one negotiation for the provider's pid."""
    s, peer = callbacks, callbacks.members
    provider_pid = f"urn:uuid:{uuid.uuid4()}"
    body = {"@context": CTX, "@type": "ContractOfferMessage", "providerPid": provider_pid,
            "offer": {"@id": "urn:offer:theirs", "@type": "Offer", "target": "their-data",
                      "permission": [{"action": "use"}]},
            "callbackAddress": peer.callback}
    acks = []
    for _ in range(2):
        status, ack = await call(http, "POST", f"{s.base}/negotiations/offers", body,
                                 peer.token(s.provider_did))
        assert status == 201, ack
        acks.append(ack)
    assert acks[0]["consumerPid"] == acks[1]["consumerPid"]
    assert acks[1]["providerPid"] == provider_pid and acks[1]["state"] == "OFFERED"
    ours = await provider_negotiations(http, s, acks[0]["consumerPid"])
    assert [n["providerPid"] for n in ours] == [provider_pid]


async def test_a_repeated_verification_after_finalized_is_200(
        http: aiohttp.ClientSession, callbacks: Space) -> None:
    s, peer = callbacks, callbacks.members
    cpid, ppid, agreement_id = await finalized(http, s, peer)
    verification = {"@context": CTX, "@type": "ContractAgreementVerificationMessage",
                    "consumerPid": cpid, "providerPid": ppid}
    status, ack = await call(http, "POST",
                             f"{s.base}/negotiations/{ppid}/agreement/verification",
                             verification, peer.token(s.provider_did))
    assert status == 200, ack
    assert ack["state"] == "FINALIZED"
    (record,) = await provider_negotiations(http, s, cpid)
    assert record["state"] == "FINALIZED" and record["agreementId"] == agreement_id
    # Under a message @id of its own, as EDC 0.15 sends it again: a negotiation carries one
    # verification, so this is the same one (core/process.py), acknowledged as well.
    status, ack = await call(http, "POST",
                             f"{s.base}/negotiations/{ppid}/agreement/verification",
                             {**verification, "@id": f"urn:uuid:{uuid.uuid4()}"},
                             peer.token(s.provider_did))
    assert status == 200 and ack["state"] == "FINALIZED", ack
    assert await provider_negotiations(http, s, cpid) == [record]


async def test_a_repeated_completion_is_200(http: aiohttp.ClientSession,
                                            callbacks: Space) -> None:
    s, peer = callbacks, callbacks.members
    _, _, agreement_id = await finalized(http, s, peer)
    cpid = f"urn:uuid:{uuid.uuid4()}"
    req = {"@context": CTX, "@type": "TransferRequestMessage", "consumerPid": cpid,
           "agreementId": agreement_id, "format": "HttpData-PULL",
           "callbackAddress": peer.callback}
    status, ack = await call(http, "POST", f"{s.base}/transfers/request", req,
                             peer.token(s.provider_did))
    assert status == 201, ack
    await peer.next_message(f"/transfers/{cpid}/start")
    ppid = ack["providerPid"]
    completion = {"@context": CTX, "@type": "TransferCompletionMessage", "consumerPid": cpid,
                  "providerPid": ppid}
    for _ in range(2):
        status, doc = await call(http, "POST", f"{s.base}/transfers/{ppid}/completion",
                                 completion, peer.token(s.provider_did))
        assert status == 200, doc
        assert doc["state"] == "COMPLETED"


# -- a crash between sending and forgetting, on two real daemons --------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Participant, Participant]]:
    provider, consumer = create_space(tmp_path_factory.mktemp("redelivery"))
    start(provider)
    start(consumer)
    try:
        yield provider, consumer
    finally:
        stop(consumer)
        stop(provider)


@pytest_asyncio.fixture(loop_scope="session")
async def managed(pair: tuple[Participant, Participant]
                  ) -> AsyncIterator[tuple[Management, Management]]:
    apis = [Management(load_settings(p.dir)) for p in pair]
    yield apis[0], apis[1]
    for api in apis:
        await api.close()


async def _until(api: Management, pid: str, state: str) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for _ in range(300):  # polled, generously: the daemons share two cores with the suite
        record = await api.call("GET", f"/api/negotiations/{pid}?wait=0.2")
        if record["state"] == state:
            return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pid} never reached {state}: {record}")


def _rewind_consumer(db: StateDb, pid: str, provider_base: str, provider_did: str) -> None:
    """What the consumer's database holds if it was killed after sending its verification,
    before forgetting it, and before the provider's FINALIZED reached it."""
    ((body,),) = db.execute("SELECT body FROM negotiations WHERE id = ?", pid)
    record = json.loads(body)
    assert record["history"][-1]["message"] == "ContractNegotiationEventMessage:FINALIZED"
    record["state"], record["history"] = "VERIFIED", record["history"][:-1]
    db.execute("BEGIN")
    db.execute("UPDATE negotiations SET state = 'VERIFIED', body = ? WHERE id = ?",
               json.dumps(record).encode(), pid)
    db.execute("DELETE FROM agreements WHERE negotiation_id = ?", pid)
    message = ContractAgreementVerificationMessage(consumer_pid=record["consumerPid"],
                                                   provider_pid=record["providerPid"])
    _queue(db, pid, f"{provider_base}/negotiations/{record['providerPid']}/agreement/"
           "verification", provider_did, codec.encode(message))
    db.execute("COMMIT")


def _queue(db: StateDb, pid: str, url: str, audience: str, body: bytes) -> None:
    """An outbox row due now; its sequence number the database's next."""
    db.execute("INSERT INTO outbox (process_id, url, audience, body, next_attempt)"
               " VALUES (?, ?, ?, ?, 0)", pid, url, audience, body)


async def test_a_verification_sent_again_after_a_crash_keeps_the_agreement_on_both_sides(
        pair: tuple[Participant, Participant], managed: tuple[Management, Management]) -> None:
    provider, consumer = pair
    papi, capi = managed
    record = await capi.call("POST", "/api/negotiations?wait=10",
                             {"provider": provider.url, "datasetId": "example-weather"})
    assert record["state"] == "FINALIZED", record
    theirs = [n for n in await papi.call("GET", "/api/negotiations")
              if n["consumerPid"] == record["consumerPid"]]
    await _until(papi, theirs[0]["id"], "FINALIZED")
    stop(consumer)
    stop(provider)
    psettings, csettings = load_settings(provider.dir), load_settings(consumer.dir)
    with StateDb(consumer.dir) as db:
        _rewind_consumer(db, record["id"], psettings.dsp_base, did_web_from_url(provider.url))
    # The provider was killed before forgetting its FINALIZED: it sends it again on start.
    event = ContractNegotiationEventMessage(consumer_pid=record["consumerPid"],
                                            provider_pid=record["providerPid"],
                                            event_type="FINALIZED")
    with StateDb(provider.dir) as db:
        _queue(db, theirs[0]["id"], f"{csettings.dsp_base}/negotiations/"
               f"{record['consumerPid']}/events", did_web_from_url(consumer.url),
               codec.encode(event))
    start(provider)
    start(consumer)  # its outbox sends the verification again, at once
    papi, capi = Management(psettings), Management(csettings)
    try:
        mine = await _until(capi, record["id"], "FINALIZED")
        assert mine["agreementId"] == record["agreementId"]
        provider_side = await _until(papi, theirs[0]["id"], "FINALIZED")
        assert provider_side["agreementId"] == record["agreementId"]
        agreements = [a["id"] for a in await capi.call("GET", "/api/agreements")]
        assert agreements.count(record["agreementId"]) == 1
    finally:
        await papi.close()
        await capi.close()
