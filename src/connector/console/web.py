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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from connector.adapters.http.client import PeerClient
from connector.adapters.progress import ProgressBoard
from connector.audit_tool import agreement_bundle
from connector.config import Settings
from connector.console import views
from connector.console.credentials import StatusChecker
from connector.console.facts import FolderView, audit_state
from connector.console.i18n import LANGUAGES, catalogue, negotiate_language
from connector.console.pulls import Pulls
from connector.core.errors import ConnectorError, InvalidParameter, NotFound
from connector.core.messages import DataAddress
from connector.core.negotiation import NegotiationState
from connector.core.transfer import TransferState
from connector.registry.store import SearchQuery
from connector.service.consumer import ConsumerService
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
    pulls_dir: Path  # where the console's pulls and pushes write
    settings: Settings
    audit_enabled: bool
    progress: ProgressBoard  # what running pulls and pushes have moved so far
    credential_status: StatusChecker  # our credentials' revocation, checked on each view
    # A push's data address for a sink (PushReceiver.address_for); None: no pushes here.
    push_to: Callable[[str], Callable[[str], DataAddress]] | None = None


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
        self._pulls = Pulls(transfers=deps.transfers, client=deps.client,
                            folder=deps.pulls_dir, board=deps.progress)

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
        running = self._d.progress.running()
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
        return self._page(request, "negotiation.html", {
            "n": record, "trace": views.trace, "can_push": self._d.push_to is not None})

    async def negotiation_live(self, request: web.Request) -> web.Response:
        record = await self._d.negotiations.wait(request.match_info["id"], 0)
        return web.json_response({"state": record.state.value,
                                  "final": record.state.terminal})

    async def transfer_list(self, request: web.Request) -> web.Response:
        page, filters = await self._listed(request, "agreement", self._d.store.page_transfers)
        progress = {t.id: view for t in page.rows
                    if (view := self._d.progress.view(t.id)) is not None}
        return self._page(request, "transfers.html", {
            "page": page, "filters": filters, "states": [s.value for s in TransferState],
            "progress": progress})

    async def transfer_detail(self, request: web.Request) -> web.Response:
        record = await self._d.transfers.mine(request.match_info["id"])
        return self._page(request, "transfer.html", {
            "t": record, "trace": views.trace, "progress": self._d.progress.view(record.id),
            "can_push": self._d.push_to is not None})

    async def transfer_live(self, request: web.Request) -> web.Response:
        """A transfer's state and its stream's progress; ``final`` once nothing will change."""
        record = await self._d.transfers.mine(request.match_info["id"])
        progress = self._d.progress.view(record.id)
        return web.json_response({"state": record.state.value, **(progress or {}),
                                  "final": record.state.terminal and (not progress
                                                                      or progress["done"])})

    async def progress(self, request: web.Request) -> web.Response:
        """The running streams' progress by transfer id (the transfer list polls it)."""
        return web.json_response(self._d.progress.running())

    async def transfer_start(self, request: web.Request) -> web.StreamResponse:
        """Open a transfer under an agreement: a pull, or (``push=yes``) one the provider
        pushes to us, written into ``state/pulls/``."""
        form = request["form"]
        push_to = None
        if form.get("push") == "yes":
            if self._d.push_to is None:
                raise NotFound("this connector receives no pushes")
            self._d.pulls_dir.mkdir(parents=True, exist_ok=True)
            sink = self._d.pulls_dir / f"push-{secrets.token_hex(8)}.jsonl"
            push_to = self._d.push_to(str(sink.resolve()))
        record = await self._d.transfers.start(str(form.get("agreement", "")), push_to=push_to)
        raise web.HTTPSeeOther(f"{PREFIX}/transfers/{record.id}")

    async def transfer_pull(self, request: web.Request) -> web.StreamResponse:
        record = await self._d.transfers.mine(request.match_info["id"])
        self._pulls.start(record)
        raise web.HTTPSeeOther(f"{PREFIX}/transfers/{record.id}")

    async def agreements(self, request: web.Request) -> web.Response:
        page, filters = await self._listed(request, "dataset", self._d.store.page_agreements)
        store = self._d.store
        transfers = {a.id: len(await store.list_transfers(a.id)) for a in page.rows}
        uses = {a.id: await store.agreement_uses(a.id) for a in page.rows}  # the provider counts
        return self._page(request, "agreements.html", {
            "page": page, "filters": filters, "uses": uses, "transfers": transfers,
            "use_limit": views.use_limit, "expiry": views.expiry})

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
        folder = await asyncio.to_thread(self._d.folder)  # git and the linter: blocking
        credentials = await self._d.credential_status.check(folder.credentials)
        return self._page(request, "policies.html", {
            "folder": folder, "agreements_by_hash": by_hash, "credentials": credentials})

    async def audit(self, request: web.Request) -> web.Response:
        state = (await asyncio.to_thread(audit_state, self._d.settings)
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
        r.add_get("/progress", self.progress)
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
        await self._pulls.close()


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
