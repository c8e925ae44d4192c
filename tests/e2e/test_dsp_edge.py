"""The provider's DSP edge over real HTTPS: the happy path, and every kind of bad input.

Each bad input gets the spec's status and error body (never a 500) and leaves state
unchanged: the test reads the negotiation back (or counts negotiations) afterwards.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.core.messages import DSP_CONTEXT
from tests.e2e.conftest import Peer, Space, bound

pytestmark = pytest.mark.asyncio(loop_scope="session")
OFFER_ID = "urn:offer:example-weather:members-only"
CTX = [DSP_CONTEXT]


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    data = body if isinstance(body, bytes) or body is None else msgspec.json.encode(body)
    token = bound(token, data)  # signed for this body, as our connectors sign theirs
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.request(method, url, data=data, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, (msgspec.json.decode(raw) if raw else {})


def request_body(peer: Peer, *, offer_id: str = OFFER_ID, target: str = "example-weather",
                 consumer_pid: str | None = None) -> dict[str, Any]:
    return {"@context": CTX, "@type": "ContractRequestMessage",
            "consumerPid": consumer_pid or f"urn:uuid:{uuid.uuid4()}",
            "offer": {"@id": offer_id, "@type": "Offer", "target": target,
                      "permission": [{"action": "use", "constraint": [
                          {"leftOperand": "membership", "operator": "eq",
                           "rightOperand": "active"}]}]},
            "callbackAddress": peer.callback}


async def open_negotiation(http: aiohttp.ClientSession, s: Space, peer: Peer
                           ) -> tuple[str, str]:
    body = request_body(peer)
    status, ack = await call(http, "POST", f"{s.base}/negotiations/request", body,
                             peer.token(s.provider_did))
    assert status == 201, ack
    assert ack["@type"] == "ContractNegotiation" and ack["state"] == "REQUESTED"
    assert ack["consumerPid"] == body["consumerPid"]
    return ack["consumerPid"], ack["providerPid"]


async def state_of(http: aiohttp.ClientSession, s: Space, peer: Peer, pid: str) -> str:
    status, doc = await call(http, "GET", f"{s.base}/negotiations/{pid}",
                             token=peer.token(s.provider_did))
    assert status == 200, doc
    return str(doc["state"])


async def finalized(http: aiohttp.ClientSession, s: Space, peer: Peer) -> tuple[str, str, str]:
    cpid, ppid = await open_negotiation(http, s, peer)
    agreement_msg = await peer.next_message(f"/negotiations/{cpid}/agreement")
    assert agreement_msg["providerPid"] == ppid
    agreement = agreement_msg["agreement"]
    assert agreement["assignee"] == peer.did and agreement["assigner"] == s.provider_did
    status, _ = await call(http, "POST", f"{s.base}/negotiations/{ppid}/agreement/verification",
                           {"@context": CTX, "@type": "ContractAgreementVerificationMessage",
                            "consumerPid": cpid, "providerPid": ppid},
                           peer.token(s.provider_did))
    assert status == 200
    event = await peer.next_message(f"/negotiations/{cpid}/events")
    assert event["eventType"] == "FINALIZED"
    return cpid, ppid, str(agreement["@id"])


async def test_version_and_did_document_are_public(http: aiohttp.ClientSession,
                                                   space: Space) -> None:
    status, doc = await call(http, "GET", f"{space.provider.url}/.well-known/dspace-version")
    assert status == 200
    assert {"version": "2025-1", "path": "/dsp/2025-1", "binding": "HTTPS"}.items() <= \
        doc["protocolVersions"][0].items()
    status, did = await call(http, "GET", f"{space.provider.url}/.well-known/did.json")
    assert status == 200 and did["id"] == space.provider_did


async def test_full_negotiation_to_finalized(http: aiohttp.ClientSession,
                                             callbacks: Space) -> None:
    s = callbacks
    _, ppid, _ = await finalized(http, s, s.members)
    assert await state_of(http, s, s.members, ppid) == "FINALIZED"


async def test_policy_denial_reaches_consumer_with_reason(http: aiohttp.ClientSession,
                                                          callbacks: Space) -> None:
    s = callbacks
    status, catalog = await call(http, "POST", f"{s.base}/catalog/request",
                                 {"@context": CTX, "@type": "CatalogRequestMessage"},
                                 s.outsider.token(s.provider_did))
    assert status == 200
    visible = {d["@id"] for d in catalog.get("dataset", [])}
    assert visible == {"counted"}  # members-only offers are hidden from non-members
    cpid, ppid = await open_negotiation(http, s, s.outsider)
    termination = await s.outsider.next_message(f"/negotiations/{cpid}/termination")
    assert termination["code"] == "policy-denied"
    assert "membership" in " ".join(map(str, termination["reason"]))
    assert await state_of(http, s, s.outsider, ppid) == "TERMINATED"


# -- bad input ---------------------------------------------------------------------------------


async def test_malformed_json_is_400_with_error_body(http: aiohttp.ClientSession,
                                                     space: Space) -> None:
    status, doc = await call(http, "POST", f"{space.base}/negotiations/request", b"{not json",
                             space.members.token(space.provider_did))
    assert status == 400
    assert doc["@type"] == "ContractNegotiationError" and "consumerPid" in doc
    assert "providerPid" in doc and doc["reason"]


async def test_wrong_type_is_400(http: aiohttp.ClientSession, space: Space) -> None:
    body = {**request_body(space.members), "@type": "ContractOfferMessage"}
    status, doc = await call(http, "POST", f"{space.base}/negotiations/request", body,
                             space.members.token(space.provider_did))
    assert status == 400 and doc["@type"] == "ContractNegotiationError"
    assert doc["consumerPid"] == body["consumerPid"]


async def test_missing_field_is_400(http: aiohttp.ClientSession, space: Space) -> None:
    body = request_body(space.members)
    del body["offer"]
    status, doc = await call(http, "POST", f"{space.base}/negotiations/request", body,
                             space.members.token(space.provider_did))
    assert status == 400 and "offer" in doc["reason"][0]


async def test_unknown_offer_is_400(http: aiohttp.ClientSession, space: Space) -> None:
    body = request_body(space.members, offer_id="urn:offer:nope")
    status, doc = await call(http, "POST", f"{space.base}/negotiations/request", body,
                             space.members.token(space.provider_did))
    assert status == 400 and doc["code"] == "offer-rejected"


async def test_rules_other_than_the_published_ones_are_400_and_store_nothing(
        http: aiohttp.ClientSession, space: Space) -> None:
    """A request naming our offer but carrying weaker rules is refused, with the rules."""
    body = request_body(space.members)
    body["offer"]["permission"] = [{"action": "use"}]  # the membership constraint dropped
    status, doc = await call(http, "POST", f"{space.base}/negotiations/request", body,
                             space.members.token(space.provider_did))
    assert status == 400 and doc["code"] == "offer-rejected", doc
    assert "differ from the published ones" in doc["reason"][0]
    assert '"leftOperand": "membership"' in doc["reason"][0]
    assert body["consumerPid"] not in await provider_consumer_pids(http, space)


async def test_the_agreement_echoes_the_rules_as_the_consumer_spelled_them(
        http: aiohttp.ClientSession, callbacks: Space) -> None:
    """EDC's management API hands our ``membership`` back as ``edc:membership`` and then
    compares our agreement with the offer as it stored it (make interop, difference 6)."""
    s, peer = callbacks, callbacks.members
    body = request_body(peer)
    body["@context"] = [DSP_CONTEXT, "https://w3id.org/edc/dspace/v0.0.1"]
    body["offer"]["permission"][0]["constraint"][0]["leftOperand"] = "edc:membership"
    status, ack = await call(http, "POST", f"{s.base}/negotiations/request", body,
                             peer.token(s.provider_did))
    assert status == 201, ack
    message = await peer.next_message(f"/negotiations/{body['consumerPid']}/agreement")
    agreement = message["agreement"]
    # Their term, echoed as the IRI it stands for (our messages carry no ``edc`` prefix).
    assert agreement["permission"] == [{"action": "use", "constraint": [
        {"leftOperand": "https://w3id.org/edc/v0.0.1/ns/membership", "operator": "eq",
         "rightOperand": "active"}]}]
    status, _ = await call(http, "POST",
                           f"{s.base}/negotiations/{ack['providerPid']}/agreement/verification",
                           {"@context": CTX, "@type": "ContractAgreementVerificationMessage",
                            "consumerPid": body["consumerPid"],
                            "providerPid": ack["providerPid"]}, peer.token(s.provider_did))
    assert status == 200
    assert (await peer.next_message(f"/negotiations/{body['consumerPid']}/events")
            )["eventType"] == "FINALIZED"
    # The echoed rules are enforced as ours: a transfer on this agreement is granted.
    status, tp = await call(http, "POST", f"{s.base}/transfers/request", {
        "@context": CTX, "@type": "TransferRequestMessage", "consumerPid": "urn:uuid:echo",
        "agreementId": agreement["@id"], "format": "HttpData-PULL",
        "callbackAddress": peer.callback}, peer.token(s.provider_did))
    assert status == 201, tp
    start = await peer.next_message("/transfers/urn:uuid:echo/start")
    assert start["@type"] == "TransferStartMessage"


async def test_a_callback_at_the_metadata_address_is_400_and_stores_nothing(
        http: aiohttp.ClientSession, space: Space) -> None:
    """SSRF (#4): we would POST the agreement to the callbackAddress; refuse it up front."""
    body = {**request_body(space.members), "callbackAddress": "http://169.254.169.254/x"}
    status, doc = await call(http, "POST", f"{space.base}/negotiations/request", body,
                             space.members.token(space.provider_did))
    assert status == 400 and doc["@type"] == "ContractNegotiationError", doc
    assert doc["consumerPid"] == body["consumerPid"]
    assert "callbackAddress 'http://169.254.169.254/x' refused: its host 169.254.169.254 is " \
        "a link-local address" in doc["reason"][0]
    assert body["consumerPid"] not in await provider_consumer_pids(http, space)
    transfer = {"@context": CTX, "@type": "TransferRequestMessage", "consumerPid": "urn:uuid:t2",
                "agreementId": "urn:uuid:any", "format": "HttpData-PULL",
                "callbackAddress": "http://[::ffff:169.254.169.254]/x"}
    status, doc = await call(http, "POST", f"{space.base}/transfers/request", transfer,
                             space.members.token(space.provider_did))
    assert status == 400 and doc["@type"] == "TransferError"
    assert "callbackAddress" in doc["reason"][0] and "link-local" in doc["reason"][0]


async def test_unknown_pid_is_404(http: aiohttp.ClientSession, space: Space) -> None:
    token = space.members.token(space.provider_did)
    status, doc = await call(http, "GET", f"{space.base}/negotiations/urn:uuid:nope", token=token)
    assert status == 404 and doc["@type"] == "ContractNegotiationError"
    body = {"@context": CTX, "@type": "ContractNegotiationTerminationMessage",
            "consumerPid": "urn:x", "providerPid": "urn:uuid:nope"}
    status, _ = await call(http, "POST", f"{space.base}/negotiations/urn:uuid:nope/termination",
                           body, space.members.token(space.provider_did))
    assert status == 404


async def test_foreign_pid_is_404(http: aiohttp.ClientSession, callbacks: Space) -> None:
    s = callbacks
    _, ppid = await open_negotiation(http, s, s.members)
    status, _ = await call(http, "GET", f"{s.base}/negotiations/{ppid}",
                           token=s.outsider.token(s.provider_did))
    assert status == 404  # exists, but not for this caller


async def test_illegal_transition_is_400_and_changes_nothing(http: aiohttp.ClientSession,
                                                             callbacks: Space) -> None:
    s = callbacks
    cpid, ppid, _ = await finalized(http, s, s.members)
    for path, body in [
        ("termination", {"@type": "ContractNegotiationTerminationMessage"}),
        ("events", {"@type": "ContractNegotiationEventMessage", "eventType": "ACCEPTED"}),
    ]:
        # Messages this negotiation never carried: new and illegal. (Its verification again,
        # under any @id, is the message already applied: acknowledged, test_redelivery.py.)
        msg = {"@context": CTX, "@id": f"urn:uuid:{uuid.uuid4()}", "consumerPid": cpid,
               "providerPid": ppid, **body}
        status, doc = await call(http, "POST", f"{s.base}/negotiations/{ppid}/{path}", msg,
                                 s.members.token(s.provider_did))
        assert status == 400, (path, doc)
        assert doc["@type"] == "ContractNegotiationError"
        assert (doc["consumerPid"], doc["providerPid"]) == (cpid, ppid)
        assert "FINALIZED" in doc["reason"][0]
    assert await state_of(http, s, s.members, ppid) == "FINALIZED"


def _forged_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.mark.parametrize("attack", ["missing", "garbage", "forged", "expired", "future",
                                    "wrong-audience", "replayed", "other-body",
                                    "unbound"])
async def test_bad_tokens_are_404_and_persist_nothing(http: aiohttp.ClientSession,
                                                      callbacks: Space, attack: str) -> None:
    s = callbacks
    m = s.members
    _, ppid = await open_negotiation(http, s, m)
    before = await state_of(http, s, m, ppid)
    now = int(time.time())
    tokens: dict[str, str | None] = {
        "missing": None,
        "garbage": "not-a-jwt",
        "forged": m.token(s.provider_did, key=_forged_key()),
        "expired": m.token(s.provider_did, now=now - 3600, ttl=60),
        "future": m.token(s.provider_did, now=now + 3600),
        "wrong-audience": m.token("did:web:someone-else"),
        # Bound to another message body, or to none (a pinned peer must bind it): a plain str
        # is sent as it is, not signed again for the body (``bound``).
        "other-body": m.token(s.provider_did).for_body(b'{"@type": "another message"}'),
        "unbound": m.token(s.provider_did)[:],
    }
    if attack == "replayed":
        token = m.token(s.provider_did)
        assert await state_of_with(http, s, ppid, token) == before  # first use is fine
        tokens["replayed"] = token
    token = tokens[attack]
    # An attempt to open a negotiation: refused, nothing persisted.
    body = request_body(m)
    status, doc = await call(http, "POST", f"{s.base}/negotiations/request", body, token)
    assert status == 404, doc
    assert doc["@type"] == "ContractNegotiationError"
    # An attempt to terminate an existing one: refused, state unchanged.
    msg = {"@context": CTX, "@type": "ContractNegotiationTerminationMessage",
           "consumerPid": body["consumerPid"], "providerPid": ppid}
    status, _ = await call(http, "POST", f"{s.base}/negotiations/{ppid}/termination", msg, token)
    assert status == 404
    assert await state_of(http, s, m, ppid) == before
    # The refused request created no negotiation under its consumerPid.
    assert body["consumerPid"] not in await provider_consumer_pids(http, s)


async def provider_consumer_pids(http: aiohttp.ClientSession, s: Space) -> set[str]:
    """The consumerPids of every negotiation the provider holds (its management API)."""
    port = int(s.provider.url.rsplit(":", 1)[1]) + 1
    token = (s.provider.dir / "keys" / "management.token").read_text().strip()
    async with http.get(f"http://127.0.0.1:{port}/api/negotiations",
                        headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200
        return {n["consumerPid"] for n in await resp.json()}


async def state_of_with(http: aiohttp.ClientSession, s: Space, pid: str, token: str) -> str:
    status, doc = await call(http, "GET", f"{s.base}/negotiations/{pid}", token=token)
    assert status == 200, doc
    return str(doc["state"])


async def test_catalog_refuses_bad_token_with_catalog_error(http: aiohttp.ClientSession,
                                                            space: Space) -> None:
    status, doc = await call(http, "POST", f"{space.base}/catalog/request",
                             {"@context": CTX, "@type": "CatalogRequestMessage"}, "nope")
    assert status == 401 and doc["@type"] == "CatalogError"


async def test_unknown_dataset_is_404_catalog_error(http: aiohttp.ClientSession,
                                                    space: Space) -> None:
    status, doc = await call(http, "GET", f"{space.base}/catalog/datasets/CAT0103",
                             token=space.members.token(space.provider_did))
    assert status == 404 and doc["@type"] == "CatalogError"


async def test_transfer_pull_and_bad_transfer_input(http: aiohttp.ClientSession,
                                                    callbacks: Space) -> None:
    s = callbacks
    m = s.members
    _, _, agreement_id = await finalized(http, s, m)
    cpid = f"urn:uuid:{uuid.uuid4()}"
    req = {"@context": CTX, "@type": "TransferRequestMessage", "consumerPid": cpid,
           "agreementId": agreement_id, "format": "HttpData-PULL", "callbackAddress": m.callback}
    status, ack = await call(http, "POST", f"{s.base}/transfers/request", req,
                             m.token(s.provider_did))
    assert status == 201 and ack["state"] == "REQUESTED"
    # Idempotent per consumerPid: the same request gets the same process.
    status, again = await call(http, "POST", f"{s.base}/transfers/request", req,
                               m.token(s.provider_did))
    assert status == 201 and again["providerPid"] == ack["providerPid"]
    start = await m.next_message(f"/transfers/{cpid}/start")
    props = {p["name"]: p["value"] for p in start["dataAddress"]["endpointProperties"]}
    endpoint = start["dataAddress"]["endpoint"]
    async with http.get(endpoint, headers={"Authorization": f"Bearer {props['authorization']}"}
                        ) as resp:
        assert resp.status == 200
        lines = (await resp.read()).splitlines()
    assert len(lines) == 10 and msgspec.json.decode(lines[0])["station"] == "example-1"
    # A wrong data token is refused.
    async with http.get(endpoint, headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 403
    # Completion, then anything else is an illegal transition.
    ppid = ack["providerPid"]
    pids = {"consumerPid": cpid, "providerPid": ppid}
    status, _ = await call(http, "POST", f"{s.base}/transfers/{ppid}/completion",
                           {"@context": CTX, "@type": "TransferCompletionMessage", **pids},
                           m.token(s.provider_did))
    assert status == 200
    status, doc = await call(http, "POST", f"{s.base}/transfers/{ppid}/suspension",
                             {"@context": CTX, "@type": "TransferSuspensionMessage", **pids},
                             m.token(s.provider_did))
    assert status == 400 and doc["@type"] == "TransferError"
    assert (doc["consumerPid"], doc["providerPid"]) == (cpid, ppid)
    # After completion the token no longer opens the data.
    async with http.get(endpoint, headers={"Authorization": f"Bearer {props['authorization']}"}
                        ) as resp:
        assert resp.status == 403


async def test_transfer_for_unknown_agreement_is_400(http: aiohttp.ClientSession,
                                                     space: Space) -> None:
    req = {"@context": CTX, "@type": "TransferRequestMessage", "consumerPid": "urn:uuid:t1",
           "agreementId": "urn:uuid:no-such-agreement", "format": "HttpData-PULL",
           "callbackAddress": space.members.callback}
    status, doc = await call(http, "POST", f"{space.base}/transfers/request", req,
                             space.members.token(space.provider_did))
    assert status == 400 and doc["@type"] == "TransferError"
    assert doc["consumerPid"] == "urn:uuid:t1"


async def test_data_token_refresh_is_idempotent_with_a_grace_window(
        http: aiohttp.ClientSession, callbacks: Space) -> None:
    s = callbacks
    m = s.members
    _, _, agreement_id = await finalized(http, s, m)
    cpid = f"urn:uuid:{uuid.uuid4()}"
    req = {"@context": CTX, "@type": "TransferRequestMessage", "consumerPid": cpid,
           "agreementId": agreement_id, "format": "HttpData-PULL", "callbackAddress": m.callback}
    status, _ = await call(http, "POST", f"{s.base}/transfers/request", req,
                           m.token(s.provider_did))
    assert status == 201
    start = await m.next_message(f"/transfers/{cpid}/start")
    props = {p["name"]: p["value"] for p in start["dataAddress"]["endpointProperties"]}
    endpoint, old = start["dataAddress"]["endpoint"], props["authorization"]

    async def refresh(token: str) -> tuple[int, dict[str, Any]]:
        async with http.post(f"{endpoint}/token",
                             headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, await resp.json()

    async def summary(token: str) -> int:
        async with http.get(f"{endpoint}/summary",
                            headers={"Authorization": f"Bearer {token}"}) as resp:
            await resp.read()
            return resp.status

    status, first = await refresh(old)
    assert status == 200 and first["token"] != old
    status, again = await refresh(old)  # the answer was "lost": asking again is harmless
    assert status == 200 and again["token"] == first["token"]
    assert await summary(old) == 200  # grace: the old token works until the new one is used
    assert await summary(first["token"]) == 200
    assert await summary(old) == 403  # the new one is in use: the old one is retired
    status, _ = await refresh(old)
    assert status == 403
