"""Our process and agreement ids: time-ordered UUIDs (RFC 9562 §5.7, version 7), and the
short ids people read and type."""

from __future__ import annotations

import uuid

import pytest

from connector.core.errors import InvalidParameter, NotFound
from connector.core.ids import names, short_id
from connector.service.process import new_urn
from connector.terminal import match_id


def _uuid(urn: str) -> uuid.UUID:
    assert urn.startswith("urn:uuid:")
    return uuid.UUID(urn.removeprefix("urn:uuid:"))


def test_an_id_is_a_version_7_uuid_carrying_its_milliseconds() -> None:
    made = _uuid(new_urn(now_ns=lambda: 1_796_528_003_318_779_000, random=lambda n: b"\xff" * n))
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert made.int >> 80 == 1_796_528_003_318  # unix_ts_ms
    assert str(made).startswith("01a2")  # what a reader sees first: the time


def test_ids_sort_in_the_order_they_were_made_and_do_not_repeat() -> None:
    clock = iter(range(1_700_000_000_000_000_000, 1_700_000_000_000_000_000 + 10**9 * 50,
                       10**9 // 20))  # one id every 50 ms of a fake clock
    ids = [new_urn(now_ns=lambda: next(clock)) for _ in range(1000)]
    assert ids == sorted(ids)
    same_ms = {new_urn(now_ns=lambda: 1_700_000_000_000_000_000) for _ in range(10_000)}
    assert len(same_ms) == 10_000  # 74 random bits tell apart ids of one millisecond


def test_a_short_id_is_the_random_end_and_names_its_id() -> None:
    first, second = (new_urn(now_ns=lambda: 1_700_000_000_000_000_000) for _ in range(2))
    assert short_id(first) == first[-8:] != short_id(second)
    assert match_id(short_id(first), [first, second], "negotiation") == first
    assert match_id(first.removeprefix("urn:uuid:")[:30], [first, second], "x") == first


def test_a_typed_beginning_still_names_an_older_random_id() -> None:
    old, new = "urn:uuid:3f1c9a2e-0000-4000-8000-000000000001", new_urn()
    assert match_id("3f1c9a2e", [old, new], "agreement") == old
    assert names("urn:uuid:3f1c9a2e", old) and not names("", old)
    assert short_id("did:web:example.org") == "did:web:example.org"


def test_a_beginning_shared_by_ids_of_one_minute_is_ambiguous() -> None:
    ids = [new_urn(now_ns=lambda: 1_700_000_000_000_000_000) for _ in range(3)]
    with pytest.raises(InvalidParameter, match="give more of the id"):
        match_id(ids[0].removeprefix("urn:uuid:")[:8], ids, "negotiation")
    with pytest.raises(NotFound):
        match_id("zzzzzzzz", ids, "negotiation")
