"""Two cores played against each other: a consumer record and a provider record.

Each message is first judged by the sender's own table (an illegal send is refused before it
leaves, as h11's LocalProtocolError), then applied by the receiver. Invariants: only protocol
errors escape, both sides always agree on the state, terminal states stay terminal.
"""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.core import negotiation as cn
from connector.core import transfer as tp
from connector.core.errors import InvalidTransition, ProtocolError
from connector.core.messages import (
    ContractAgreementMessage,
    ContractAgreementVerificationMessage,
    ContractNegotiationEventMessage,
    ContractNegotiationTerminationMessage,
    ContractOfferMessage,
    ContractRequestMessage,
    NegotiationMessage,
    TransferMessage,
)
from connector.core.negotiation import Negotiation, NegotiationEvent, NegotiationState, Role
from connector.core.transfer import Transfer, TransferEvent, TransferState

OFFER = {"@id": "urn:offer:1", "@type": "Offer", "target": "ds", "permission": [{"action": "use"}]}


def _pair(state: NegotiationState) -> tuple[Negotiation, Negotiation]:
    common = {"state": state, "consumer_pid": "urn:c", "provider_pid": "urn:p",
              "dataset_id": "ds", "offer": OFFER}
    consumer = Negotiation(id="urn:c", role=Role.CONSUMER, counterparty_address="https://p",
                           **common)  # type: ignore[arg-type]
    provider = Negotiation(id="urn:p", role=Role.PROVIDER, counterparty_address="https://c",
                           **common)  # type: ignore[arg-type]
    return consumer, provider


def _message(event: NegotiationEvent) -> NegotiationMessage:
    pids = {"consumer_pid": "urn:c", "provider_pid": "urn:p"}
    if event is NegotiationEvent.REQUEST:
        return ContractRequestMessage(offer=OFFER, **pids)
    if event is NegotiationEvent.OFFER:
        return ContractOfferMessage(offer=OFFER, **pids)
    if event is NegotiationEvent.AGREE:
        agreement = cn.build_agreement(OFFER, agreement_id="urn:a", dataset_id="ds",
                                       assigner="did:p", assignee="did:c",
                                       timestamp="2026-01-01T00:00:00Z")
        return ContractAgreementMessage(agreement=agreement, **pids)
    if event is NegotiationEvent.VERIFY:
        return ContractAgreementVerificationMessage(**pids)
    if event is NegotiationEvent.ACCEPT:
        return ContractNegotiationEventMessage(event_type="ACCEPTED", **pids)
    if event is NegotiationEvent.FINALIZE:
        return ContractNegotiationEventMessage(event_type="FINALIZED", **pids)
    return ContractNegotiationTerminationMessage(code="x", reason=["because"], **pids)


def _exchange(consumer: Negotiation, provider: Negotiation, sender: Role,
              event: NegotiationEvent, now: float) -> tuple[Negotiation, Negotiation, bool]:
    """Send one message; returns the new records and whether it was sent."""
    msg = _message(event)
    mine = consumer if sender is Role.CONSUMER else provider
    try:
        mine = cn.apply(mine, sender, msg, now)  # the sender's own table first
    except InvalidTransition:
        return consumer, provider, False
    theirs = provider if sender is Role.CONSUMER else consumer
    theirs = cn.apply(theirs, sender, msg, now)  # must succeed: both were in the same state
    if sender is Role.CONSUMER:
        return mine, theirs, True
    return theirs, mine, True


def test_happy_path_consumer_initiated() -> None:
    consumer, provider = _pair(NegotiationState.REQUESTED)
    script = [(Role.PROVIDER, NegotiationEvent.OFFER), (Role.CONSUMER, NegotiationEvent.ACCEPT),
              (Role.PROVIDER, NegotiationEvent.AGREE), (Role.CONSUMER, NegotiationEvent.VERIFY),
              (Role.PROVIDER, NegotiationEvent.FINALIZE)]
    for i, (sender, event) in enumerate(script):
        consumer, provider, sent = _exchange(consumer, provider, sender, event, float(i))
        assert sent
        assert consumer.state is provider.state
    assert consumer.state is NegotiationState.FINALIZED
    assert consumer.agreement == provider.agreement
    assert consumer.agreement is not None and consumer.agreement["assignee"] == "did:c"


def test_termination_records_the_reason_on_both_sides() -> None:
    consumer, provider = _pair(NegotiationState.REQUESTED)
    consumer, provider, sent = _exchange(consumer, provider, Role.PROVIDER,
                                         NegotiationEvent.TERMINATE, 1.0)
    assert sent and consumer.state is provider.state is NegotiationState.TERMINATED
    assert consumer.reason == provider.reason == "x: because"


events = st.tuples(st.sampled_from(list(Role)), st.sampled_from(list(NegotiationEvent)))


@settings(max_examples=400, deadline=None)
@given(start=st.sampled_from([NegotiationState.REQUESTED, NegotiationState.OFFERED]),
       script=st.lists(events, max_size=25))
def test_random_negotiation_sequences(start: NegotiationState,
                                      script: list[tuple[Role, NegotiationEvent]]) -> None:
    consumer, provider = _pair(start)
    for i, (sender, event) in enumerate(script):
        before = consumer.state
        try:
            consumer, provider, sent = _exchange(consumer, provider, sender, event, float(i))
        except ProtocolError as exc:  # only protocol errors may escape
            raise AssertionError(f"receiver refused an allowed send: {exc}") from exc
        assert consumer.state is provider.state
        if before.terminal:
            assert not sent and consumer.state is before


# -- transfer ---------------------------------------------------------------------------------


def _tpair(state: TransferState) -> tuple[Transfer, Transfer]:
    common = {"state": state, "consumer_pid": "urn:c", "provider_pid": "urn:p",
              "agreement_id": "urn:a", "format": "HttpData-PULL"}
    return (Transfer(id="urn:c", role=Role.CONSUMER, counterparty_address="https://p",
                     **common),  # type: ignore[arg-type]
            Transfer(id="urn:p", role=Role.PROVIDER, counterparty_address="https://c",
                     **common))  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(script=st.lists(st.tuples(st.sampled_from(list(Role)),
                                 st.sampled_from([e for e in TransferEvent
                                                  if e is not TransferEvent.REQUEST])),
                       max_size=25))
def test_random_transfer_sequences(script: list[tuple[Role, TransferEvent]]) -> None:
    consumer, provider = _tpair(TransferState.REQUESTED)
    for i, (sender, event) in enumerate(script):
        mine, theirs = (consumer, provider) if sender is Role.CONSUMER else (provider, consumer)
        msg: TransferMessage = tp.message_for(mine, event, reason="r")
        before = mine.state
        try:
            mine = tp.apply(mine, sender, msg, float(i))
        except InvalidTransition:
            assert mine.state is before
            continue
        assert not before.terminal
        theirs = tp.apply(theirs, sender, msg, float(i))
        consumer, provider = (mine, theirs) if sender is Role.CONSUMER else (theirs, mine)
        assert consumer.state is provider.state


def test_the_same_agreement_sent_again_is_a_redelivery_not_a_transition() -> None:
    consumer, _ = _pair(NegotiationState.REQUESTED)
    agreement = _message(NegotiationEvent.AGREE)
    assert not cn.is_redelivery(consumer, Role.PROVIDER, agreement)  # not held yet
    consumer = cn.apply(consumer, Role.PROVIDER, agreement, 1.0)
    for state in (NegotiationState.AGREED, NegotiationState.VERIFIED, NegotiationState.FINALIZED):
        held = msgspec.structs.replace(consumer, state=state)
        assert cn.is_redelivery(held, Role.PROVIDER, agreement)
        try:  # as a transition it is illegal: the table is not loosened
            cn.apply(held, Role.PROVIDER, agreement, 2.0)
            raise AssertionError("a second agreement must not apply")
        except InvalidTransition:
            pass
    assert isinstance(agreement, ContractAgreementMessage)
    other = ContractAgreementMessage(consumer_pid="urn:c", provider_pid="urn:p",
                                     agreement={**agreement.agreement, "@id": "urn:other"})
    assert not cn.is_redelivery(consumer, Role.PROVIDER, other)  # a different agreement
    assert not cn.is_redelivery(consumer, Role.CONSUMER, agreement)  # not from the provider
    # Any later state, terminal ones included (core.process): the ack then says TERMINATED.
    terminated = msgspec.structs.replace(consumer, state=NegotiationState.TERMINATED)
    assert cn.is_redelivery(terminated, Role.PROVIDER, agreement)
    # A negotiation carries one agreement: the same content under another @id is the same
    # agreement sent again (core.process); only a request or an offer needs its @id too.
    assert cn.is_redelivery(consumer, Role.PROVIDER, agreement, None)
    assert cn.is_redelivery(consumer, Role.PROVIDER, agreement, "urn:message:2")


def test_the_same_start_sent_again_is_a_redelivery_not_a_transition() -> None:
    from connector.core.messages import TransferStartMessage

    consumer = Transfer(id="urn:c", role=Role.CONSUMER, counterparty_address="https://p",
                        state=TransferState.REQUESTED, consumer_pid="urn:c", provider_pid="urn:p",
                        agreement_id="urn:a", format="HttpData-PULL")
    start = TransferStartMessage(consumer_pid="urn:c", provider_pid="urn:p",
                                 data_address=tp.pull_address("https://p/data", "t1"))
    assert not tp.is_redelivery(consumer, Role.PROVIDER, start)
    consumer = tp.apply(consumer, Role.PROVIDER, start, 1.0)
    assert tp.is_redelivery(consumer, Role.PROVIDER, start)
    try:  # as a transition it is illegal: the table is not loosened
        tp.apply(consumer, Role.PROVIDER, start, 2.0)
        raise AssertionError("a second Start must not apply while STARTED")
    except InvalidTransition:
        pass
    other = TransferStartMessage(consumer_pid="urn:c", provider_pid="urn:p",
                                 data_address=tp.pull_address("https://p/data", "t2"))
    assert not tp.is_redelivery(consumer, Role.PROVIDER, other)  # another token: not the same
    suspended = msgspec.structs.replace(consumer, state=TransferState.SUSPENDED)
    assert not tp.is_redelivery(suspended, Role.PROVIDER, start)  # a resume is a transition
