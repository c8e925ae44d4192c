"""The console's HTTP side, served under ``/console`` on the management listener.

Server-rendered pages (templates in connector/console/) over the same services the
management API calls. Security (docs/console.md):

- Login with the management token, posted in a form (never in a URL); the answer is a
  random session id in an ``HttpOnly; SameSite=Strict`` cookie scoped to ``/console``.
  Sessions live in memory (a restart logs everyone out) and end after SESSION_IDLE_S idle.
- Every POST carries the session's CSRF token in a form field (the login form a
  double-submitted one); a POST without the right one is refused 403 before anything runs.
- Every answer carries a Content-Security-Policy allowing only this origin's stylesheet
  and script (no inline script or style, no frames, forms only to this origin), and is not
  cached. Nothing secret goes to browser storage: the script only polls JSON state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from connector.adapters.http.client import PeerClient
from connector.adapters.sinks import Sink, open_sink
from connector.adapters.storage import audit_file
from connector.audit_commands import agreement_bundle, entry_line
from connector.config import Settings
from connector.console import views
from connector.console.i18n import LANGUAGES, catalogue, negotiate_language
from connector.core.audit import Report, parse_checkpoint, verify_chain
from connector.core.errors import ConnectorError, InvalidParameter, NotFound, PeerError
from connector.core.negotiation import NegotiationState
from connector.core.transfer import Transfer, TransferEvent, TransferState
from connector.participant.credentials import load_credentials
from connector.participant.datasets import DatasetDecl
from connector.participant.lint import check_folder
from connector.participant.policies import load_policies, policy_commits, policy_hash
from connector.participant.trust import Peer
from connector.registry.store import SearchQuery
from connector.service.consumer import ConsumerService, Copy, copy_mismatch
from connector.service.negotiations import NegotiationService
from connector.service.store import ListQuery, Store
from connector.service.transfers import TransferService

log = logging.getLogger("connector.console")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PREFIX = "/console"
PACKAGE = Path(__file__).resolve().parent
SESSION_COOKIE = "console_session"
LOGIN_COOKIE = "console_login"
# A session unused this long ends (a working day; the token logs in again).
SESSION_IDLE_S = 8 * 3600.0
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Cache-Control": "no-store"}
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
OPEN_PATHS = {f"{PREFIX}/login"} | {f"{PREFIX}/static/{name}"
                                    for name in ("console.css", "console.js", "favicon.svg")}


@dataclass
class Session:
    id: str
    csrf: str
    language: str
    last_seen: float


class Sessions:
    """The logged-in browsers, by the random id their cookie holds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_id: dict[str, Session] = {}

    def create(self, language: str) -> Session:
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), language,
                          self._clock())
        self._by_id[session.id] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        session = self._by_id.get(sid or "")
        if session is None or self._clock() - session.last_seen > SESSION_IDLE_S:
            self._by_id.pop(sid or "", None)
            return None
        session.last_seen = self._clock()
        return session

    def drop(self, sid: str) -> None:
        self._by_id.pop(sid, None)


@dataclass
class Progress:
    """A pull the console runs: what arrived so far, and how it ended."""

    started: float
    records: int = 0
    bytes: int = 0
    done: bool = False
    error: str | None = None
    ended: float | None = None

    def view(self, now: float) -> dict[str, Any]:
        seconds = max((self.ended or now) - self.started, 1e-6)
        return {"records": self.records, "bytes": self.bytes,
                "rate": round(self.records / seconds), "done": self.done, "error": self.error}


@dataclass(frozen=True)
class FolderView:
    """The read-only folder facts the policies page shows."""

    did: str
    signing_kid: str
    policies: Mapping[str, Mapping[str, Any]]  # name -> {"hash", "commit", "document"}
    problems: list[str]  # `connector policy check` results
    peers: list[Mapping[str, Any]]  # did, url, attributes, keys
    keys: list[str]  # kids in our did.json
    credentials: list[views.Credential]  # ours, presented in DCP mode
    offers: Mapping[str, list[str]]  # policy name -> dataset ids offering it


@dataclass
class ConsoleDeps:
    token: str
    store: Store
    negotiations: NegotiationService
    transfers: TransferService
    consumer: ConsumerService
    client: PeerClient
    search: Callable[[SearchQuery], Awaitable[dict[str, Any]]]
    warnings: Callable[[], dict[str, str]]  # failing readiness checks: name -> problem
    refused_tokens: Callable[[], dict[str, int]]  # callers' tokens refused since start, by reason
    folder: Callable[[], FolderView]
    pulls_dir: Path
    settings: Settings
    audit_enabled: bool
    clock: Callable[[], float] = time.time
    pulls: dict[str, Progress] = field(default_factory=dict)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(PACKAGE / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.globals.update(when=views.when, constraints=views.constraints, short=views.short,
                       prefix=PREFIX)
    return env


class Console:
    def __init__(self, deps: ConsoleDeps) -> None:
        self._d = deps
        self._sessions = Sessions()
        self._env = _environment()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- middleware: headers, session, CSRF, errors as pages ------------------------------

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        try:
            response = await self._guarded(request, handler)
        except web.HTTPException as exc:
            response = exc
        except ConnectorError as exc:
            response = self._page(request, "error.html", {"message": exc.message},
                                  status=exc.status)
        response.headers.update(SECURITY_HEADERS)
        # The server's time for the answer (W3C Server Timing), what `make bench` reports.
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t0) * 1000:.2f}"
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        session = self._sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            if request.method == "POST":
                raise web.HTTPForbidden(text="no session")
            raise web.HTTPSeeOther(f"{PREFIX}/login")
        request["session"] = session
        if request.method == "POST":
            form = await request.post()
            if not hmac.compare_digest(str(form.get("csrf", "")).encode(), session.csrf.encode()):
                raise web.HTTPForbidden(text="missing or wrong CSRF token")
            request["form"] = form
        return await handler(request)

    # -- rendering ------------------------------------------------------------------------

    def _language(self, request: web.Request) -> str:
        session: Session | None = request.get("session")
        if session is not None:
            return session.language
        wanted = request.query.get("lang", "")
        return wanted if wanted in LANGUAGES else negotiate_language(
            request.headers.get("Accept-Language", ""))

    def _page(self, request: web.Request, template: str, context: Mapping[str, Any],
              status: int = 200) -> web.Response:
        session: Session | None = request.get("session")
        language = self._language(request)
        html = self._env.get_template(template).render(
            _=catalogue(language).gettext, lang=language, languages=LANGUAGES,
            csrf=session.csrf if session else "", logged_in=session is not None,
            path=request.path, **context)
        return web.Response(text=html, content_type="text/html", status=status)

    # -- login, logout, language ----------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        nonce = secrets.token_urlsafe(32)
        response = self._page(request, "login.html", {"nonce": nonce, "failed": False})
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path=PREFIX)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(str(form.get("csrf", "")).encode(),
                                                nonce.encode()):
            raise web.HTTPForbidden(text="missing or wrong CSRF token")
        if not hmac.compare_digest(str(form.get("token", "")).strip().encode(),
                                   self._d.token.encode()):
            log.info("console login refused (wrong token)")
            return self._page(request, "login.html", {"nonce": nonce, "failed": True},
                              status=401)
        language = str(form.get("lang", ""))
        session = self._sessions.create(language if language in LANGUAGES else "en")
        response = web.HTTPSeeOther(f"{PREFIX}/")
        response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="Strict",
                            path=PREFIX)
        response.del_cookie(LOGIN_COOKIE, path=PREFIX)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self._sessions.drop(request["session"].id)
        response = web.HTTPSeeOther(f"{PREFIX}/login")
        response.del_cookie(SESSION_COOKIE, path=PREFIX)
        return response

    async def language(self, request: web.Request) -> web.StreamResponse:
        wanted = str(request["form"].get("lang", ""))
        if wanted in LANGUAGES:
            request["session"].language = wanted
        back = str(request["form"].get("back", ""))
        raise web.HTTPSeeOther(back if back.startswith(f"{PREFIX}/") else f"{PREFIX}/")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        path = PACKAGE / "static" / name
        if path.suffix not in STATIC_TYPES or path.parent.name != "static" or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=path.read_bytes(), content_type=STATIC_TYPES[path.suffix])

    # -- pages ----------------------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        store = self._d.store
        newest = ListQuery(limit=views.RECENT)
        _, negotiations = await store.page_negotiations(newest)
        _, transfers = await store.page_transfers(newest)
        agreements, _ = await store.page_agreements(ListQuery(limit=0))
        running = {pid: p.view(self._d.clock()) for pid, p in self._d.pulls.items()
                   if not p.done}
        return self._page(request, "overview.html", {
            "warnings": self._d.warnings(), "refused": self._d.refused_tokens(),
            "negotiations": await store.state_counts("negotiations"),
            "transfers": await store.state_counts("transfers"), "agreements": agreements,
            "recent": views.recent(negotiations, transfers), "running": running})

    async def discover(self, request: web.Request) -> web.Response:
        q, provider = request.query.get("q"), request.query.get("provider", "")
        results, catalog, problem = None, None, None
        try:
            if q is not None:
                results = await self._d.search(SearchQuery(text=q, limit=20))
            if provider:
                catalog = views.datasets(
                    await self._d.consumer.catalog(self._d.consumer.provider(provider)))
        except ConnectorError as exc:
            problem = exc.message
        return self._page(request, "discover.html", {
            "q": q or "", "provider": provider, "results": results, "catalog": catalog,
            "problem": problem})

    async def confirm(self, request: web.Request) -> web.Response:
        provider = request.query.get("provider", "")
        dataset, offer_id = request.query.get("dataset", ""), request.query.get("offer", "")
        catalog = await self._d.consumer.catalog(self._d.consumer.provider(provider))
        offer = views.find_offer(catalog, dataset, offer_id)
        if offer is None:
            raise NotFound(f"no offer {offer_id!r} of dataset {dataset!r} at {provider}")
        return self._page(request, "confirm.html", {
            "provider": provider, "dataset": dataset, "offer": offer})

    async def negotiate(self, request: web.Request) -> web.StreamResponse:
        form = request["form"]
        if form.get("accept") != "yes":
            raise InvalidParameter("the policy was not accepted")
        dataset_id = str(form.get("dataset", ""))
        chosen = await self._d.consumer.choose_offer(str(form.get("provider", "")), dataset_id,
                                                     str(form.get("offer", "")))
        record = await self._d.negotiations.start(
            provider_base=chosen.provider.dsp_base, provider_id=chosen.provider.participant_id,
            dataset_id=dataset_id, offer=chosen.offer)
        raise web.HTTPSeeOther(f"{PREFIX}/negotiations/{record.id}")

    async def _listed(self, request: web.Request, subject: str,
                      fetch: Callable[[ListQuery], Awaitable[tuple[int, list[Any]]]]
                      ) -> tuple[views.Page, dict[str, str]]:
        """The page of a list the query asks for, and the filters to repeat in its links."""
        q = request.query
        filters = {k: q.get(k, "") for k in ("state", "role", subject)}
        query = ListQuery(state=filters["state"], role=filters["role"],
                          subject=filters[subject], limit=0)
        total, _ = await fetch(query)
        number = views.page_number(q.get("page", "1"), total)
        _, rows = await fetch(dataclasses.replace(
            query, limit=views.PAGE_SIZE, offset=(number - 1) * views.PAGE_SIZE))
        filters["query"] = urlencode({k: v for k, v in filters.items() if v})
        return views.Page(rows, number, views.pages_of(total), total), filters

    async def negotiation_list(self, request: web.Request) -> web.Response:
        page, filters = await self._listed(request, "dataset", self._d.store.page_negotiations)
        return self._page(request, "negotiations.html", {
            "page": page, "filters": filters, "states": [s.value for s in NegotiationState]})

    async def negotiation_detail(self, request: web.Request) -> web.Response:
        record = await self._d.negotiations.wait(request.match_info["id"], 0)
        return self._page(request, "negotiation.html", {"n": record, "trace": views.trace})

    async def negotiation_live(self, request: web.Request) -> web.Response:
        record = await self._d.negotiations.wait(request.match_info["id"], 0)
        return web.json_response({"state": record.state.value,
                                  "final": record.state.terminal})

    async def transfer_list(self, request: web.Request) -> web.Response:
        page, filters = await self._listed(request, "agreement", self._d.store.page_transfers)
        return self._page(request, "transfers.html", {
            "page": page, "filters": filters, "states": [s.value for s in TransferState]})

    async def transfer_detail(self, request: web.Request) -> web.Response:
        record = await self._d.transfers.mine(request.match_info["id"])
        progress = self._d.pulls.get(record.id)
        return self._page(request, "transfer.html", {
            "t": record, "trace": views.trace,
            "progress": progress.view(self._d.clock()) if progress else None})

    async def transfer_live(self, request: web.Request) -> web.Response:
        record = await self._d.transfers.mine(request.match_info["id"])
        progress = self._d.pulls.get(record.id)
        view = progress.view(self._d.clock()) if progress else {}
        return web.json_response({"state": record.state.value, **view,
                                  "final": record.state.terminal and (not progress
                                                                      or progress.done)})

    async def transfer_start(self, request: web.Request) -> web.StreamResponse:
        record = await self._d.transfers.start(str(request["form"].get("agreement", "")))
        raise web.HTTPSeeOther(f"{PREFIX}/transfers/{record.id}")

    async def transfer_pull(self, request: web.Request) -> web.StreamResponse:
        record = await self._d.transfers.mine(request.match_info["id"])
        _pull_address(record)  # refused now, not in the background, when there is none
        running = self._d.pulls.get(record.id)
        if running is None or running.done:
            progress = Progress(started=self._d.clock())
            self._d.pulls[record.id] = progress
            task = asyncio.create_task(self._pull(record.id, progress))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        raise web.HTTPSeeOther(f"{PREFIX}/transfers/{record.id}")

    async def _pull(self, pid: str, progress: Progress) -> None:
        """Pull into ``pulls_dir/<pid>.jsonl``, check the copy, complete the transfer."""
        try:
            endpoint, token = _pull_address(await self._d.transfers.mine(pid))
            summary = await self._d.client.data_summary(endpoint, token)
            self._d.pulls_dir.mkdir(parents=True, exist_ok=True)
            sink = open_sink(str(self._d.pulls_dir / f"{pid}.jsonl"))
            try:
                await _drain(self._d.client.pull(endpoint, token), sink, progress)
            finally:
                sink.close()
            problem = copy_mismatch(Copy(sink.records, sink.size, sink.sha256()), summary)
            if problem is not None:
                raise InvalidParameter(problem)
            await self._d.transfers.act(pid, TransferEvent.COMPLETE)
        except ConnectorError as exc:
            progress.error = exc.message
            log.info("console pull of %s stopped: %s", pid, exc.message)
        except Exception as exc:  # a bug must not vanish with the task
            progress.error = "internal error"
            log.error("console pull of %s failed", pid, exc_info=exc)
        finally:
            progress.done, progress.ended = True, self._d.clock()

    async def agreements(self, request: web.Request) -> web.Response:
        page, filters = await self._listed(request, "dataset", self._d.store.page_agreements)
        uses = {a.id: len(await self._d.store.list_transfers(a.id)) for a in page.rows}
        return self._page(request, "agreements.html", {
            "page": page, "filters": filters, "uses": uses, "use_limit": views.use_limit,
            "expiry": views.expiry})

    async def revoke(self, request: web.Request) -> web.Response:
        reason = str(request["form"].get("reason", "")).strip()
        if not reason:
            raise InvalidParameter("a revocation needs a reason")
        agreement_id = request.match_info["id"]
        ended = await self._d.transfers.revoke_agreement(agreement_id, reason)
        return self._page(request, "revoked.html", {
            "agreement": agreement_id, "reason": reason, "ended": ended})

    async def policies(self, request: web.Request) -> web.Response:
        agreements = await self._d.store.list_agreements()
        by_hash: dict[str, list[str]] = {}
        for a in agreements:
            if a.policy_hash:
                by_hash.setdefault(a.policy_hash, []).append(a.id)
        return self._page(request, "policies.html", {"folder": self._d.folder(),
                                                     "agreements_by_hash": by_hash})

    async def audit(self, request: web.Request) -> web.Response:
        state = (await asyncio.to_thread(_audit_state, self._d.settings)
                 if self._d.audit_enabled else None)
        return self._page(request, "audit.html", {"audit": state})

    async def audit_export(self, request: web.Request) -> web.Response:
        """The evidence bundle of an agreement, as a file to keep with the contract."""
        if not self._d.audit_enabled:
            raise NotFound("the audit trail is off ([audit] enabled = false)")
        agreement = str(request["form"].get("agreement", "")).strip()
        bundle, _, _ = await asyncio.to_thread(agreement_bundle, self._d.settings, agreement)
        name = "".join(c if c.isalnum() or c in "-." else "-" for c in agreement)[:80]
        return web.Response(
            body=json.dumps(bundle, indent=1, sort_keys=True).encode(),
            content_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="audit-{name}.json"'})

    # -- the application ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard])
        r = app.router
        r.add_get("/login", self.login_form)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_post("/language", self.language)
        r.add_get("/static/{name}", self.static)
        r.add_get("/", self.overview)
        r.add_get("/discover", self.discover)
        r.add_get("/discover/confirm", self.confirm)
        r.add_post("/negotiations", self.negotiate)
        r.add_get("/negotiations", self.negotiation_list)
        r.add_get("/negotiations/{id}", self.negotiation_detail)
        r.add_get("/negotiations/{id}/live", self.negotiation_live)
        r.add_get("/transfers", self.transfer_list)
        r.add_post("/transfers", self.transfer_start)
        r.add_get("/transfers/{id}", self.transfer_detail)
        r.add_get("/transfers/{id}/live", self.transfer_live)
        r.add_post("/transfers/{id}/pull", self.transfer_pull)
        r.add_get("/agreements", self.agreements)
        r.add_post("/agreements/{id}/revoke", self.revoke)
        r.add_get("/policies", self.policies)
        r.add_get("/audit", self.audit)
        r.add_post("/audit/export", self.audit_export)
        return app

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(frozen=True)
class AuditState:
    report: Report
    signed_through: int
    newest: list[str]  # entries as `connector audit show` prints them, newest first


# Entries the audit page lists (the whole trail is verified).
AUDIT_NEWEST = 50


def _audit_state(settings: Settings) -> AuditState:
    """The trail verified as `connector audit verify` does, and its newest entries."""
    entries, checkpoints = audit_file.read_chain(settings.database)
    document = json.loads((settings.root / "did.json").read_text(encoding="utf-8"))
    report = verify_chain(entries, checkpoints, did=settings.did, document=document)
    signed = max((parse_checkpoint(c).seq for c in checkpoints), default=0)
    newest = [entry_line(e.decoded()) for e in reversed(entries[-AUDIT_NEWEST:])]
    return AuditState(report, signed, newest)


def _pull_address(record: Transfer) -> tuple[str, str]:
    """(endpoint, Authorization value) of a STARTED consumer transfer."""
    address = record.data_address
    url = address.url() if address is not None else None
    if record.state is not TransferState.STARTED or address is None or not url:
        raise NotFound(f"transfer {record.id!r} is {record.state.value} with no data address")
    return url, address.authorization_header()


async def _drain(chunks: AsyncGenerator[bytes, None], sink: Sink, progress: Progress) -> None:
    try:
        async with aclosing(chunks):
            async for chunk in chunks:
                sink.write(chunk)
                progress.records = sink.records
                progress.bytes = sink.size
    except PeerError as exc:
        raise PeerError(f"the pull stopped: {exc.message}", peer_status=exc.peer_status) from exc


def mount(app: web.Application, console: Console) -> None:
    """Serve ``console`` under /console of the management ``app`` (which must let the
    console's requests through its token check: ``OWN_AUTH``)."""
    from connector.adapters.http.management import OWN_AUTH

    sub = console.app()
    sub[OWN_AUTH] = True
    app.add_subapp(PREFIX, sub)

    async def close(_app: web.Application) -> None:
        await console.close()

    app.on_cleanup.append(close)


def read_folder_view(root: Path, *, did: str, signing_kid: str, peers: Iterable[Peer],
                     datasets: Iterable[DatasetDecl]) -> FolderView:
    """The policies page's facts, read from the participant folder ``root`` now."""
    documents = load_policies(root)
    commits = policy_commits(root)
    offers: dict[str, list[str]] = {}
    for d in datasets:
        for name in d.policies:
            offers.setdefault(name, []).append(d.id)
    did_doc = json.loads((root / "did.json").read_text(encoding="utf-8"))
    return FolderView(
        did=did, signing_kid=signing_kid,
        policies={name: {"hash": policy_hash(doc), "commit": commits.get(name, ""),
                         "document": doc} for name, doc in sorted(documents.items())},
        problems=[str(p) for p in check_folder(root)],
        peers=[{"did": p.did, "url": p.url, "attributes": dict(p.attributes),
                "keys": sorted(p.keys)} for p in peers],
        keys=[str(m.get("id", "")) for m in did_doc.get("verificationMethod", [])],
        credentials=[views.credential(jwt) for jwt in load_credentials(root)],
        offers=offers)
