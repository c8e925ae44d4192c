"""The management API fuzzed from a table of its routes and their parameters: every parameter
gets good values, values of the wrong type or range, hostile text and bodies that are not
JSON objects, with the right token. Never a 5xx (but the 503 that names a missing setting,
which is its answer by design), both daemons stay up, memory bounded, and a normal
negotiation and transfer work afterwards.

Sinks are only ever paths under the test's folder, relative paths or missing folders: the
daemon writes where a valid sink points.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest

from connector.client import Management
from connector.config import load_settings
from connector.core.binding import DSP_PATH
from tests.e2e.conftest import Space
from tests.fuzz.conftest import requests, rss_kib
from tests.fuzz.generate import HOSTILE, NOT_JSON
from tests.fuzz.test_dsp_fuzz import RSS_GROWTH_LIMIT_KIB, assert_clean_log, negotiate_and_pull

pytestmark = pytest.mark.asyncio(loop_scope="session")
IN_FLIGHT = 8

# route: method, path (``{id}`` and ``{action}`` filled in), query parameters, body members;
# each parameter named by the kind of value it takes.
ROUTES: list[tuple[str, str, dict[str, str], dict[str, str]]] = [
    ("GET", "/api/catalog", {"provider": "url"}, {}),
    ("POST", "/api/negotiations", {"wait": "seconds"},
     {"provider": "url", "datasetId": "dataset", "offerId": "text"}),
    ("GET", "/api/negotiations", {}, {}),
    ("POST", "/api/offers", {}, {"consumer": "url", "datasetId": "dataset"}),
    ("GET", "/api/negotiations/{id}", {"wait": "seconds"}, {}),
    ("POST", "/api/negotiations/{id}/{action}", {}, {"reason": "text"}),
    ("GET", "/api/agreements", {}, {}),
    ("POST", "/api/agreements/{id}/revoke", {}, {"reason": "text"}),
    ("POST", "/api/transfers", {"wait": "seconds"},
     {"agreementId": "id", "push": "flag", "sink": "sink"}),
    ("GET", "/api/transfers", {}, {}),
    ("GET", "/api/transfers/{id}", {}, {}),
    ("GET", "/api/transfers/{id}/data", {"offset": "count"}, {}),
    ("GET", "/api/transfers/{id}/summary", {}, {}),
    ("POST", "/api/transfers/{id}/pull", {}, {"sink": "sink", "path": "sink", "offset": "count"}),
    ("GET", "/api/transfers/{id}/push", {}, {}),
    ("POST", "/api/transfers/{id}/refresh", {}, {}),
    ("POST", "/api/transfers/{id}/{action}", {}, {"reason": "text"}),
    ("GET", "/api/registry/search", {"q": "text", "limit": "count", "offset": "count",
                                     "keyword": "text", "publisher": "text"}, {}),
    ("GET", "/api/consents", {}, {}),
    ("POST", "/api/consents", {}, {"subject": "text", "consumer": "text", "purpose": "text",
                                   "until": "text"}),
    ("POST", "/api/consents/withdraw", {}, {"subject": "text", "consumer": "text",
                                            "purpose": "text"}),
]
ACTIONS = ["accept", "terminate", "complete", "suspend", "resume", "explode", "", "%2E%2E"]
# Query values arrive as text; wrong ones must be refused, good ones must not wait long.
QUERY: dict[str, list[str]] = {
    "seconds": ["0", "0.05", "-1", "nan", "inf", "-inf", "soon", "", "1e999", "0x10"],
    "count": ["0", "3", "-1", "1.5", "abc", "", "9" * 40, "²", "1e3", " 1"],
}
WRONG_TYPES: list[Any] = [None, True, -1, 1.5, 10**30, [], [1, "a"], {}, {"a": {"b": []}}]


@dataclass
class Call:
    index: int
    method: str
    path: str
    data: bytes | None
    what: str


class Plan:
    """Calls decided from the seed: good values of each kind, wrong ones, hostile ones."""

    def __init__(self, rng: random.Random, space: Space, ids: list[str], folder: Path) -> None:
        self.rng = rng
        self.ids = ids
        provider = space.provider.url
        self.good: dict[str, list[Any]] = {
            "url": [provider, provider + DSP_PATH, space.consumer.url, "https://127.0.0.1:1",
                    "http://169.254.169.254/latest", "file:///etc/passwd", ""],
            "dataset": ["example-weather", "nope", ""],
            "id": ids,
            "text": ["not today", "", "é" * 1000],
            "flag": [True, False],
            "sink": [str(folder / f"s{i}.jsonl") for i in range(3)]
            + [f"sqlite://{folder}/s.db#t", f"sqlite://{folder}/s.db#bad name",
               str(folder / "missing" / "x.jsonl"), "relative.jsonl", "sqlite:///x", ""],
        }

    def value(self, kind: str) -> Any:
        r = self.rng.random()
        if kind in ("count", "seconds") and r < 0.6:
            return self.rng.choice([0, 2, -1, 0.05] if kind == "seconds" else [0, 2, -3, 10**20])
        if r < 0.7 and kind in self.good:
            return self.rng.choice(self.good[kind])
        if r < 0.85:
            return self.rng.choice(WRONG_TYPES)
        return self.rng.choice(HOSTILE)

    def query(self, kind: str) -> str:
        if kind in QUERY:
            return self.rng.choice(QUERY[kind])
        value = self.value(kind)
        return value if isinstance(value, str) else json.dumps(value)

    def path_part(self, choices: list[str]) -> str:
        if self.rng.random() < 0.85:
            return quote(self.rng.choice(choices), safe="%")
        return quote(self.rng.choice(HOSTILE).encode("utf-8", "surrogatepass"), safe="")

    def body(self, members: dict[str, str]) -> tuple[bytes | None, str]:
        r = self.rng.random()
        if r < 0.1:
            return self.rng.choice(NOT_JSON), "not-json"
        if r < 0.15:
            depth = self.rng.choice([64, 65, 3000])
            return b'{"a":' + b"[" * depth + b"]" * depth + b"}", f"deep {depth}"
        doc = {name: self.value(kind) for name, kind in members.items()
               if self.rng.random() < 0.8}
        if self.rng.random() < 0.1:
            doc.update({f"extra{i}": i for i in range(self.rng.choice([10, 5000]))})
        if not doc and self.rng.random() < 0.5:
            return None, "no body"
        return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass"), str(doc)[:200]

    def call(self, index: int) -> Call:
        method, path, query, members = self.rng.choice(ROUTES)
        path = path.replace("{id}", self.path_part(self.ids)).replace(
            "{action}", self.path_part(ACTIONS))
        params = {name: self.query(kind) for name, kind in query.items()
                  if self.rng.random() < 0.7}
        if params:
            path += "?" + urlencode(params, encoding="utf-8", errors="surrogatepass")
        data, what = self.body(members) if method == "POST" else (None, "")
        return Call(index, method, path, data, f"{method} {path[:150]} {what}")


async def _ids(api: Management, space: Space) -> list[str]:
    """Real ids on the consumer daemon: a negotiation, its agreement, a started transfer."""
    record = await api.call("POST", "/api/negotiations?wait=30",
                            {"provider": space.provider.url, "datasetId": "example-weather"})
    transfer = await api.call("POST", "/api/transfers?wait=30",
                              {"agreementId": record["agreementId"]})
    return [record["id"], record["agreementId"], transfer["id"], "urn:uuid:nope", ""]


async def _storm(base: str, token: str, calls: list[Call]
                 ) -> list[tuple[Call, int, dict[str, Any] | bytes]]:
    gate = asyncio.Semaphore(IN_FLIGHT)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=120)

    async with aiohttp.ClientSession(timeout=timeout) as http:
        async def one(c: Call) -> tuple[Call, int, dict[str, Any] | bytes]:
            async with gate:
                try:
                    async with http.request(c.method, base + c.path, data=c.data,
                                            headers=headers) as resp:
                        raw = await resp.read()
                except aiohttp.ClientError as exc:
                    return c, 0, repr(exc).encode()
            try:
                return c, resp.status, json.loads(raw)
            except ValueError:
                return c, resp.status, raw[:300]

        return await asyncio.gather(*(one(c) for c in calls))


def _by_design(status: int, answer: dict[str, Any] | bytes) -> bool:
    """A 503 that names the setting to add ([registry] urls) is the answer by design."""
    return status == 503 and isinstance(answer, dict) and answer.get("error") == "config"


async def test_management_api_fuzzed_from_its_routes_never_gets_a_5xx(
        fuzz_space: Space, seed: int, tmp_path: Path) -> None:
    space = fuzz_space
    settings = load_settings(space.consumer.dir)
    api = Management(settings)
    try:
        ids = await _ids(api, space)
    finally:
        await api.close()
    plan = Plan(random.Random(seed), space, ids, tmp_path)
    calls = [plan.call(i) for i in range(requests("MANAGEMENT"))]
    pids: dict[str, Callable[[], int | None]] = {
        p.name: p.process.poll for p in (space.provider, space.consumer)}  # type: ignore[union-attr]
    consumer_pid = space.consumer.process.pid  # type: ignore[union-attr]
    rss_before = rss_kib(consumer_pid)
    t0 = time.monotonic()
    results = await _storm(settings.management_url, settings.management_token(), calls)
    rss_after = rss_kib(consumer_pid)
    statuses = Counter(status for _, status, _ in results)
    print(f"fuzz seed {seed}: {len(calls)} management requests in "
          f"{time.monotonic() - t0:.1f}s, statuses {dict(sorted(statuses.items()))}, "
          f"consumer RSS {rss_before} -> {rss_after} KiB")
    failures = [(c.index, c.what, status, answer) for c, status, answer in results
                if (status >= 500 or status == 0) and not _by_design(status, answer)]
    assert failures == [], f"seed {seed}: {failures[:5]}"
    assert all(poll() is None for poll in pids.values()), f"seed {seed}: a daemon died"
    assert_clean_log(space.consumer.dir / "state" / "daemon.log", seed)
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, f"seed {seed}: RSS grew"
    await negotiate_and_pull(space)
