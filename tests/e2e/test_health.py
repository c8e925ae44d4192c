"""Health that tells the truth, against real daemons: the store taken away and given back, and
the drain on SIGTERM (ready 503, in-flight requests finished, a clean exit).

"Taken away", for SQLite (see adapters/http/health.py): another process holds the database's
write lock (``BEGIN EXCLUSIVE``, as a backup tool or a second daemon on the same state would),
or the database file is moved away. Either way no step could be persisted. For PostgreSQL:
another session holds a lock on the outbox that no step could wait out (``LOCK TABLE ... IN
ACCESS EXCLUSIVE MODE``, as a migration run by hand would), so the probe's query would wait
for ever; or the schema's version table is renamed away.
"""

from __future__ import annotations

import contextlib
import json
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.config import load_settings
from tests.e2e.test_metrics import with_metrics
from tests.harness import Participant, create_space, start, stop
from tests.stores import StateDb

# Generous: the daemon re-checks every 0.25 s, but the machine may be loaded.
DEADLINE_S = 15.0


def get(url: str, *, context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def until(url: str, status: int, **kw: Any) -> dict[str, Any]:
    """Poll ``url`` until it answers ``status``; its body."""
    deadline = time.monotonic() + DEADLINE_S
    seen: tuple[int, Any] = (0, None)
    while time.monotonic() < deadline:
        seen = get(url, **kw)
        if seen[0] == status:
            body: dict[str, Any] = seen[1]
            return body
        time.sleep(0.05)
    raise AssertionError(f"{url} answered {seen} instead of {status} for {DEADLINE_S} s")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Participant, Participant, str]]:
    """Provider and consumer; the consumer drains 1 s and has a metrics listener."""
    provider, consumer = create_space(tmp_path)
    target = with_metrics(consumer, "[health]\ndrain_s = 1\n")
    start(provider)
    start(consumer)
    try:
        yield provider, consumer, f"http://{target}"
    finally:
        stop(consumer)
        stop(provider)


@contextlib.contextmanager
def _taken_away(db: StateDb, database: Path) -> Iterator[None]:
    """The SQLite file moved away, or the schema's version table renamed; then put back."""
    if db.engine == "postgres":
        db.execute("ALTER TABLE connector_schema RENAME TO connector_schema_away")
        try:
            yield
        finally:
            db.execute("ALTER TABLE connector_schema_away RENAME TO connector_schema")
        return
    moved = database.with_name("moved-away.db")
    database.rename(moved)
    try:
        yield
    finally:
        moved.rename(database)
    assert not moved.exists()


def test_ready_fails_while_the_store_is_locked_or_gone_and_recovers(
        pair: tuple[Participant, Participant, str]) -> None:
    _, consumer, metrics = pair
    tls = ssl.create_default_context(cafile=str(consumer.dir / "tls" / "cert.pem"))
    assert until(f"{metrics}/health/ready", 200) == {"status": "ready"}
    assert until(f"{consumer.url}/health/ready", 200, context=tls) == {"status": "ready"}
    with StateDb(consumer.dir) as holder:
        holder.execute("BEGIN EXCLUSIVE" if holder.engine == "sqlite" else "BEGIN")
        if holder.engine == "postgres":
            holder.execute("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE")
        try:
            body = until(f"{metrics}/health/ready", 503)
            assert body["status"] == "not ready" and list(body["failing"]) == ["store"]
            assert until(f"{consumer.url}/health/ready", 503, context=tls)["failing"].keys(
                ) == {"store"}
            assert get(f"{metrics}/health/live")[0] == 200  # alive: a restart would not help
        finally:
            holder.execute("ROLLBACK")
        assert until(f"{metrics}/health/ready", 200) == {"status": "ready"}

        with _taken_away(holder, load_settings(consumer.dir).database):
            assert "store" in until(f"{metrics}/health/ready", 503)["failing"]
        assert until(f"{metrics}/health/ready", 200) == {"status": "ready"}
    with urllib.request.urlopen(f"{metrics}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'connector_health_check_ok{check="store"} 1.0' in text


def test_sigterm_drains_then_finishes_in_flight_requests_and_exits_cleanly(
        pair: tuple[Participant, Participant, str]) -> None:
    provider, consumer, metrics = pair
    until(f"{metrics}/health/ready", 200)
    # The provider offers; the consumer's operator has not answered, so a long poll on the
    # consumer's negotiation stays in flight until its wait ends.
    token = load_settings(provider.dir).management_token()
    request = urllib.request.Request(
        load_settings(provider.dir).management_url + "/api/offers",
        data=json.dumps({"consumer": consumer.url, "datasetId": "example-weather"}).encode(),
        headers={"Authorization": f"Bearer {token}"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        pid = json.load(resp)["consumerPid"]
    mine = load_settings(consumer.dir)
    auth = {"Authorization": f"Bearer {mine.management_token()}"}
    url = f"{mine.management_url}/api/negotiations/{pid}"
    until(url, 200, headers=auth)  # the offer has arrived
    in_flight: list[tuple[int, Any]] = []
    poll = threading.Thread(target=lambda: in_flight.append(
        get(f"{url}?wait=4", headers=auth, timeout=30)))
    poll.start()
    time.sleep(0.5)  # let the long poll reach the daemon

    assert consumer.process is not None
    consumer.process.send_signal(signal.SIGTERM)
    assert until(f"{metrics}/health/ready", 503)["status"] == "draining"
    assert get(f"{metrics}/health/live")[0] == 200
    poll.join(30)
    assert in_flight and in_flight[0][0] == 200 and in_flight[0][1]["state"] == "OFFERED"
    assert consumer.process.wait(30) == 0
