"""Registry at data-space scale: 5,000 participants x 20 datasets = 100,000 datasets on SQLite.

Publish: every participant's catalogue (20 datasets with titles, descriptions, keywords,
themes and formats drawn from a fixed vocabulary with a Zipf-like skew) is signed as a
snapshot JWS beforehand (that is the participant's cost, not the registry's), then handed to
``RegistryService.publish`` one after another: signature verification with the pinned key,
membership, content checks, last-writer-wins and the SQLite/FTS5 transaction. Reported as
publishes/s and datasets/s. A second round re-publishes the same catalogues renewed (same
ETag, later ``iat``): the cost of a renewal.

Search: a mixed stream of queries through ``RegistryService.search`` (the service layer, with
its aiosqlite hops; no HTTP, no TLS: add ~1 ms for those, see perf-limits): common words, rare
words, two-word queries, word + facet filter, facet-only browsing, a publisher's datasets and
the unfiltered browse; each returns a page of 20 with an exact total and facet counts (exact
up to 5,000 matches, else over the best-ranked 2,000). p50/p95/p99 in ms, overall and per
query kind (``registry_search_p95_ms_<kind>``, with its p50). The acceptance bound is
p95 <= 50 ms. ``registry_search_ranked_over_newest``: queries with more matches than the store
ranks (``RANK_CANDIDATES``), whose bm25 order covers the newest candidates only.
``host_other_processes_cores_busy_max``: other load on the box during the publish and search
phases (busy CPU of the host minus this process's), the context of every figure above.

``run(quick)`` returns the JSON lines; ``python -m bench.registry [--quick]`` prints them.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import CpuMeter, log, percentile
from connector.core.identity import public_jwk
from connector.participant.trust import Peer
from connector.registry.model import sign_snapshot
from connector.registry.service import RegistryService
from connector.registry.store import RANK_CANDIDATES, RegistryStore, SearchQuery

PARTICIPANTS, QUICK_PARTICIPANTS = 5_000, 250
DATASETS_EACH = 20
SEARCHES, QUICK_SEARCHES = 2_000, 200
P95_LIMIT_MS = 50.0
THEMES = ("AGRI", "ECON", "EDUC", "ENER", "ENVI", "GOVE", "HEAL", "INTR", "JUST", "REGI",
          "SOCI", "TECH", "TRAN")
FORMATS = ("HttpData-PULL", "HttpData-PUSH", "AmazonS3-PUSH", "AzureStorage-PUSH", "Kafka-PULL")
THEME_IRI = "http://publications.europa.eu/resource/authority/data-theme/"


def _vocabulary(rng: random.Random, n: int) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ra", "su", "to", "ve", "di", "pa", "go", "ri", "ta",
                 "be", "zu", "fo", "ha", "je", "wi", "cy"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class Corpus:
    """Deterministic titles, descriptions and keywords with a skewed word frequency."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.words = _vocabulary(self.rng, 5000)
        self.keywords = _vocabulary(self.rng, 600)
        # Zipf-like weights: word i is drawn with weight 1/(i+10).
        self._word_weights = [1 / (i + 10) for i in range(len(self.words))]
        self._kw_weights = [1 / (i + 5) for i in range(len(self.keywords))]

    def text(self, n: int) -> str:
        return " ".join(self.rng.choices(self.words, self._word_weights, k=n))

    def dataset(self, i: int) -> dict[str, Any]:
        return {"@id": f"ds-{i}", "@type": "Dataset", "title": self.text(self.rng.randint(4, 7)),
                "description": self.text(self.rng.randint(15, 30)),
                "keyword": sorted(set(self.rng.choices(self.keywords, self._kw_weights,
                                                       k=self.rng.randint(2, 5)))),
                "theme": [{"@id": THEME_IRI + self.rng.choice(THEMES)}],
                "distribution": [{"@type": "Distribution", "format": self.rng.choice(FORMATS)}]}


def _participant(n: int) -> tuple[str, str, Ed25519PrivateKey, Peer]:
    did = f"did:web:participant-{n}.example.org"
    kid, key = did + "#key-1", Ed25519PrivateKey.generate()
    peer = Peer(did=did, url=f"https://participant-{n}.example.org",
                keys=MappingProxyType({kid: public_jwk(key)}), tls_cert_pem=None,
                attributes=MappingProxyType({"membership": "active"}))
    return did, kid, key, peer


def _catalog(did: str, datasets: list[dict[str, Any]]) -> dict[str, Any]:
    host = did.removeprefix("did:web:")
    return {"@type": "Catalog", "@id": f"{did}#catalog", "participantId": did,
            "service": [{"@type": "DataService", "endpointURL": f"https://{host}/dsp/2025-1"}],
            "dataset": datasets}


def _queries(corpus: Corpus, dids: list[str], n: int) -> list[tuple[str, SearchQuery]]:
    """The query mix, each with its kind (for the per-kind lines), in a fixed order."""
    rng = random.Random(11)
    common, rare = corpus.words[:200], corpus.words[1000:]
    makers: list[tuple[str, Callable[[], SearchQuery]]] = [
        ("common", lambda: SearchQuery(text=rng.choice(common))),
        ("rare", lambda: SearchQuery(text=rng.choice(rare))),
        ("common_common", lambda: SearchQuery(text=f"{rng.choice(common)} {rng.choice(common)}")),
        ("common_rare", lambda: SearchQuery(text=f"{rng.choice(common)} {rng.choice(rare)}")),
        ("common_keyword", lambda: SearchQuery(text=rng.choice(common),
                                               keyword=rng.choice(corpus.keywords[:50]))),
        ("keyword", lambda: SearchQuery(keyword=rng.choice(corpus.keywords[:100]))),
        ("theme_common", lambda: SearchQuery(theme=THEME_IRI + rng.choice(THEMES),
                                             text=rng.choice(common))),
        ("publisher", lambda: SearchQuery(publisher=rng.choice(dids))),
        ("common_offset", lambda: SearchQuery(text=rng.choice(common),
                                              offset=rng.choice((20, 40, 100)))),
        ("browse", lambda: SearchQuery()),
    ]
    out = []
    for i in range(n):
        kind, make = makers[i % len(makers)]
        out.append((kind, make()))
    return out


async def _measure(db: Path, participants: int, searches: int) -> list[dict[str, Any]]:
    corpus = Corpus()
    log(f"registry: signing {participants} catalogues of {DATASETS_EACH} datasets")
    people = [_participant(n) for n in range(participants)]
    catalogs = [_catalog(did, [corpus.dataset(n * DATASETS_EACH + j)
                               for j in range(DATASETS_EACH)])
                for n, (did, *_rest) in enumerate(people)]
    now = int(time.time())
    snapshots = [sign_snapshot(key, kid=kid, did=did, catalog=doc, now=now)
                 for (did, kid, key, _), doc in zip(people, catalogs, strict=True)]
    renewals = [sign_snapshot(key, kid=kid, did=did, catalog=doc, now=now + 1)
                for (did, kid, key, _), doc in zip(people, catalogs, strict=True)]
    store = await RegistryStore.open(db)
    try:
        service = RegistryService(store, {p.did: p for *_x, p in people}, leeway_s=5,
                                  clock=time.time)
        log(f"registry: publishing {participants * DATASETS_EACH} datasets")
        foreign: list[float] = []
        with CpuMeter({"bench": os.getpid()}) as meter:
            t0 = time.perf_counter()
            for jws in snapshots:
                await service.publish(jws)
            publish_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for jws in renewals:
                await service.publish(jws)
            renew_s = time.perf_counter() - t0
        foreign.append(meter.foreign_cores)
        datasets = (await service.search(SearchQuery(limit=1))).total
        assert datasets == participants * DATASETS_EACH, datasets
        log(f"registry: {searches} mixed searches")
        queries = _queries(corpus, [p[0] for p in people], searches)
        for _kind, q in queries[:20]:  # warm the page cache
            await service.search(q)
        latencies, hits, bounded = [], 0, 0
        by_kind: dict[str, list[float]] = {}
        with CpuMeter({"bench": os.getpid()}) as meter:
            for kind, q in queries:
                t0 = time.perf_counter()
                result = await service.search(q)
                ms = (time.perf_counter() - t0) * 1000
                latencies.append(ms)
                by_kind.setdefault(kind, []).append(ms)
                hits += result.total
                bounded += not result.ranked_exactly
        latencies.sort()
        foreign.append(meter.foreign_cores)
    finally:
        await store.close()
    size_mib = sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20
    return [
        {"name": "registry_publishes_per_s", "value": round(participants / publish_s, 1),
         "unit": "publish/s", "participants": participants, "datasets_each": DATASETS_EACH},
        {"name": "registry_datasets_indexed_per_s",
         "value": round(participants * DATASETS_EACH / publish_s, 1), "unit": "dataset/s"},
        {"name": "registry_renewals_per_s", "value": round(participants / renew_s, 1),
         "unit": "publish/s", "note": "same ETag, later iat: no re-indexing"},
        {"name": "registry_search_p50_ms", "value": round(percentile(latencies, 50), 2),
         "unit": "ms", "datasets": datasets, "queries": len(latencies), "via": "service"},
        {"name": "registry_search_p95_ms", "value": round(percentile(latencies, 95), 2),
         "unit": "ms", "limit": P95_LIMIT_MS,
         "ratio": round(percentile(latencies, 95) / P95_LIMIT_MS, 4)},
        {"name": "registry_search_p99_ms", "value": round(percentile(latencies, 99), 2),
         "unit": "ms"},
        *({"name": f"registry_search_p95_ms_{kind}",
           "value": round(percentile(sorted(values), 95), 2), "unit": "ms",
           "p50": round(percentile(sorted(values), 50), 2), "queries": len(values)}
          for kind, values in by_kind.items()),
        {"name": "registry_search_mean_matches", "value": round(hits / len(latencies), 1),
         "unit": "datasets"},
        {"name": "registry_search_ranked_over_newest", "value": bounded, "unit": "queries",
         "note": f"more than {RANK_CANDIDATES} matches: bm25 over the newest {RANK_CANDIDATES}"},
        {"name": "registry_database_mib", "value": round(size_mib, 1), "unit": "MiB"},
        {"name": "host_other_processes_cores_busy_max", "value": round(max(foreign), 3),
         "unit": "cores", "limit": os.cpu_count(),
         "note": "not a result: other load on the box during publish and search phases"},
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """Measure; return one JSON-ready dict per figure."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    try:
        participants = QUICK_PARTICIPANTS if quick else PARTICIPANTS
        searches = QUICK_SEARCHES if quick else SEARCHES
        return asyncio.run(_measure(tmp / "registry.db", participants, searches))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    for line in run(quick="--quick" in sys.argv[1:]):
        print(json.dumps(line), flush=True)
