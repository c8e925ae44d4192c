"""A protocol error names its DSP area: a transfer's never renders as a negotiation's."""

from __future__ import annotations

import pytest

from connector.core import process
from connector.core import transfer as tp
from connector.core.errors import Area, InvalidTransition, MalformedMessage, ProtocolError
from connector.core.messages import TransferCompletionMessage
from connector.core.process import Role
from connector.core.transfer import Transfer, TransferEvent, TransferState


def test_the_area_is_required() -> None:
    with pytest.raises(TypeError):
        ProtocolError("no area")  # type: ignore[call-arg]
    assert MalformedMessage("x", area=None).area is None


def test_transfer_errors_say_transfer() -> None:
    with pytest.raises(InvalidTransition) as info:
        tp.target_state(Role.PROVIDER, TransferState.COMPLETED, TransferEvent.START)
    assert info.value.area is Area.TRANSFER
    record = Transfer(id="urn:p", role=Role.PROVIDER, state=TransferState.STARTED,
                      consumer_pid="urn:c", provider_pid="urn:p", agreement_id="a",
                      format="f", counterparty_address="https://c")
    with pytest.raises(MalformedMessage) as bad:
        process.check_pids(record, TransferCompletionMessage(consumer_pid="urn:c",
                                                             provider_pid="urn:other"),
                           Area.TRANSFER)
    assert bad.value.area is Area.TRANSFER
    assert "this transfer" in bad.value.message
