"""The registry service on a real SQLite file: membership, last writer wins, renewal, expiry,
search with facets and pagination, and the change feed replicas pull."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.core.errors import AuthError
from connector.core.identity import public_jwk
from connector.participant.trust import Peer
from connector.registry import store as store_module
from connector.registry.model import NotMember, PublicationRefused, sign_snapshot
from connector.registry.service import RegistryService
from connector.registry.store import RegistryStore, SearchQuery, fts_expression
from connector.service.catalog import Claims


class Clock:
    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        return self.now


class Member:
    def __init__(self, name: str, attributes: dict[str, str] | None = None) -> None:
        self.did = f"did:web:{name}.example.org"
        self.kid = self.did + "#key-1"
        self.key = Ed25519PrivateKey.generate()
        attrs = {"membership": "active"} if attributes is None else attributes
        self.peer = Peer(did=self.did, url=f"https://{name}.example.org",
                         keys=MappingProxyType({self.kid: public_jwk(self.key)}),
                         tls_cert_pem=None, attributes=MappingProxyType(attrs))

    def catalog(self, *datasets: tuple[str, str, list[str]]) -> dict[str, Any]:
        endpoint = self.peer.url + "/dsp/2025-1"
        return {"@type": "Catalog", "@id": self.did + "#c", "participantId": self.did,
                "service": [{"@type": "DataService", "endpointURL": endpoint}],
                "dataset": [{"@id": i, "title": t, "description": f"{t} from {self.did}",
                             "keyword": k, "distribution": [{"format": "HttpData-PULL"}]}
                            for i, t, k in datasets]}

    def snapshot(self, clock: Clock, doc: dict[str, Any], ttl_s: int = 3600) -> str:
        return sign_snapshot(self.key, kid=self.kid, did=self.did, catalog=doc,
                             now=int(clock()), ttl_s=ttl_s)


ALICE, BOB, OUTSIDER = Member("alice"), Member("bob"), Member("outsider", {})


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[RegistryService, Clock]]:
    clock = Clock()
    store = await RegistryStore.open(tmp_path / "registry.db")
    peers = {m.did: m.peer for m in (ALICE, BOB, OUTSIDER)}
    yield RegistryService(store, peers, leeway_s=5, clock=clock), clock
    await store.close()


WEATHER = ("weather", "Weather observations Berlin", ["weather", "climate"])
TRAFFIC = ("traffic", "Traffic counts Berlin", ["mobility"])


async def test_publish_then_search(service: tuple[RegistryService, Clock]) -> None:
    svc, clock = service
    done = await svc.publish(ALICE.snapshot(clock, ALICE.catalog(WEATHER, TRAFFIC)))
    assert done.version == 1
    result = await svc.search(SearchQuery(text="berlin weather"))
    assert result.total == 1 and result.items[0]["datasetId"] == "weather"
    assert result.items[0]["endpoint"] == "https://alice.example.org/dsp/2025-1"
    entry = await svc.participant(ALICE.did)
    assert entry is not None and [d["datasetId"] for d in entry["datasets"]] == [
        "weather", "traffic"]


async def test_non_members_and_forgers_are_refused(service: tuple[RegistryService, Clock]
                                                   ) -> None:
    svc, clock = service
    with pytest.raises(NotMember):
        await svc.publish(OUTSIDER.snapshot(clock, OUTSIDER.catalog(WEATHER)))
    with pytest.raises(NotMember):
        await svc.publish(Member("stranger").snapshot(clock, Member("x").catalog(WEATHER)))
    forged = sign_snapshot(BOB.key, kid=ALICE.kid, did=ALICE.did, catalog=ALICE.catalog(WEATHER),
                           now=int(clock()))
    with pytest.raises(AuthError, match="signature"):
        await svc.publish(forged)
    data = ALICE.catalog(WEATHER)
    data["dataset"][0]["dataAddress"] = {"endpoint": "https://alice.example.org/data"}
    with pytest.raises(PublicationRefused):
        await svc.publish(ALICE.snapshot(clock, data))
    assert (await svc.search(SearchQuery(text="weather"))).total == 0
    with pytest.raises(NotMember):
        svc.admit(Claims(OUTSIDER.did, {}))
    svc.admit(Claims(ALICE.did, {"membership": "active"}))
    svc.admit(Claims("did:web:registry-b", {"role": "registry"}))


async def test_unchanged_costs_nothing_and_renewal_keeps_the_index(
        service: tuple[RegistryService, Clock]) -> None:
    svc, clock = service
    doc = ALICE.catalog(WEATHER)
    first = await svc.publish(ALICE.snapshot(clock, doc))
    assert (await svc.publish(ALICE.snapshot(clock, doc))).version is None  # same iat, etag
    assert svc.unchanged(ALICE.did, first.etag)
    assert not svc.unchanged(ALICE.did, "0" * 64)
    clock.now += 1801  # past half of the hour: renewal due
    assert not svc.unchanged(ALICE.did, first.etag)
    renewed = await svc.publish(ALICE.snapshot(clock, doc))
    assert renewed.version == 2 and renewed.etag == first.etag
    clock.now += 3000  # the first snapshot's expiry has passed, the renewal's has not
    assert (await svc.search(SearchQuery(text="weather"))).total == 1


async def test_last_writer_wins_by_signed_time(service: tuple[RegistryService, Clock]) -> None:
    svc, clock = service
    old = ALICE.snapshot(clock, ALICE.catalog(WEATHER))
    clock.now += 10
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(TRAFFIC)))
    assert (await svc.publish(old)).version is None
    assert [i["datasetId"] for i in (await svc.search(SearchQuery(text="berlin"))).items] == [
        "traffic"]


async def test_expired_entries_vanish(service: tuple[RegistryService, Clock]) -> None:
    svc, clock = service
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(WEATHER), ttl_s=60))
    await svc.publish(BOB.snapshot(clock, BOB.catalog(TRAFFIC), ttl_s=600))
    assert (await svc.search(SearchQuery(text="berlin"))).total == 2
    clock.now += 61
    result = await svc.search(SearchQuery(text="berlin"))
    assert [i["participantId"] for i in result.items] == [BOB.did]
    assert await svc.participant(ALICE.did) is None
    assert len(await svc.changes(0)) == 1
    assert await svc.sweep() == 1
    assert list(svc.store.heads) == [BOB.did]


async def test_facets_filters_and_pages(service: tuple[RegistryService, Clock]) -> None:
    svc, clock = service
    many = [(f"d{i}", f"Sensor series {i}", ["sensors", "even" if i % 2 else "odd"])
            for i in range(25)]
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(*many)))
    await svc.publish(BOB.snapshot(clock, BOB.catalog(("b1", "Sensor map", ["maps"]))))
    first = await svc.search(SearchQuery(text="sensor", limit=10))
    assert first.total == 26 and len(first.items) == 10
    facets = {f["value"]: f["count"] for f in first.facets["keyword"]}
    assert facets == {"sensors": 25, "odd": 13, "even": 12, "maps": 1}
    assert first.facets["publisher"][0] == {"value": ALICE.did, "count": 25}
    assert first.facets["format"] == [{"value": "HttpData-PULL", "count": 26}]
    pages = [await svc.search(SearchQuery(text="sensor", limit=10, offset=o))
             for o in (0, 10, 20)]
    ids = [i["datasetId"] for p in pages for i in p.items]
    assert len(ids) == len(set(ids)) == 26
    odd = await svc.search(SearchQuery(keyword="odd", publisher=ALICE.did))
    assert odd.total == 13
    browse = await svc.search(SearchQuery())
    assert browse.total == 26 and (await svc.search(SearchQuery())).facets == browse.facets


async def test_change_feed_and_a_second_registry_converge(
        service: tuple[RegistryService, Clock], tmp_path: Path) -> None:
    svc, clock = service
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(WEATHER)))
    await svc.publish(BOB.snapshot(clock, BOB.catalog(TRAFFIC)))
    changes = await svc.changes(0)
    assert [v for v, _ in changes] == [1, 2] and await svc.changes(2) == []
    other_store = await RegistryStore.open(tmp_path / "b.db")
    other = RegistryService(other_store, {m.did: m.peer for m in (ALICE, BOB)}, leeway_s=5,
                            clock=clock)
    for _, jws in changes + changes:  # applied twice: the second time is a no-op
        await other.publish(jws)
    assert other_store.version == 2
    assert (await other.search(SearchQuery(text="berlin"))).total == 2
    await other_store.close()


async def test_the_store_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    store = await RegistryStore.open(tmp_path / "r.db")
    svc = RegistryService(store, {ALICE.did: ALICE.peer}, leeway_s=5, clock=clock)
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(WEATHER)))
    await store.close()
    store = await RegistryStore.open(tmp_path / "r.db")
    assert store.version == 1 and ALICE.did in store.heads
    svc = RegistryService(store, {ALICE.did: ALICE.peer}, leeway_s=5, clock=clock)
    clock.now += 1
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(TRAFFIC)))
    assert (await svc.search(SearchQuery(text="traffic"))).total == 1
    assert (await svc.search(SearchQuery(text="weather"))).total == 0
    await store.close()


def test_queries_are_words_not_fts_syntax() -> None:
    assert fts_expression('weather AND "x" OR NEAR(a b) *') == (
        '"weather" "and" "x" "or" "near" "a" "b"')
    assert fts_expression("  ") == ""


async def test_filters_with_and_without_text(service: tuple[RegistryService, Clock]) -> None:
    svc, clock = service
    many = [(f"d{i}", f"Sensor series {i}", ["sensors", "even" if i % 2 else "odd"])
            for i in range(6)]
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(*many)))
    await svc.publish(BOB.snapshot(clock, BOB.catalog(("b1", "Sensor map", ["odd"]))))
    by_bob = await svc.search(SearchQuery(text="sensor", publisher=BOB.did))
    assert [i["datasetId"] for i in by_bob.items] == ["b1"] and by_bob.total == 1
    odd = await svc.search(SearchQuery(text="sensor", keyword="odd"))
    assert odd.total == 4 and {i["datasetId"] for i in odd.items} == {"d0", "d2", "d4", "b1"}
    assert {f["value"]: f["count"] for f in odd.facets["publisher"]} == {ALICE.did: 3,
                                                                          BOB.did: 1}
    odd_alice = await svc.search(SearchQuery(keyword="odd", publisher=ALICE.did, limit=2))
    assert odd_alice.total == 3 and [i["datasetId"] for i in odd_alice.items] == ["d0", "d2"]
    pulled = await svc.search(SearchQuery(format="HttpData-PULL", keyword="even"))
    assert pulled.total == 3
    assert (await svc.search(SearchQuery(text="sensor", format="Kafka-PULL"))).total == 0


async def test_facets_follow_republication_expiry_and_restart(
        service: tuple[RegistryService, Clock], tmp_path: Path) -> None:
    svc, clock = service
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(WEATHER), ttl_s=60))
    await svc.publish(BOB.snapshot(clock, BOB.catalog(TRAFFIC), ttl_s=600))
    clock.now += 1
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(
        ("rain", "Rain radar Berlin", ["rain"])), ttl_s=60))
    berlin = await svc.search(SearchQuery(text="berlin"))
    assert {f["value"] for f in berlin.facets["keyword"]} == {"rain", "mobility"}
    assert (await svc.search(SearchQuery(keyword="weather"))).total == 0
    browse = await svc.search(SearchQuery())
    assert browse.total == 2
    clock.now += 60  # Alice's entry expired, not swept yet
    for query in (SearchQuery(text="berlin"), SearchQuery(), SearchQuery(keyword="rain"),
                  SearchQuery(publisher=ALICE.did), SearchQuery(text="rain")):
        result = await svc.search(query)
        assert all(i["participantId"] == BOB.did for i in result.items), query
        assert result.total == len(result.items), query
        assert ALICE.did not in {f["value"] for f in result.facets["publisher"]}, query
    assert (await svc.search(SearchQuery())).facets["keyword"] == [
        {"value": "mobility", "count": 1}]
    assert await svc.sweep() == 1
    facets = (await svc.search(SearchQuery(text="berlin"))).facets
    reopened = await RegistryStore.open(tmp_path / "registry.db")  # the index, reloaded
    try:
        again = RegistryService(reopened, {BOB.did: BOB.peer}, leeway_s=5, clock=clock)
        assert (await again.search(SearchQuery(text="berlin"))).facets == facets
    finally:
        await reopened.close()


async def test_broad_queries_rank_the_newest_candidates_and_page_through_all(
        service: tuple[RegistryService, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past RANK_CANDIDATES matches, the newest are ranked first; pages still cover all."""
    monkeypatch.setattr(store_module, "RANK_CANDIDATES", 8)
    monkeypatch.setattr(store_module, "FACET_EXACT_LIMIT", 8)
    monkeypatch.setattr(store_module, "FACET_SAMPLE", 4)
    svc, clock = service
    await svc.publish(ALICE.snapshot(clock, ALICE.catalog(
        *[(f"a{i}", "Sensor " + "data " * i, ["old"]) for i in range(10)])))
    await svc.publish(BOB.snapshot(clock, BOB.catalog(
        *[(f"b{i}", "Sensor " + "data " * i, ["new"]) for i in range(8)])))
    small = await svc.search(SearchQuery(text="sensor", publisher=BOB.did))
    assert small.ranked_exactly and small.facets_exact and small.total == 8
    assert [i["datasetId"] for i in small.items] == [f"b{i}" for i in range(8)]  # bm25
    pages = [await svc.search(SearchQuery(text="sensor", limit=5, offset=o))
             for o in range(0, 20, 5)]
    assert all(p.total == 18 and not p.ranked_exactly and not p.facets_exact for p in pages)
    ids = [i["datasetId"] for p in pages for i in p.items]
    assert len(ids) == len(set(ids)) == 18
    # Bob's 8 datasets are the newest: ranked first (by bm25), then Alice's, ranked too.
    assert ids == [f"b{i}" for i in range(8)] + [f"a{i}" for i in range(10)]
    assert pages[0].facets["keyword"] == [{"value": "new", "count": 4}]  # best-ranked 4
    assert pages[0].facets["publisher"] == [{"value": BOB.did, "count": 4}]
