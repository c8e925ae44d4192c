"""The consumer service: the one copy check, provider lookup, catalogue reuse, offer choice."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connector.core.errors import NotFound, PeerError
from connector.service.consumer import (
    CATALOG_REUSE_S,
    ConsumerService,
    Copy,
    CopyCounter,
    Provider,
    complete_records,
    copy_mismatch,
    verify_copy,
)

RECORDS = b'{"n": 1}\n{"n": 2}\n'
SUMMARY = {"records": 2, "bytes": len(RECORDS), "sha256": hashlib.sha256(RECORDS).hexdigest()}


def test_a_whole_copy_matches() -> None:
    copy = Copy(records=2, bytes=len(RECORDS), sha256=SUMMARY["sha256"])
    assert copy_mismatch(copy, SUMMARY) is None
    verify_copy(copy, {**SUMMARY, "extra": "ignored"})


@pytest.mark.parametrize("field,value", [("records", 3), ("bytes", 1), ("sha256", "0" * 64)])
def test_each_of_the_three_fields_is_checked(field: str, value: Any) -> None:
    copy = Copy(**{**SUMMARY, field: value})
    problem = copy_mismatch(copy, SUMMARY)
    assert problem is not None and "does not match the provider's summary" in problem
    with pytest.raises(PeerError, match="does not match"):
        verify_copy(copy, SUMMARY)


def test_a_summary_missing_a_field_does_not_match() -> None:
    copy = Copy(**SUMMARY)
    assert copy_mismatch(copy, {"records": 2, "sha256": SUMMARY["sha256"]}) is not None


def test_complete_records_cuts_a_partial_record(tmp_path: Path) -> None:
    part = tmp_path / "out.part"
    part.write_bytes(RECORDS + b'{"n": 3')
    assert complete_records(part) == Copy(**SUMMARY)
    assert part.read_bytes() == RECORDS


def test_the_counter_counts_what_streams_past() -> None:
    counter = CopyCounter()
    for chunk in (RECORDS[:5], RECORDS[5:]):
        counter.update(chunk)
    assert counter.copy() == Copy(**SUMMARY)


@dataclass(frozen=True)
class Pinned:
    did: str
    url: str
    dsp_base: str | None = None


PEERS = {
    "did:web:a": Pinned("did:web:a", "https://a.example:8443"),
    "did:web:b": Pinned("did:web:b", "https://b.example", "https://b.example/protocol/2025-1"),
}


class FakeCatalogs:
    def __init__(self) -> None:
        self.fetched: list[tuple[str, str]] = []

    async def __call__(self, base: str, audience: str) -> dict[str, Any]:
        self.fetched.append((base, audience))
        offer = {"@id": f"offer-{len(self.fetched)}"}
        return {"dataset": [{"@id": "ds", "hasPolicy": [offer, {"@id": "second"}]}]}


def _service(fetch: FakeCatalogs, now: list[float]) -> ConsumerService:
    return ConsumerService(fetch, lambda: PEERS, unpinned={"edc": "http://e:1/protocol/2025-1"},
                           clock=lambda: now[0])


@pytest.mark.parametrize("url,expected", [
    ("https://a.example:8443", Provider("https://a.example:8443/dsp/2025-1", "did:web:a")),
    ("https://a.example:8443/dsp/2025-1/", Provider("https://a.example:8443/dsp/2025-1",
                                                    "did:web:a")),
    ("https://b.example/protocol/2025-1", Provider("https://b.example/protocol/2025-1",
                                                   "did:web:b")),
    ("http://e:1/protocol", Provider("http://e:1/protocol/2025-1", "edc")),
    # No port is 443, and 443 said aloud is the same server.
    ("https://b.example:443", Provider("https://b.example/protocol/2025-1", "did:web:b")),
])
def test_provider_lookup(url: str, expected: Provider) -> None:
    assert _service(FakeCatalogs(), [0.0]).provider(url) == expected


def test_an_unknown_provider_is_not_found() -> None:
    with pytest.raises(NotFound, match="connector trust add"):
        _service(FakeCatalogs(), [0.0]).provider("https://nobody.example")


async def test_a_negotiation_reuses_a_fresh_catalogue_only() -> None:
    fetch, now = FakeCatalogs(), [100.0]
    service = _service(fetch, now)
    first = await service.choose_offer("https://a.example:8443", "ds", None)
    assert first.offer == {"@id": "offer-1"} and first.provider.participant_id == "did:web:a"
    now[0] += CATALOG_REUSE_S - 1
    assert (await service.choose_offer("https://a.example:8443", "ds", "second")).offer == {
        "@id": "second"}
    assert len(fetch.fetched) == 1
    now[0] += 2
    assert (await service.choose_offer("https://a.example:8443", "ds", None)).offer == {
        "@id": "offer-2"}
    provider = service.provider("https://a.example:8443")
    await service.catalog(provider)  # `connector catalog` always fetches afresh
    assert len(fetch.fetched) == 3


async def test_offer_choice_names_what_is_missing() -> None:
    service = _service(FakeCatalogs(), [0.0])
    with pytest.raises(NotFound, match="no offer 'x'"):
        await service.choose_offer("https://a.example:8443", "ds", "x")
    with pytest.raises(NotFound, match="no dataset 'other'"):
        await service.choose_offer("https://a.example:8443", "other", None)
