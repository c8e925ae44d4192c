"""The redelivery rule (``core.process``), cell by cell, on the core and on the services.

A message applied once and delivered again, in the state it produced or in any state the
process reaches after it, is acknowledged with no transition, no new timeline line and no
new outbox row. The same content under another ``@id`` is another message, the 400 of an
illegal transition, for the messages a process may carry twice (a request, an offer, a
transfer's start or suspension); for the others (an agreement, a verification, an event, a
completion, a termination) it is the same message. An initial request sent again returns the
process it opened.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
import pytest_asyncio

from connector.adapters.storage.sqlite import SqliteStore, migrations
from connector.core import codec, process
from connector.core import negotiation as cn
from connector.core import transfer as tp
from connector.core.errors import InvalidTransition, PeerError
from connector.core.messages import (
    ContractAgreementMessage,
    ContractAgreementVerificationMessage,
    ContractNegotiation,
    ContractNegotiationEventMessage,
    ContractNegotiationTerminationMessage,
    ContractOfferMessage,
    ContractRequestMessage,
    NegotiationMessage,
    TransferMessage,
    TransferProcess,
    TransferRequestMessage,
)
from connector.core.negotiation import Negotiation, NegotiationEvent, NegotiationState
from connector.core.process import Role
from connector.core.transfer import Transfer, TransferEvent, TransferState
from connector.service.catalog import Claims
from connector.service.negotiations import NegotiationService
from connector.service.outbox import Outbox
from connector.service.store import Agreement, OutboxItem
from connector.service.transfers import TransferService

OFFER = {"@id": "urn:offer:1", "@type": "Offer", "target": "ds", "permission": [{"action": "use"}]}
PIDS = {"consumer_pid": "urn:c", "provider_pid": "urn:p"}
PEER = "did:web:peer"

NEG_CELLS = [(s, st, e) for (s, st, e) in cn.TRANSITIONS if st is not None]
TP_CELLS = [(s, st, e) for (s, st, e) in tp.TRANSITIONS if st is not None]

# DSP 2025-1 §CN 1.2 and §TP 1.2, read by hand: the messages a process can carry twice.
TWICE_NEG = {(Role.CONSUMER, NegotiationEvent.REQUEST), (Role.PROVIDER, NegotiationEvent.OFFER)}
TWICE_TP = {(r, e) for r in Role for e in (TransferEvent.START, TransferEvent.SUSPEND)}

REFUSED = PeerError("POST … answered 400", peer_status=400)


def _ids(cells: list[Any]) -> list[str]:
    return [f"{s.value}-{st.value}-{e.name}" for s, st, e in cells]


def negotiation_message(event: NegotiationEvent) -> NegotiationMessage:
    if event is NegotiationEvent.REQUEST:
        return ContractRequestMessage(offer=OFFER, **PIDS)
    if event is NegotiationEvent.OFFER:
        return ContractOfferMessage(offer=OFFER, **PIDS)
    if event is NegotiationEvent.AGREE:
        agreement = cn.build_agreement(OFFER, agreement_id="urn:a", dataset_id="ds",
                                       assigner="did:p", assignee="did:c",
                                       timestamp="2026-01-01T00:00:00Z")
        return ContractAgreementMessage(agreement=agreement, **PIDS)
    if event is NegotiationEvent.VERIFY:
        return ContractAgreementVerificationMessage(**PIDS)
    if event is NegotiationEvent.ACCEPT:
        return ContractNegotiationEventMessage(event_type="ACCEPTED", **PIDS)
    if event is NegotiationEvent.FINALIZE:
        return ContractNegotiationEventMessage(event_type="FINALIZED", **PIDS)
    return ContractNegotiationTerminationMessage(code="x", reason=["because"], **PIDS)


def negotiation(role: Role, state: NegotiationState) -> Negotiation:
    return Negotiation(id="urn:c" if role is Role.CONSUMER else "urn:p", role=role, state=state,
                       dataset_id="ds", offer=OFFER, counterparty_address="https://peer/dsp",
                       counterparty_id=PEER, **PIDS)


def transfer(role: Role, state: TransferState) -> Transfer:
    return Transfer(id="urn:c" if role is Role.CONSUMER else "urn:p", role=role, state=state,
                    agreement_id="urn:a", format="HttpData-PULL",
                    counterparty_address="https://peer/dsp", counterparty_id=PEER, **PIDS)


def transfer_message(record: Transfer, event: TransferEvent) -> TransferMessage:
    address = tp.pull_address("https://p/data", "token-1")
    return tp.message_for(record, event, reason="r",
                          data_address=address if event is TransferEvent.START else None)


def reachable(table: Any, start: Any) -> set[Any]:
    """Every state the table reaches from ``start``, by any move of either party."""
    seen, frontier = {start}, [start]
    while frontier:
        state = frontier.pop()
        for (_, before, _), after in table.items():
            if before is state and after not in seen:
                seen.add(after)
                frontier.append(after)
    return seen


# -- the core: every cell, in every state the process reaches after it ------------------------


@pytest.mark.parametrize(("sender", "state", "event"), NEG_CELLS, ids=_ids(NEG_CELLS))
def test_negotiation_message_again_in_every_later_state(
        sender: Role, state: NegotiationState, event: NegotiationEvent) -> None:
    msg = negotiation_message(event)
    applied = cn.apply(negotiation(sender.other, state), sender, msg, 1.0, message_id="urn:m:1")
    for later in reachable(cn.TRANSITIONS, applied.state):
        record = msgspec.structs.replace(applied, state=later)
        legal = (sender, later, event) in cn.TRANSITIONS
        assert cn.is_redelivery(record, sender, msg, "urn:m:1") is not legal, later
        # under another @id: another message if the process can carry it twice
        new_id = not legal and (sender, event) not in TWICE_NEG
        assert cn.is_redelivery(record, sender, msg, "urn:m:2") is new_id
        assert not cn.is_redelivery(record, sender.other, msg, "urn:m:1")  # not its sender
        if not legal:
            with pytest.raises(InvalidTransition) as info:  # still the spec's 400
                cn.apply(record, sender, msg, 2.0, message_id="urn:m:2")
            assert info.value.status == 400


@pytest.mark.parametrize(("sender", "state", "event"), TP_CELLS, ids=_ids(TP_CELLS))
def test_transfer_message_again_in_every_later_state(
        sender: Role, state: TransferState, event: TransferEvent) -> None:
    record = transfer(sender.other, state)
    msg = transfer_message(record, event)
    applied = tp.apply(record, sender, msg, 1.0)
    for later in reachable(tp.TRANSITIONS, applied.state):
        record = msgspec.structs.replace(applied, state=later)
        legal = (sender, later, event) in tp.TRANSITIONS
        assert tp.is_redelivery(record, sender, msg) is not legal, later
        new_id = not legal and (sender, event) not in TWICE_TP
        assert tp.is_redelivery(record, sender, msg, "urn:m:2") is new_id
        assert not tp.is_redelivery(record, sender.other, msg)
        if not legal:
            with pytest.raises(InvalidTransition) as info:
                tp.apply(record, sender, msg, 2.0, message_id="urn:m:2")
            assert info.value.status == 400


def test_different_content_is_not_a_repeat() -> None:
    record = negotiation(Role.CONSUMER, NegotiationState.REQUESTED)
    agreement = negotiation_message(NegotiationEvent.AGREE)
    record = cn.apply(record, Role.PROVIDER, agreement, 1.0)
    assert isinstance(agreement, ContractAgreementMessage)
    other = msgspec.structs.replace(agreement, agreement={**agreement.agreement, "@id": "urn:b"})
    assert cn.is_redelivery(record, Role.PROVIDER, agreement)
    assert not cn.is_redelivery(record, Role.PROVIDER, other)


def test_the_peer_took_it_when_its_state_is_ours_or_past_it_by_its_own_moves() -> None:
    verified = negotiation(Role.CONSUMER, NegotiationState.VERIFIED)
    assert cn.peer_took_it(verified, "VERIFIED")
    assert cn.peer_took_it(verified, "FINALIZED")  # the provider's own move after VERIFIED
    assert not cn.peer_took_it(verified, "AGREED")  # behind us: it did not take it
    assert not cn.peer_took_it(verified, "TERMINATED")  # terminated: we end too
    assert not cn.peer_took_it(verified, "NONSENSE")
    started = transfer(Role.PROVIDER, TransferState.STARTED)
    assert tp.peer_took_it(started, "STARTED") and tp.peer_took_it(started, "COMPLETED")
    assert not tp.peer_took_it(started, "REQUESTED")


# -- the services, on the SQLite store: no transition, no timeline line, no outbox row --------


class Seams:
    def __init__(self, store: SqliteStore, answers: dict[str, tuple[int, bytes]]) -> None:
        self.store = store
        self.answers = answers
        self.sent: list[str] = []
        self.outbox = Outbox(store, self.send, fetch=self.fetch)

    async def send(self, item: OutboxItem) -> bytes:
        self.sent.append(item.url)
        return b"{}"

    async def fetch(self, url: str, audience: str) -> tuple[int, bytes]:
        return self.answers.get(url, (404, b"{}"))

    def negotiations(self, automatic: bool = False) -> NegotiationService:
        return NegotiationService(store=self.store, catalog=FakeCatalog, outbox=self.outbox,
                                  did="did:web:us", dsp_base="https://us/dsp", clock=lambda: 5.0,
                                  automatic=automatic)

    def transfers(self) -> TransferService:
        return TransferService(store=self.store, catalog=FakeCatalog, outbox=self.outbox,
                               did="did:web:us", dsp_base="https://us/dsp",
                               data_url="https://us/data", token_ttl_s=60,
                               claims_for=lambda did: Claims(participant_id=did, attributes={}),
                               clock=lambda: 5.0, automatic=False)


class FakeOffer:
    id = "urn:offer:1"
    dataset_id = "ds"

    def body(self, with_target: bool = False) -> dict[str, Any]:
        return dict(OFFER)


class FakeEntry:
    offered_formats = ("HttpData-PULL",)


class FakeCatalog:
    entries: ClassVar[dict[str, FakeEntry]] = {"ds": FakeEntry()}

    @staticmethod
    def find_offer(offer_id: str | None) -> FakeOffer | None:
        return FakeOffer() if offer_id == FakeOffer.id else None


@pytest_asyncio.fixture
async def seams(tmp_path: Path) -> AsyncIterator[Seams]:
    store = await SqliteStore.open(tmp_path / "db.sqlite")
    seams = Seams(store, {})
    yield seams
    await seams.outbox.close()
    await store.close()


CLAIMS = Claims(participant_id=PEER, attributes={})


@pytest.mark.parametrize(("sender", "state", "event"), NEG_CELLS, ids=_ids(NEG_CELLS))
async def test_negotiation_service_acknowledges_a_repeat(
        seams: Seams, sender: Role, state: NegotiationState, event: NegotiationEvent) -> None:
    record = negotiation(sender.other, state)
    await seams.store.save_negotiation(record, expect_new=True)
    service = seams.negotiations()
    msg = negotiation_message(event)
    first = await service.on_message(record.id, msg, CLAIMS, message_id="urn:m:1")
    rows = len(await seams.store.pending_outbox())
    again = await service.on_message(record.id, msg, CLAIMS, message_id="urn:m:1")
    assert again == first == await seams.store.get_negotiation(record.id)
    assert again.ack() == first.ack()
    assert len(await seams.store.pending_outbox()) == rows
    if (sender, event) in TWICE_NEG:  # the same content under another @id: a 400
        with pytest.raises(InvalidTransition):
            await service.on_message(record.id, msg, CLAIMS, message_id="urn:m:2")
    else:  # a message sent once per process, sent again under a new @id (EDC 0.15)
        assert await service.on_message(record.id, msg, CLAIMS, message_id="urn:m:2") == first
    assert await seams.store.get_negotiation(record.id) == first
    assert len(await seams.store.pending_outbox()) == rows


@pytest.mark.parametrize(("sender", "state", "event"), TP_CELLS, ids=_ids(TP_CELLS))
async def test_transfer_service_acknowledges_a_repeat(
        seams: Seams, sender: Role, state: TransferState, event: TransferEvent) -> None:
    record = transfer(sender.other, state)
    await seams.store.save_transfer(record, expect_new=True)
    service = seams.transfers()
    msg = transfer_message(record, event)
    first = await service.on_message(record.id, msg, CLAIMS)
    rows = len(await seams.store.pending_outbox())
    again = await service.on_message(record.id, msg, CLAIMS)
    assert again == first == await seams.store.get_transfer(record.id)
    assert len(await seams.store.pending_outbox()) == rows
    if (sender, event) in TWICE_TP:
        with pytest.raises(InvalidTransition):
            await service.on_message(record.id, msg, CLAIMS, message_id="urn:m:2")
    else:
        assert await service.on_message(record.id, msg, CLAIMS, message_id="urn:m:2") == first
    assert await seams.store.get_transfer(record.id) == first
    assert len(await seams.store.pending_outbox()) == rows


@pytest.mark.parametrize("second_id", ["urn:m:1", "urn:m:2"])
async def test_a_verification_again_after_finalized_is_acknowledged(
        seams: Seams, second_id: str) -> None:
    """Issue sequence (b), on the provider: VERIFIED -> FINALIZED (sent), then the
    consumer's verification once more: acknowledged FINALIZED, nothing sent again. EDC 0.15
    sends it again under its first @id or under a new one (``make interop-015``)."""
    record = negotiation(Role.PROVIDER, NegotiationState.AGREED)
    agreement = negotiation_message(NegotiationEvent.AGREE)
    assert isinstance(agreement, ContractAgreementMessage)
    record = msgspec.structs.replace(record, agreement=agreement.agreement)
    await seams.store.save_negotiation(record, expect_new=True)
    service = seams.negotiations(automatic=True)
    verification = negotiation_message(NegotiationEvent.VERIFY)
    first = await service.on_message(record.id, verification, CLAIMS, message_id="urn:m:1")
    assert first.state is NegotiationState.FINALIZED
    rows = await seams.store.pending_outbox()
    again = await service.on_message(record.id, verification, CLAIMS, message_id=second_id)
    assert again.state is NegotiationState.FINALIZED
    assert await seams.store.pending_outbox() == rows
    assert [a.id for a in await seams.store.list_agreements()] == ["urn:a"]


def test_the_messages_a_process_carries_twice_are_read_from_its_table() -> None:
    assert cn.REPEATABLE == TWICE_NEG
    assert tp.REPEATABLE == TWICE_TP


def test_a_line_written_with_its_id_still_recognises_its_repeat() -> None:
    """Before the rule looked at ``repeatable``, every line's digest held the @id: a record in
    flight across the upgrade still knows the repeat under that @id, as before."""
    msg = negotiation_message(NegotiationEvent.VERIFY)
    record = negotiation(Role.PROVIDER, NegotiationState.VERIFIED)
    old = process.HistoryEntry(at=1.0, by="consumer", message=NegotiationEvent.VERIFY.value,
                               state="VERIFIED", digest=process.message_digest(msg, "urn:m:1"))
    record = msgspec.structs.replace(record, history=[old])
    assert cn.is_redelivery(record, Role.CONSUMER, msg, "urn:m:1")
    assert not cn.is_redelivery(record, Role.CONSUMER, msg, "urn:m:2")


# -- initial requests: the process they opened, whatever the race ----------------------------


def contract_request(consumer_pid: str = "urn:c") -> ContractRequestMessage:
    return ContractRequestMessage(consumer_pid=consumer_pid, offer={"@id": "urn:offer:1"},
                                  callback_address="https://peer.example/dsp")


async def test_an_initial_request_again_gets_the_same_negotiation(seams: Seams) -> None:
    service = seams.negotiations()
    first = await service.on_initial_request(contract_request(), CLAIMS)
    again = await service.on_initial_request(contract_request(), CLAIMS)
    assert again.id == first.id and again.ack() == first.ack()
    assert [n.id for n in await seams.store.list_negotiations()] == [first.id]


async def test_an_initial_offer_again_gets_the_same_negotiation(seams: Seams) -> None:
    offer = ContractOfferMessage(provider_pid="urn:p", offer=OFFER,
                                 callback_address="https://peer.example/dsp")
    one, two = seams.negotiations(), seams.negotiations()  # two replicas on one store
    results = await asyncio.gather(one.on_initial_offer(offer, CLAIMS),
                                   two.on_initial_offer(offer, CLAIMS),
                                   one.on_initial_offer(offer, CLAIMS))
    assert len({r.id for r in results}) == 1 and results[0].state is NegotiationState.OFFERED
    assert len(await seams.store.list_negotiations()) == 1
    other = msgspec.structs.replace(offer, provider_pid="urn:p2")  # another offer: another one
    assert (await one.on_initial_offer(other, CLAIMS)).id != results[0].id


async def test_concurrent_identical_initial_requests_open_one_negotiation(seams: Seams) -> None:
    one, two = seams.negotiations(), seams.negotiations()  # two replicas on one store
    results = await asyncio.gather(
        one.on_initial_request(contract_request(), CLAIMS),
        two.on_initial_request(contract_request(), CLAIMS),
        one.on_initial_request(contract_request(), CLAIMS))
    assert len({r.id for r in results}) == 1
    assert len(await seams.store.list_negotiations()) == 1


async def test_another_peers_consumer_pid_is_another_negotiation(seams: Seams) -> None:
    service = seams.negotiations()
    mine = await service.on_initial_request(contract_request(), CLAIMS)
    theirs = await service.on_initial_request(
        contract_request(), Claims(participant_id="did:web:other", attributes={}))
    assert mine.id != theirs.id


async def test_a_transfer_request_again_gets_the_same_transfer(seams: Seams) -> None:
    owner = msgspec.structs.replace(negotiation(Role.PROVIDER, NegotiationState.FINALIZED),
                                    id="urn:n")
    await seams.store.save_negotiation(owner, expect_new=True, agreement=Agreement(
        id="urn:a", negotiation_id="urn:n", role="provider", dataset_id="ds",
        assigner="did:web:us", assignee=PEER, created_at=1.0, body={"@id": "urn:a"}))
    service, replica = seams.transfers(), seams.transfers()
    request = TransferRequestMessage(consumer_pid="urn:tc", agreement_id="urn:a",
                                     format="HttpData-PULL",
                                     callback_address="https://peer.example/dsp")
    results = await asyncio.gather(*(s.on_request(request, CLAIMS)
                                     for s in (service, replica, service)))
    assert len({r.id for r in results}) == 1
    assert len(await seams.store.list_transfers()) == 1


async def test_the_store_refuses_a_second_process_for_one_peer_pid(seams: Seams) -> None:
    await seams.store.save_negotiation(negotiation(Role.PROVIDER, NegotiationState.REQUESTED),
                                       expect_new=True)
    twin = msgspec.structs.replace(negotiation(Role.PROVIDER, NegotiationState.REQUESTED),
                                   id="urn:p2", provider_pid="urn:p2")
    from connector.core.errors import ConflictError

    with pytest.raises(ConflictError):
        await seams.store.save_negotiation(twin, expect_new=True)
    found = await seams.store.find_negotiation(counterparty=PEER, consumer_pid="urn:c",
                                               role="provider")
    assert found is not None and found.id == "urn:p"


def test_migration_keeps_duplicates_written_before_it(tmp_path: Path) -> None:
    """A database written before the unique key may hold a re-delivered request's second
    process: the migration keeps both rows, and the first owns the key."""
    path = tmp_path / "db.sqlite"
    db = sqlite3.connect(path)
    for number, sql in migrations():
        if number < 6:
            db.executescript(f"{sql}\nPRAGMA user_version = {number};")
    for pid in ("urn:p1", "urn:p2"):
        record = msgspec.structs.replace(negotiation(Role.PROVIDER, NegotiationState.REQUESTED),
                                         id=pid, provider_pid=pid)
        db.execute("INSERT INTO negotiations (id, role, state, consumer_pid, provider_pid,"
                   " counterparty, dataset_id, updated_at, body) VALUES (?,?,?,?,?,?,?,?,?)",
                   (pid, "provider", "REQUESTED", "urn:c", pid, PEER, "ds", 1.0,
                    msgspec.json.encode(record)))
    db.commit()
    db.close()

    async def check() -> None:
        store = await SqliteStore.open(path)
        assert len(await store.list_negotiations()) == 2
        found = await store.find_negotiation(counterparty=PEER, consumer_pid="urn:c",
                                             role="provider")
        assert found is not None and found.id == "urn:p1"
        await store.close()

    asyncio.run(check())


# -- a refusal of what the peer already holds ends nothing -------------------------------------


async def test_a_refused_repeat_the_peer_already_took_keeps_the_negotiation(
        seams: Seams) -> None:
    record = negotiation(Role.CONSUMER, NegotiationState.VERIFIED)
    await seams.store.save_negotiation(record, expect_new=True)
    seams.answers["https://peer/dsp/negotiations/urn:p"] = (200, codec.encode(
        ContractNegotiation(state="FINALIZED", **PIDS)))
    await seams.negotiations().on_delivery_failed(record.id, REFUSED)
    kept = await seams.store.get_negotiation(record.id)
    assert kept is not None and kept.state is NegotiationState.VERIFIED


@pytest.mark.parametrize("answer", [(200, "AGREED"), (200, "TERMINATED"), (404, None),
                                    (200, "garbage")])
async def test_a_refusal_the_peer_does_not_explain_terminates(
        seams: Seams, answer: tuple[int, str | None]) -> None:
    record = negotiation(Role.CONSUMER, NegotiationState.VERIFIED)
    await seams.store.save_negotiation(record, expect_new=True)
    status, state = answer
    body = codec.encode(ContractNegotiation(state=state, **PIDS)) if state else b"{}"
    seams.answers["https://peer/dsp/negotiations/urn:p"] = (status, body)
    await seams.negotiations().on_delivery_failed(record.id, REFUSED)
    ended = await seams.store.get_negotiation(record.id)
    assert ended is not None and ended.state is NegotiationState.TERMINATED


async def test_a_refused_transfer_message_the_peer_took_keeps_the_transfer(
        seams: Seams) -> None:
    record = transfer(Role.PROVIDER, TransferState.STARTED)
    await seams.store.save_transfer(record, expect_new=True)
    seams.answers["https://peer/dsp/transfers/urn:c"] = (200, codec.encode(
        TransferProcess(state="STARTED", **PIDS)))
    await seams.transfers().on_delivery_failed(record.id, REFUSED)
    kept = await seams.store.get_transfer(record.id)
    assert kept is not None and kept.state is TransferState.STARTED
    seams.answers.clear()
    await seams.transfers().on_delivery_failed(record.id, REFUSED)
    ended = await seams.store.get_transfer(record.id)
    assert ended is not None and ended.state is TransferState.TERMINATED
