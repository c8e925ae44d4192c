"""Every (sender role, state, message) cell of both DSP state tables: a transition or a 400."""

from __future__ import annotations

import itertools

import pytest

from connector.core import negotiation as cn
from connector.core import transfer as tp
from connector.core.errors import InvalidTransition
from connector.core.negotiation import NegotiationEvent, NegotiationState, Role
from connector.core.transfer import TransferEvent, TransferState

S, E, C, P = NegotiationState, NegotiationEvent, Role.CONSUMER, Role.PROVIDER

# The DSP 2025-1 §CN 1.2 table, written out again independently of the code under test.
EXPECTED_CN = {
    (C, None, E.REQUEST): S.REQUESTED,
    (P, None, E.OFFER): S.OFFERED,
    (P, S.REQUESTED, E.OFFER): S.OFFERED,
    (P, S.REQUESTED, E.AGREE): S.AGREED,
    (C, S.OFFERED, E.REQUEST): S.REQUESTED,
    (C, S.OFFERED, E.ACCEPT): S.ACCEPTED,
    (P, S.ACCEPTED, E.AGREE): S.AGREED,
    (C, S.AGREED, E.VERIFY): S.VERIFIED,
    (P, S.VERIFIED, E.FINALIZE): S.FINALIZED,
}
for _role in Role:
    for _state in (S.REQUESTED, S.OFFERED, S.ACCEPTED, S.AGREED, S.VERIFIED):
        EXPECTED_CN[(_role, _state, E.TERMINATE)] = S.TERMINATED

T, TE = TransferState, TransferEvent
EXPECTED_TP = {
    (C, None, TE.REQUEST): T.REQUESTED,
    (P, T.REQUESTED, TE.START): T.STARTED,
}
for _role in Role:
    EXPECTED_TP[(_role, T.REQUESTED, TE.TERMINATE)] = T.TERMINATED
    EXPECTED_TP[(_role, T.STARTED, TE.COMPLETE)] = T.COMPLETED
    EXPECTED_TP[(_role, T.STARTED, TE.SUSPEND)] = T.SUSPENDED
    EXPECTED_TP[(_role, T.STARTED, TE.TERMINATE)] = T.TERMINATED
    EXPECTED_TP[(_role, T.SUSPENDED, TE.START)] = T.STARTED
    EXPECTED_TP[(_role, T.SUSPENDED, TE.TERMINATE)] = T.TERMINATED

CN_CELLS = list(itertools.product(Role, [None, *NegotiationState], NegotiationEvent))
TP_CELLS = list(itertools.product(Role, [None, *TransferState], TransferEvent))


@pytest.mark.parametrize(("role", "state", "event"), CN_CELLS,
                         ids=[f"{r.value}-{s.value if s else 'new'}-{e.name}"
                              for r, s, e in CN_CELLS])
def test_negotiation_cell(role: Role, state: NegotiationState | None,
                          event: NegotiationEvent) -> None:
    expected = EXPECTED_CN.get((role, state, event))
    if expected is None:
        with pytest.raises(InvalidTransition) as info:
            cn.target_state(role, state, event, consumer_pid="c", provider_pid="p")
        assert info.value.status == 400
        assert role.value in info.value.message and event.value in info.value.message
        assert (info.value.consumer_pid, info.value.provider_pid) == ("c", "p")
    else:
        assert cn.target_state(role, state, event) is expected


@pytest.mark.parametrize(("role", "state", "event"), TP_CELLS,
                         ids=[f"{r.value}-{s.value if s else 'new'}-{e.name}"
                              for r, s, e in TP_CELLS])
def test_transfer_cell(role: Role, state: TransferState | None, event: TransferEvent) -> None:
    expected = EXPECTED_TP.get((role, state, event))
    if expected is None:
        with pytest.raises(InvalidTransition) as info:
            tp.target_state(role, state, event)
        assert info.value.status == 400
    else:
        assert tp.target_state(role, state, event) is expected


def test_tables_have_no_extra_cells() -> None:
    assert dict(cn.TRANSITIONS) == EXPECTED_CN
    assert dict(tp.TRANSITIONS) == EXPECTED_TP


def test_terminal_states_accept_nothing() -> None:
    for (_, state, _), _ in cn.TRANSITIONS.items():
        assert state is None or not state.terminal
    for (_, tstate, _), _ in tp.TRANSITIONS.items():
        assert tstate is None or not tstate.terminal


def test_error_message_names_role_state_and_message() -> None:
    with pytest.raises(InvalidTransition, match="cannot accept ContractAgreementMessage from "
                                                "provider in state OFFERED"):
        cn.target_state(P, S.OFFERED, E.AGREE)
