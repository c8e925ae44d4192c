"""The progress of running streams (adapters/progress.py): records counted from each chunk's
newlines, a resumed stream starting from what it holds, and a terminal transfer ending its
stream."""

from __future__ import annotations

import msgspec
import pytest

import connector.adapters.progress as progress_module
from connector.adapters.progress import PULL, PUSH_IN, ProgressBoard
from connector.core import transfer as tp
from connector.core.process import Role
from connector.core.transfer import TransferState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_records_bytes_and_rate_as_chunks_go_by() -> None:
    clock = Clock()
    board = ProgressBoard(clock)
    progress = board.begin("t1", PULL)
    progress.add(b'{"a": 1}\n{"a": 2}\n{"a"')
    progress.add(b': 3}\n')
    clock.now = 102.0
    assert board.view("t1") == {"kind": PULL, "records": 3, "bytes": 27, "rate": 2,
                                "done": False, "error": None}
    assert list(board.running()) == ["t1"]
    board.end("t1", "cut")
    clock.now = 200.0  # an ended stream's rate stops at its end
    assert board.view("t1") == {"kind": PULL, "records": 3, "bytes": 27, "rate": 2,
                                "done": True, "error": "cut"}
    assert board.running() == {} and board.view("nope") is None


def test_a_resumed_stream_counts_from_what_it_holds() -> None:
    board = ProgressBoard(Clock())
    board.begin("t1", PUSH_IN, records=10, size=500).add(b"{}\n")
    view = board.view("t1")
    assert view is not None and (view["records"], view["bytes"]) == (11, 503)


def test_a_terminal_transfer_ends_its_stream() -> None:
    board = ProgressBoard(Clock())
    board.begin("t1", PUSH_IN)
    record = tp.opened(id="t1", role=Role.CONSUMER, now=1.0, consumer_pid="t1",
                       provider_pid=None, agreement_id="a", format=tp.PUSH_FORMAT,
                       counterparty_address="https://p.example", counterparty_id="did:web:p")
    started = msgspec.structs.replace(record, state=TransferState.STARTED)
    board.on_transfer(started, False)
    assert board.running() != {}
    board.on_transfer(msgspec.structs.replace(record, state=TransferState.COMPLETED), False)
    assert board.running() == {}


def test_the_oldest_ended_streams_are_forgotten_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "KEPT_ENDED", 4)
    board = ProgressBoard(Clock())
    board.begin("running", PULL)
    for i in range(5):
        board.begin(f"t{i}", PULL)
        board.end(f"t{i}")
    assert board.get("running") is not None  # a running stream is never dropped
    assert board.get("t0") is None and board.get("t4") is not None
    assert len([pid for pid in ("t0", "t1", "t2", "t3", "t4") if board.get(pid)]) <= 4
