"""``/health/live`` and ``/health/ready``: health that tells the truth, and the drain on SIGTERM.

Live means the event loop answers: the process is worth keeping. Ready means it is worth
sending traffic to, and is re-checked every ``PROBE_INTERVAL_S``:

- **store**: the SQLite file opens (``mode=rw``: never created by the check), its schema is at
  the version this code migrates to, and a write transaction can begin within
  ``STORE_TIMEOUT_S`` (``BEGIN IMMEDIATE``, rolled back at once). So the store is "taken away"
  when the file is gone or unreadable, when its schema is behind, or when another process
  holds its write lock (a backup holding ``BEGIN EXCLUSIVE``, a second daemon on the same
  state): in each case no step could be persisted, hence none acknowledged. On PostgreSQL
  (``PostgresStore.probe``): a pooled connection and the answer to a query of the schema's
  version and the outbox, each within ``PROBE_TIMEOUT_S``, so a database that is unreachable,
  behind, or stuck behind a lock takes the replica out of service.
- **keys**: the signing key and the TLS key are present and private (0600).
- **certificate**: the DSP listener's TLS certificate is valid for more than
  ``[health] certificate_min_days`` (``connector_tls_certificate_expiring`` warns from
  ``certificate_warn_days``).
- **outbox**: messages waiting are being attempted: not stuck means a delivery was tried within
  ``[health] outbox_stuck_s`` whenever the outbox is not empty (a peer that is down is retried
  with back-off and is not a reason to take this replica out of service).

After SIGTERM ready answers 503 (``draining``) for ``[health] drain_s``, then the listeners
stop accepting, in-flight requests finish, and the process exits. Answers carry check names
and short problems, never a path, key or token.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509

from connector.adapters.http.metrics import Metrics
from connector.config import HealthSettings
from connector.core.errors import ConfigError, PeerError
from connector.keys import check_private_mode
from connector.service.store import OutboxItem

log = logging.getLogger("connector.health")
Send = Callable[[OutboxItem], Awaitable[bytes]]
# How often readiness is re-checked: "ready goes to 503 within a second" of a failure.
PROBE_INTERVAL_S = 0.25
# A write transaction that cannot begin within this long means the store does not answer.
STORE_TIMEOUT_S = 0.2
DAY_S = 86_400.0


class OutboxWatch:
    """Wraps the outbox's send function: when each message was first tried, and when any
    delivery was last attempted (what ``outbox`` readiness and the age metric need)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first_try: dict[int, float] = {}
        self.last_attempt = clock()

    def wrap(self, send: Send) -> Send:
        async def watched(item: OutboxItem) -> bytes:
            now = self.last_attempt = self._clock()
            self._first_try.setdefault(item.seq, now)
            try:
                body = await send(item)
            except PeerError as exc:
                if not exc.retryable:
                    self.settled(item)
                raise
            self.settled(item)
            return body
        return watched

    def settled(self, item: OutboxItem) -> None:
        """The message left the outbox (delivered, or dropped after its last attempt)."""
        self._first_try.pop(item.seq, None)

    def oldest_age(self) -> float:
        return self._clock() - min(self._first_try.values()) if self._first_try else 0.0


@dataclass(frozen=True)
class StoreState:
    problem: str | None
    outbox_depth: int = 0


def probe_store(database: Path, schema_version: int) -> StoreState:
    """Open the file (never creating it), check the schema, begin and roll back a write."""
    uri = database.absolute().as_uri() + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=STORE_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        return StoreState(f"cannot open the database: {exc}")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version < schema_version:
            return StoreState(f"schema at version {version}, this code needs {schema_version}")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        depth = int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
        return StoreState(None, depth)
    except sqlite3.Error as exc:
        return StoreState(f"the database does not answer: {exc}")
    finally:
        conn.close()


def certificate_not_after(pem: bytes) -> float:
    """The certificate's notAfter as a Unix time."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


@dataclass(frozen=True, kw_only=True)
class HealthDeps:
    """What the readiness checks look at."""

    database: Path
    schema_version: int
    tls_cert: Path
    key_files: Callable[[], Sequence[Path]]
    settings: HealthSettings
    outbox: OutboxWatch
    metrics: Metrics | None = None
    clock: Callable[[], float] = time.time
    store_probe: Callable[[], Awaitable[StoreState]] | None = None  # a shared database's
    # probe; None: the SQLite file


class Health:
    """The readiness checks of one daemon, re-run in the background; the two routes."""

    def __init__(self, deps: HealthDeps) -> None:
        self.d = deps
        self.settings = deps.settings
        self._cert: tuple[float, float] | None = None  # (file mtime, notAfter)
        self._nonempty_since: float | None = None
        self.problems: dict[str, str | None] = {}  # empty until the first round
        self.draining = False

    @property
    def ready(self) -> bool:
        return (not self.draining and bool(self.problems)
                and all(p is None for p in self.problems.values()))

    # -- checks ------------------------------------------------------------------------------

    async def check(self) -> None:
        """One round of every check; the result is what the routes and metrics show."""
        store = (await self.d.store_probe() if self.d.store_probe is not None else
                 await asyncio.to_thread(probe_store, self.d.database, self.d.schema_version))
        problems = {"store": store.problem, "keys": self._keys_problem(),
                    "certificate": self._certificate_problem(),
                    "outbox": self._outbox_problem(store)}
        for name, problem in problems.items():
            if self.problems and problem != self.problems.get(name):
                if problem is None:
                    log.info("ready check %s passes again", name)
                else:
                    log.warning("ready check %s fails: %s", name, problem)
        self.problems = problems
        self._export(store)

    def _keys_problem(self) -> str | None:
        for path in self.d.key_files():
            try:
                check_private_mode(path)
            except ConfigError:
                return f"the {path.stem} key file is missing or not private (0600)"
        return None

    def _certificate_problem(self) -> str | None:
        try:
            mtime = self.d.tls_cert.stat().st_mtime
            if self._cert is None or self._cert[0] != mtime:
                self._cert = (mtime, certificate_not_after(self.d.tls_cert.read_bytes()))
        except (OSError, ValueError):
            self._cert = None
            return "the TLS certificate cannot be read"
        left_days = (self._cert[1] - self.d.clock()) / DAY_S
        if left_days <= self.settings.certificate_min_days:
            return (f"the TLS certificate expires in {left_days:.1f} days "
                    f"(minimum {self.settings.certificate_min_days:g})")
        return None

    def _outbox_problem(self, store: StoreState) -> str | None:
        if store.problem is not None or store.outbox_depth == 0:
            self._nonempty_since = None
            return None
        now = time.monotonic()
        if self._nonempty_since is None:
            self._nonempty_since = now
        idle = now - max(self.d.outbox.last_attempt, self._nonempty_since)
        if idle > self.settings.outbox_stuck_s:
            return (f"{store.outbox_depth} message(s) waiting and no delivery attempted "
                    f"for {idle:.0f} s")
        return None

    def _export(self, store: StoreState) -> None:
        m = self.d.metrics
        if m is None:
            return
        for name, problem in self.problems.items():
            m.health_check.labels(name).set(0 if problem else 1)
        m.ready.set(1 if self.ready else 0)
        m.draining.set(1 if self.draining else 0)
        if store.problem is None:
            m.outbox_depth.set(store.outbox_depth)
        m.outbox_oldest_age.set(self.d.outbox.oldest_age())
        if self._cert is not None:
            m.certificate_expiry.set(self._cert[1])
            left_days = (self._cert[1] - self.d.clock()) / DAY_S
            m.certificate_expiring.set(1 if left_days <= self.settings.certificate_warn_days
                                       else 0)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # a check must never kill the loop
                log.error("readiness check failed: %s", exc)
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def drain(self) -> None:
        """SIGTERM: answer 503 on ready for ``drain_s``, before the listeners close."""
        self.draining = True
        if self.d.metrics is not None:
            self.d.metrics.ready.set(0)
            self.d.metrics.draining.set(1)
        log.info("draining: ready answers 503; closing in %.1f s", self.settings.drain_s)
        await asyncio.sleep(self.settings.drain_s)

    # -- routes ------------------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready_route(self, request: web.Request) -> web.Response:
        failing = {name: p for name, p in self.problems.items() if p is not None}
        if self.draining:
            return web.json_response({"status": "draining", "failing": failing}, status=503)
        if failing or not self.problems:
            return web.json_response({"status": "not ready" if failing else "starting",
                                      "failing": failing}, status=503)
        return web.json_response({"status": "ready"})

    def register(self, app: web.Application) -> None:
        app.router.add_get("/health/live", self.live)
        app.router.add_get("/health/ready", self.ready_route)
