"""Composition root: config -> storage -> services -> web apps; signals and shutdown.

One process serves DSP and the data plane over HTTPS on the public port, and the management
API over plain HTTP on 127.0.0.1 only. The folder's trust/, datasets/ and policies/ are
re-read when they change (polled once a second); a broken edit is logged and the previous
version stays in force, so a typo never takes the connector down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ipaddress
import json
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

import connector
from connector import logs
from connector.adapters.http import tls_buffers
from connector.adapters.http.client import PeerClient, client_ssl_context
from connector.adapters.http.credential_service import CS_PATH, CredentialServiceRoutes
from connector.adapters.http.dataplane import DataPlane
from connector.adapters.http.dsp import DspDeps, DspRoutes
from connector.adapters.http.errors import error_middleware
from connector.adapters.http.guard import GuardedHttp
from connector.adapters.http.health import Health, HealthDeps, OutboxWatch, StoreState
from connector.adapters.http.management import ManagementApi, ManagementDeps
from connector.adapters.http.metrics import Metrics
from connector.adapters.http.openapi import contract_log_from_env
from connector.adapters.http.push import PushedCopies, Pusher, PushReceiver
from connector.adapters.http.session import IDLE_S
from connector.adapters.progress import ProgressBoard
from connector.adapters.sources import missing_source
from connector.adapters.storage import engine
from connector.adapters.storage.engine import AnyStore
from connector.adapters.storage.postgres import CLAIM_S, PostgresStore
from connector.adapters.storage.schema import latest
from connector.config import CONFIG_FILE, Settings, load_settings
from connector.console.credentials import StatusChecker
from connector.console.facts import read_folder_view
from connector.console.web import Console, ConsoleDeps
from connector.console.web import mount as mount_console
from connector.core import dcp
from connector.core.binding import created_by
from connector.core.errors import Area, ConfigError, ConnectorError, PeerError, Problem
from connector.core.identity import KeyRing, document_keys, with_credential_service
from connector.core.policy import Decision, Scope
from connector.keys import check_private_mode, load_any_signing_key, write_private
from connector.participant.consents import FolderConsents
from connector.participant.credentials import load_credentials
from connector.participant.datasets import DatasetDecl, load_datasets
from connector.participant.layout import DATA_TOKEN_SECRET
from connector.participant.lint import MISSING_SOURCE, check_folder
from connector.participant.policies import load_policies, policy_commits, policy_hash
from connector.participant.trust import Peer, load_trust
from connector.registry.publisher import RegistryPublisher, Signer
from connector.registry.search import RegistrySearch, add_search_route
from connector.registry.witness import WitnessSender
from connector.service.audit import AuditTrail, StepAudit, audit_settings
from connector.service.auth import Identity, Verifier
from connector.service.catalog import Catalog, Claims
from connector.service.consents import ConsentService
from connector.service.consumer import ConsumerService
from connector.service.dcp_verifier import CredentialService, DcpVerifier, DidResolver
from connector.service.locks import KeyedLocks
from connector.service.negotiations import NegotiationService
from connector.service.outbox import Outbox
from connector.service.store import OutboxItem, Store
from connector.service.transfers import TransferService
from connector.signals import until_signalled

log = logging.getLogger("connector")
# How often the folder is checked for edits (mtime scan of three small directories).
RELOAD_INTERVAL_S = 1.0
# How often expired rows of seen token ids are deleted from the database.
JTI_PURGE_INTERVAL_S = 60.0
# Replicas look for a dead replica's outbox messages this often (a third of their claim).
ORPHAN_SWEEP_S = CLAIM_S / 3
# The youngest generation is collected every GC_YOUNG net allocations of container objects
# (Python's default is 700): a DSP step allocates thousands that die before a collection ever
# sees them, and fewer collections walk what lives: 2-4 % less CPU per negotiation in both
# daemons (``python -m bench gc``, bench/README.md).
GC_YOUNG = 10_000


@dataclass
class FolderState:
    """What the daemon read from the folder; swapped whole on reload."""

    peers: dict[str, Peer]
    datasets: dict[str, DatasetDecl]
    catalog: Catalog
    stamp: tuple[tuple[str, float], ...] = field(default=())
    # Declared datasets not offered, with the reason (a missing source file).
    unavailable: dict[str, str] = field(default_factory=dict)


def data_token_secret(root: Path) -> bytes:
    """The key refreshed data tokens are derived with (keys/data-token.secret, 0600); made
    by ``connector init``, and here for a folder made before it did."""
    path = root / DATA_TOKEN_SECRET
    if not path.exists():
        write_private(path, secrets.token_bytes(32))
    check_private_mode(path)
    return path.read_bytes()


def _stamp(root: Path, datasets: Mapping[str, DatasetDecl] | None = None
           ) -> tuple[tuple[str, float], ...]:
    """What a change of the folder changes: the files of trust/, datasets/ and policies/,
    and whether each dataset's source file is there (-1 when it is not)."""
    files = [p for d in ("trust", "datasets", "policies") for p in sorted((root / d).glob("*"))]
    sources = [d.source_path for d in (datasets or {}).values() if d.source_path is not None]
    return (tuple((str(p), p.stat().st_mtime) for p in files if p.is_file())
            + tuple((str(p), 0.0 if p.exists() else -1.0) for p in sources))


def read_folder(settings: Settings,
                on_decision: Callable[[Scope, Decision], None] | None = None,
                skip: frozenset[Path] = frozenset()) -> FolderState:
    """The folder as the daemon serves it, but the files in ``skip``; a dataset whose source
    file is missing, or one of whose policies is skipped, is kept (a pull under an earlier
    agreement is refused with that reason) but not offered."""
    root = settings.root
    datasets = load_datasets(root, skip)
    declared = {d.id: d for d in datasets}
    policies = load_policies(root, skip)
    unavailable = {d.id: why for d in datasets
                   if (why := missing_source(d.source_type, d.source_path)
                       or _policy_missing(d, policies)) is not None}
    catalog = Catalog.from_folder(
        [d for d in datasets if d.id not in unavailable], policies,
        participant_id=settings.did, dsp_base=settings.dsp_base,
        clock=time.time, hashes={name: policy_hash(doc) for name, doc in policies.items()},
        commits=policy_commits(root), on_decision=on_decision)
    return FolderState(peers=load_trust(root, skip), datasets=declared, catalog=catalog,
                       stamp=_stamp(root, declared), unavailable=unavailable)


def _policy_missing(decl: DatasetDecl, policies: Mapping[str, Any]) -> str | None:
    missing = [name for name in decl.policies if name not in policies]
    return (f"its policy {missing[0]} is not in force (`connector policy check` names the "
            "problem)") if missing else None


def not_in_force(problems: Iterable[Problem]) -> frozenset[Path]:
    """The files of trust/, datasets/ and policies/ that the daemon leaves out at start,
    because ``connector policy check`` finds a problem in them (a missing source file
    is none: only that dataset goes unoffered)."""
    return frozenset(Path(p.file) for p in problems
                     if not p.message.startswith(MISSING_SOURCE)
                     and Path(p.file).parent.name in ("trust", "datasets", "policies"))


# The connector.toml settings a running daemon follows; any other edit waits for a restart.
LIVE_SETTINGS = frozenset({"signing_key", "signing_kid", "trusted_issuers",
                           "required_credentials", "scope_alias", "status_cache_s",
                           "allowed_hosts"})
# Each setting by its table and key in connector.toml (docs/settings.md lists them all).
SETTING_NAMES = {
    "signing_key": "[signing] key", "signing_kid": "[signing] kid",
    "trusted_issuers": "[identity] trusted_issuers",
    "required_credentials": "[identity] required_credentials",
    "scope_alias": "[identity] scope_alias", "status_cache_s": "[identity] status_cache_s",
    "allowed_hosts": "[identity] allowed_hosts",
    "registries": "[registry] urls", "identity_mode": "[identity] mode",
    "host": "[server] host", "port": "[server] port", "tls_cert": "[server] tls_cert",
    "tls_key": "[server] tls_key", "public_url": "[participant] url",
    "name": "[participant] name", "did": "[participant] did",
    "management_port": "[management] port", "management_token_file": "[management] token_file",
    "database": "[storage] sqlite", "postgres_dsn_file": "[storage] postgres_dsn_file",
    "postgres_pool_size": "[storage] postgres_pool_size",
    "token_ttl_s": "[signing] token_ttl_s",
    "clock_leeway_s": "[signing] clock_leeway_s", "did_cache_s": "[identity] did_cache_s",
    "tls_ca_files": "[identity] tls_ca_files", "log": "[log]", "health": "[health]",
    "metrics_listen": "[metrics]", "metrics_explicit": "[metrics]",
    "data_token_ttl_s": "[server] data_token_ttl_s",
}
# Fields that are no setting of their own (the folder; the raw tables the others come from).
_NOT_SETTINGS = frozenset({"root", "extra"})


def restart_needed(running: Settings, fresh: Settings) -> list[str]:
    """The edited settings of ``fresh`` that the daemon started with ``running`` does not
    follow until it restarts, by their names in connector.toml."""
    names = [SETTING_NAMES.get(f.name, f.name) for f in dataclasses.fields(Settings)
             if f.name not in LIVE_SETTINGS | _NOT_SETTINGS
             and getattr(fresh, f.name) != getattr(running, f.name)]
    return list(dict.fromkeys(names))


def refused_edit(root: Path, found: list[Problem] | None = None) -> str | None:
    """Why an edit of the folder is not taken: the first problem ``connector policy check``
    reports (``found``, else checked now), as ``file:line: message`` (and how many more), or
    None when it passes. A missing source file is no reason: only that dataset goes
    unoffered."""
    found = check_folder(root) if found is None else found
    problems = [p for p in found if not p.message.startswith(MISSING_SOURCE)]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{problems[0]}{more}"


# How the DCP verifier reaches holders and did:web documents, from the settings and the client
# TLS context: ``GuardedHttp`` and ``DidResolver`` unless an embedding passes its own.
DcpTransport = Callable[[Settings, ssl.SSLContext], tuple[GuardedHttp, DidResolver]]


def dcp_transport(settings: Settings, client_ssl: ssl.SSLContext) -> tuple[GuardedHttp,
                                                                            DidResolver]:
    """The production DCP transport: HTTPS to the hosts ``[identity]`` allows."""
    http = GuardedHttp(client_ssl, allowed_hosts=settings.allowed_hosts)
    return http, DidResolver(http, cache_s=settings.did_cache_s, clock=time.time)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Daemon:
    def __init__(self, settings: Settings, *,
                 unpinned_peers: Mapping[str, str] | None = None, tls: bool = True,
                 automatic: bool = True, dcp_transport: DcpTransport = dcp_transport,
                 extra_routes: Callable[[web.Application], None] | None = None) -> None:
        """What an embedding (the interoperability profiles under ``interop/``) may set that
        ``connector.toml`` cannot:

        - ``unpinned_peers``: participant id -> DSP base of peers that cannot be pinned in
          trust/ (EDC under its test identity), which the management API addresses all the same;
        - ``tls=False``: the DSP listener speaks plain HTTP, on a loopback host only (a test
          kit whose client trusts no self-signed certificate);
        - ``automatic=False``: negotiations and transfers advance only when asked to (the
          test kit drives each step);
        - ``dcp_transport``: how the DCP verifier fetches (a loopback test kit's plain HTTP);
        - ``extra_routes``: adds the embedding's own routes to the DSP listener's app.
        """
        self.settings = settings
        self._started_settings = settings  # what edits waiting for a restart are told from
        self.restart_needed: list[str] = []
        self.unpinned_peers = dict(unpinned_peers or {})
        if not tls and not is_loopback(settings.host):
            raise ConfigError(f"plain HTTP is for a loopback listener, not {settings.host}")
        self._tls = tls
        self._automatic = automatic
        self._extra_routes = extra_routes
        # [metrics]: None when switched off (then nothing is measured at all).
        self.metrics = (Metrics(peers=lambda: self.folder.peers)
                        if settings.metrics_listen is not None else None)
        self.outbox_watch = OutboxWatch()
        # As strict as `connector policy check`: one warning per problem, file and line;
        # the files with one stay out, the rest is served.
        problems = check_folder(settings.root)
        self.folder_problems = [str(p) for p in problems]
        for problem in problems:
            log.warning("connector policy check: %s", problem)
        self.folder = read_folder(settings, self._on_decision, not_in_force(problems))
        self.consents = ConsentService(  # consents/: docs/consent.md
            FolderConsents(settings.root), clock=time.time,
            claims_for=lambda did: self.claims_for(did).attributes)
        for dataset, why in self.folder.unavailable.items():
            log.warning("dataset %s is not offered: %s", dataset, why)
        key = load_any_signing_key(settings.signing_key)
        self.dcp_mode = settings.identity_mode == "dcp"
        self.identity = Identity(did=settings.did, kid=settings.signing_kid, key=key,
                                 ttl_s=settings.token_ttl_s, clock=time.time,
                                 dcp_mode=self.dcp_mode,
                                 grants=dcp.type_scopes(settings.required_credentials,
                                                        settings.scope_alias))
        self._config_stamp = self._config_files()
        self.did_document = self._read_did_document()
        self.verifier: Verifier = Verifier(did=settings.did, peers=self.folder.peers,
                                           leeway_s=settings.clock_leeway_s, clock=time.time)
        self.credential_service: CredentialService | None = None
        self.dcp_http, self._did_resolver = dcp_transport(settings, self._client_ssl())
        if self.dcp_mode:
            self._wire_dcp()
        self.client = PeerClient(self.identity, self._client_ssl(),
                                 on_data=self.metrics.received if self.metrics else None)
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        # What start() opened that stop() closes, in the order opened (closed in reverse).
        self._opened: list[Callable[[], Awaitable[None]]] = []
        self.health = self._health()
        self.trail: AuditTrail | None = None  # start() opens it when [audit] is on
        self._raw_store: AnyStore | None = None  # the engine's store, start() opens it
        self._rereads: set[asyncio.Task[None]] = set()  # records another replica changed

    def _client_ssl(self) -> ssl.SSLContext:
        """System CAs, pinned peers' certificates and [identity] tls_ca_files."""
        pems = [p.tls_cert_pem or "" for p in self.folder.peers.values()]
        for path in self.settings.tls_ca_files:
            try:
                pems.append(path.read_text())
            except OSError as exc:
                log.error("[identity] tls_ca_files: cannot read %s: %s", path, exc.strerror)
        return client_ssl_context(pems)

    # -- identity: DCP wiring and [signing] reload -------------------------------------------

    def _management_api(self) -> ManagementApi:
        consumer = ConsumerService(self.client.catalog, lambda: self.folder.peers,
                                   unpinned=self.unpinned_peers,
                                   explain_hidden=self.client.dataset_refusal)
        return ManagementApi(ManagementDeps(
            token=self.settings.management_token(), store=self.store,
            negotiations=self.negotiations, transfers=self.transfers, client=self.client,
            consumer=consumer, push=self.push_receiver, status=self.status_view,
            consents=self.consents))

    def status_view(self) -> dict[str, Any]:
        """What ``connector status`` says about the daemon itself."""
        started = self._started_settings
        return {"version": connector.__version__, "name": started.name, "did": started.did,
                "publicUrl": started.public_url, "managementUrl": started.management_url,
                "identityMode": started.identity_mode, "restartNeeded": self.restart_needed,
                "unavailableDatasets": self.folder.unavailable,
                "folderProblems": self.folder_problems}

    def _console(self, search: RegistrySearch) -> Console:
        """The data steward's console over the same services as the management API."""
        s = self.settings
        consumer = ConsumerService(self.client.catalog, lambda: self.folder.peers,
                                   unpinned=self.unpinned_peers)
        return Console(ConsoleDeps(
            token=s.management_token(), store=self.store, negotiations=self.negotiations,
            transfers=self.transfers, consumer=consumer, client=self.client,
            search=search.search, pulls_dir=s.root / "state" / "pulls", settings=s,
            progress=self.progress, push_to=self.push_receiver.address_for,
            credential_status=StatusChecker(self.dcp_http, self._did_resolver,
                                            s.clock_leeway_s, time.time),
            audit_enabled=self.audit_settings.enabled,
            warnings=lambda: {k: v for k, v in self.health.problems.items() if v},
            refused_tokens=self._refused_tokens,
            folder=lambda: read_folder_view(
                s.root, did=s.did, signing_kid=self.identity.kid,
                peers=self.folder.peers.values(), datasets=self.folder.datasets.values())))

    def _refused_tokens(self) -> dict[str, int]:
        """Callers' tokens refused since the start, by reason (from the metrics)."""
        if self.metrics is None:
            return {}
        return {sample.labels["reason"]: int(sample.value)
                for metric in self.metrics.tokens_refused.collect()
                for sample in metric.samples
                if sample.name.endswith("_total") and sample.value}

    def _wire_dcp(self) -> None:
        s = self.settings
        verifier = DcpVerifier(
            identity=self.identity, resolver=self._did_resolver, http=self.dcp_http,
            trusted_issuers=s.trusted_issuers, required_types=s.required_credentials,
            leeway_s=s.clock_leeway_s, status_cache_s=s.status_cache_s, clock=time.time,
            scope_alias=s.scope_alias)
        self.verifier = verifier
        self.credential_service = CredentialService(
            identity=self.identity, verifier=verifier, own_keys=self._own_keys,
            credentials=lambda: load_credentials(s.root), leeway_s=s.clock_leeway_s,
            clock=time.time)

    def _own_keys(self) -> KeyRing:
        # Our access tokens may be signed by any key still in our did.json (a rotation).
        return KeyRing(document_keys(self.did_document, self.settings.did))

    def _read_did_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.settings.root / "did.json").read_text())
        if self.dcp_mode:
            doc = with_credential_service(doc, self.settings.public_url + CS_PATH)
        return doc

    def _config_files(self) -> tuple[float, ...]:
        root = self.settings.root
        return tuple(p.stat().st_mtime if p.exists() else 0.0
                     for p in (root / CONFIG_FILE, root / "did.json"))

    def _reload_config(self) -> None:
        """Follow edits of connector.toml and did.json: ``connector keys rotate`` (a new did.json,
        [signing] key and kid), then ``[identity]`` (``_reload_identity``)."""
        stamp = self._config_files()
        if stamp == self._config_stamp:
            return
        try:
            fresh = load_settings(self.settings.root)
            document = self._read_did_document()
            key = load_any_signing_key(fresh.signing_key)
        except (ConnectorError, OSError, ValueError) as exc:
            log.error("connector.toml or did.json changed but cannot be loaded; keeping the "
                      "previous settings: %s", exc)
            return
        self._config_stamp = stamp
        self.did_document.clear()
        self.did_document.update(document)  # served as is by the DSP routes
        if fresh.signing_kid != self.identity.kid:
            self.identity.reload(kid=fresh.signing_kid, key=key)
            self.publisher.use_signer(Signer(did=fresh.did, kid=fresh.signing_kid, key=key))
            log.info("signing with %s from now on", fresh.signing_kid)
        if self.trail is not None:
            self.trail.reload_key(kid=fresh.signing_kid, key=key)
            self._audit_reload("keys", {"keys": self._own_keys_jwks(),
                                        "signing": fresh.signing_kid})
        self._reload_identity(fresh)
        self._note_restart_needed(fresh)

    def _note_restart_needed(self, fresh: Settings) -> None:
        """Log once which edited settings wait for a restart (``connector status`` shows
        them too); the running daemon keeps the values it started with."""
        pending = restart_needed(self._started_settings, fresh)
        if pending == self.restart_needed:
            return
        self.restart_needed = pending
        if pending:
            log.warning("connector.toml: %s changed; restart the daemon to apply it (it runs "
                        "with the previous value until then)", ", ".join(pending))
        else:
            log.info("connector.toml: no edit waits for a restart any more")

    def _reload_identity(self, fresh: Settings) -> None:
        """Follow edits of ``[identity]``: trusted issuers, required credentials, scope alias,
        caches and allowed hosts take effect without a restart; a mode change needs one."""
        keys = ("trusted_issuers", "required_credentials", "scope_alias", "status_cache_s",
                "allowed_hosts")
        old = self.settings
        if all(getattr(fresh, k) == getattr(old, k) for k in keys):
            return
        self.settings = dataclasses.replace(old, **{k: getattr(fresh, k) for k in keys})
        self.dcp_http.set_allowed_hosts(fresh.allowed_hosts)
        if not isinstance(self.verifier, DcpVerifier):
            return  # pinned trust verifies no credential: nothing of it applies until DCP
        self.verifier.reload_identity(trusted_issuers=fresh.trusted_issuers,
                                      required_types=fresh.required_credentials,
                                      scope_alias=fresh.scope_alias,
                                      status_cache_s=fresh.status_cache_s)
        self.identity.grant(dcp.type_scopes(fresh.required_credentials, fresh.scope_alias))
        changed = [k for k in keys if getattr(fresh, k) != getattr(old, k)]
        log.info("reloaded [identity] (%s) without a restart", ", ".join(changed))

    def claims_for(self, did: str) -> Claims:
        if isinstance(self.verifier, DcpVerifier):
            known = self.verifier.last_claims(did)
            return known or Claims(participant_id=did, attributes={})
        peer = self.folder.peers.get(did)
        return Claims(participant_id=did, attributes=dict(peer.attributes) if peer else {})

    async def start(self) -> None:
        s = self.settings
        await self._serve_metrics()
        store = await engine.open_store(s, audit=self._step_audit())
        self._raw_store = store
        self._opened.append(store.close)
        self.store = self._observed_store(store)
        await self._start_audit(store)
        # Replays stay refused across a restart: the jtis accepted before it, until they expire.
        live = await self.verifier.restore(self.store)
        if live:
            log.info("remembering %d unexpired token ids from before the restart", live)
        self.outbox = Outbox(self.store, self._outbox_send(), self._delivery_failed,
                             self._initial_ack, fetch=self.client.get)
        self._opened.append(self.outbox.close)
        shared = store.process_locks() if isinstance(store, PostgresStore) else None
        self.negotiations = NegotiationService(
            store=self.store, catalog=lambda: self.folder.catalog, outbox=self.outbox,
            did=s.did, dsp_base=s.dsp_base, clock=time.time, automatic=self._automatic,
            locks=KeyedLocks(shared))
        # Push: we receive at /push/{pid} as consumer; a pushed copy completes once verified.
        pushed = PushedCopies()
        self.transfers = TransferService(
            store=self.store, catalog=lambda: self.folder.catalog, outbox=self.outbox,
            did=s.did, dsp_base=s.dsp_base, data_url=f"{s.public_url}/data",
            token_ttl_s=s.data_token_ttl_s, claims_for=self.claims_for, clock=time.time,
            token_secret=data_token_secret(s.root), automatic=self._automatic,
            completion_guard=pushed.completion_problem, locks=KeyedLocks(shared))
        self._observe_services()
        if isinstance(store, PostgresStore):  # replicas: any replica's change wakes our waits
            store.on_change = self._changed_elsewhere
            self.negotiations.watch.listening = self.transfers.watch.listening = store.listening
        # What each running pull or push has moved so far (the console shows it).
        self.progress = ProgressBoard(clock=time.time)
        self.transfers.listeners.append(self.progress.on_transfer)
        self.push_receiver = PushReceiver(self.transfers, s.public_url, pushed, self.progress)
        # ... and push as provider.
        self.pusher = Pusher(self.transfers, self.client, lambda: self.folder.datasets,
                             self.progress, trail=self.trail, consents=self.consents,
                             claims=store.push_claims()
                             if isinstance(store, PostgresStore) else None)
        self._opened.append(self.pusher.close)
        await self.outbox.start()
        await self._serve(self._public_app(), s.host, s.port,
                          self._server_ssl() if self._tls else None)
        app = self._management_api().app()
        search = RegistrySearch.from_settings(s, session=self.client.session)
        add_search_route(app, search)
        mount_console(app, self._console(search))  # /console: connector/console/
        if (contract := contract_log_from_env()) is not None:  # adapters/http/openapi.py
            app.middlewares.insert(0, contract)
        await self._serve(app, "127.0.0.1", s.management_port, None)
        self._tasks.append(asyncio.create_task(self._reload_loop()))
        self._tasks.append(asyncio.create_task(self._purge_loop()))
        if isinstance(store, PostgresStore):
            self._tasks.append(asyncio.create_task(self._orphan_loop(store)))
        self._tasks.append(asyncio.create_task(self.health.run()))
        # README §Registry: the catalogue's metadata goes to the registries on start and on
        # every folder change; nothing here waits for them (no choke point).
        self.publisher = RegistryPublisher.from_settings(
            s, session=self.client.session, catalog=lambda: self.folder.catalog,
            on_published=self.metrics.on_publication if self.metrics else None)
        self._tasks.append(asyncio.create_task(self.publisher.run()))

    # -- audit trail (service/audit.py, docs/audit.md) ----------------------------------------

    def _step_audit(self) -> StepAudit | None:
        self.audit_settings = audit_settings(self.settings.extra, str(self.settings.root))
        if not self.audit_settings.enabled:
            return None
        return StepAudit(clock=time.time, policy_text=self._policy_text)

    def _policy_text(self, digest: str) -> bytes | None:
        """The policy document (canonical JSON, ``folder.policy_hash``'s form) with that hash."""
        for offer in self.folder.catalog.offers.values():
            if offer.policy_hash == digest:
                return msgspec.json.encode(offer.policy, order="sorted")
        return None

    async def _start_audit(self, store: AnyStore) -> None:
        s = self.settings
        if not self.audit_settings.enabled:
            return
        witness = (WitnessSender(s.registries, session=self.client.session)
                   if self.audit_settings.witness and s.registries else None)
        self.trail = AuditTrail(store, did=s.did, kid=s.signing_kid,
                                key=load_any_signing_key(s.signing_key),
                                settings=self.audit_settings, clock=time.time,
                                on_checkpoint=witness or (lambda _jws: None))
        store.on_audit = self.trail.appended
        self._opened.append(self._last_checkpoint)
        await self.trail.keys(self._own_keys_jwks(), s.signing_kid)
        await self.trail.append("start", (), {"policies": self._policy_versions()})
        self._tasks.append(asyncio.create_task(self.trail.run()))

    async def _last_checkpoint(self) -> None:
        """The tail written since the last checkpoint gets one before the store closes."""
        if self.trail is None:
            return
        try:
            await self.trail.checkpoint()
        except Exception as exc:  # the store failed: stop anyway, and say so
            log.error("cannot write the last audit checkpoint: %s", exc)

    def _own_keys_jwks(self) -> dict[str, dict[str, Any]]:
        return document_keys(self.did_document, self.settings.did)

    def _policy_versions(self) -> dict[str, dict[str, str | None]]:
        return {o.policy_name: {"hash": o.policy_hash, "commit": o.policy_commit}
                for o in self.folder.catalog.offers.values()}

    def _audit_reload(self, what: str, data: dict[str, Any]) -> None:
        """Record a reload (its own step; a failure to record it is logged)."""
        if self.trail is not None:
            task = asyncio.create_task(self.trail.append("reload", (), {"what": what, **data}))
            task.add_done_callback(_log_audit_failure)

    def _public_app(self) -> web.Application:
        app = web.Application(middlewares=self._public_middlewares(),
                              client_max_size=1024 * 1024)
        app["dsp"] = True
        self.health.register(app)  # for load balancers: the listener they balance
        DspRoutes(DspDeps(verifier=self.verifier, catalog=lambda: self.folder.catalog,
                          negotiations=self.negotiations, transfers=self.transfers,
                          did_document=self.did_document, trail=self.trail)).register(app)
        if self.credential_service is not None:
            CredentialServiceRoutes(self.credential_service).register(app)
        DataPlane(self.transfers, lambda: self.folder.datasets,
                  on_served=self.metrics.served if self.metrics else None,
                  trail=self.trail, consents=self.consents,
                  on_withheld=self.metrics.withheld if self.metrics else None).register(app)
        self.push_receiver.register(app)
        if self._extra_routes is not None:
            self._extra_routes(app)
        return app

    def _server_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return ctx

    async def _serve(self, app: web.Application, host: str, port: int,
                     ssl_context: ssl.SSLContext | None) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               keepalive_timeout=IDLE_S)
        await runner.setup()
        self._runners.append(runner)
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024).start()
        except OSError as exc:  # e.g. the port is taken: a clear error, not a traceback
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc

    async def _delivery_failed(self, item: OutboxItem, error: PeerError) -> None:
        self.outbox_watch.settled(item)
        if await self.store.get_negotiation(item.process_id) is not None:
            await self.negotiations.on_delivery_failed(item.process_id, error)
        else:
            await self.transfers.on_delivery_failed(item.process_id, error)

    async def _initial_ack(self, item: OutboxItem, body: bytes) -> None:
        try:
            if created_by(item.url) is Area.NEGOTIATION:
                await self.negotiations.on_initial_ack(item.process_id, body)
            else:
                await self.transfers.on_initial_ack(item.process_id, body)
        except ConnectorError as exc:  # a peer's malformed ack: we learn its pid later
            log.warning("ignoring the peer's answer to %s: %s", item.url, exc.message)

    async def _reload_loop(self) -> None:
        refused: tuple[tuple[str, float], ...] = ()  # the folder as last refused
        while True:
            await asyncio.sleep(RELOAD_INTERVAL_S)
            self._reload_config()
            self.consents.refresh()
            stamp = _stamp(self.settings.root, self.folder.datasets)
            if stamp in (self.folder.stamp, refused):
                continue
            try:  # the daemon takes what `connector policy check` passes, nothing less
                found = check_folder(self.settings.root)
                self.folder_problems = [str(p) for p in found]
                reason = refused_edit(self.settings.root, found)
                fresh = read_folder(self.settings, self._on_decision) if reason is None else None
            except (ConnectorError, OSError) as exc:
                reason, fresh = str(exc), None
            if fresh is None:
                refused = stamp  # one warning per change, not one per second
                log.warning("folder edit not applied, the previous version stays in force: "
                            "%s; run `connector policy check`", reason)
                continue
            refused = ()
            self._log_unavailable(fresh)
            self.folder = fresh
            self._audit_reload("folder", {"policies": self._policy_versions(),
                                          "trust": sorted(fresh.peers)})
            self.publisher.changed()
            self.verifier.reload(fresh.peers)
            self.client.set_ssl(self._client_ssl())
            self.dcp_http.set_ssl(self._client_ssl())
            log.info("reloaded trust/, datasets/ and policies/")

    def _changed_elsewhere(self, kind: str, pid: str) -> None:
        """Replicas: a record changed (maybe in another replica); wake its long polls."""
        watched = (self.negotiations.watch.watched(pid) if kind == "n" else
                   self.transfers.watch.watched(pid) if kind == "t" else False)
        if watched:
            task = asyncio.create_task(self._reread(kind, pid))
            self._rereads.add(task)
            task.add_done_callback(self._rereads.discard)

    async def _reread(self, kind: str, pid: str) -> None:
        if kind == "n":
            negotiation = await self.store.get_negotiation(pid)
            if negotiation is not None:
                self.negotiations.watch.changed(pid, negotiation)
            return
        transfer = await self.store.get_transfer(pid)
        if transfer is not None:
            self.transfers.watch.changed(pid, transfer)

    async def _orphan_loop(self, store: PostgresStore) -> None:
        """Replicas: send the messages of a replica that died (their claim ran out)."""
        while True:
            await asyncio.sleep(ORPHAN_SWEEP_S)
            try:
                orphans = await store.claim_orphans()
            except Exception as exc:  # the database failed: try again next time
                log.error("cannot claim orphaned outbox messages: %s", exc)
                continue
            if orphans:
                log.info("sending %d message(s) a stopped replica left", len(orphans))
                self.outbox.submit(orphans)
            try:
                pushes = await store.started_pushes()
            except Exception as exc:  # the database failed: try again next time
                log.error("cannot look for pushes a stopped replica left: %s", exc)
                continue
            for push in pushes:  # a push just started is its replica's to claim first
                if push.updated_at < time.time() - CLAIM_S:
                    self.pusher.resume(push.id)

    def _log_unavailable(self, fresh: FolderState) -> None:
        """A WARNING for each dataset that stops being offered, an INFO for each that is
        offered again."""
        for dataset, why in fresh.unavailable.items():
            if self.folder.unavailable.get(dataset) != why:
                log.warning("dataset %s is not offered: %s", dataset, why)
        for dataset in self.folder.unavailable.keys() - fresh.unavailable.keys():
            if dataset in fresh.datasets:
                log.info("dataset %s is offered again: its source is back", dataset)

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.store.purge_jtis(int(time.time()))
            except Exception as exc:  # the database failed: try again next time
                log.error("cannot purge expired token ids: %s", exc)
            await asyncio.sleep(JTI_PURGE_INTERVAL_S)

    # -- operations: metrics, health, drain ----------------------------------------------------

    def _on_decision(self, scope: Scope, decision: Decision) -> None:
        if self.metrics is not None:
            self.metrics.on_decision(scope, decision)

    def _health(self) -> Health:
        s = self.settings
        return Health(HealthDeps(
            database=s.database, schema_version=latest(engine.engine_of(s)),
            store_probe=self._postgres_probe if s.postgres_dsn_file else None,
            tls_cert=s.tls_cert,
            key_files=lambda: (self.settings.signing_key, self.settings.tls_key),
            settings=s.health, outbox=self.outbox_watch, metrics=self.metrics))

    async def _postgres_probe(self) -> StoreState:
        store = self._raw_store
        if not isinstance(store, PostgresStore):
            return StoreState("the store is not open yet")
        problem, depth = await store.probe(latest("postgres"))
        return StoreState(problem, depth)

    async def _serve_metrics(self) -> None:
        """The metrics listener (``/metrics``, ``/health/*``), first up and last down. A port
        taken is an error when ``[metrics]`` names it, a warning for the default."""
        listen = self.settings.metrics_listen
        if self.metrics is None or listen is None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self.metrics.handle)
        self.health.register(app)
        try:
            await self._serve(app, listen[0], listen[1], None)
        except ConfigError as exc:
            if self.settings.metrics_explicit:
                raise
            log.warning("metrics are off: %s (set [metrics] listen, or enabled = false)", exc)

    def _observed_store(self, store: AnyStore) -> Store:
        return self.metrics.timed_store(store) if self.metrics is not None else store

    def _outbox_send(self) -> Callable[[OutboxItem], Awaitable[bytes]]:
        send: Callable[[OutboxItem], Awaitable[bytes]] = self.client.deliver
        if self.metrics is not None:
            send = self.metrics.metered_send(send)
        return self.outbox_watch.wrap(send)

    def _observe_services(self) -> None:
        if self.metrics is not None:
            self.negotiations.listeners.append(self.metrics.on_negotiation)
            self.transfers.listeners.append(self.metrics.on_transfer)

    def _public_middlewares(self) -> list[Middleware]:
        if self.metrics is None:
            return [error_middleware]
        return [self.metrics.dsp_middleware, error_middleware]

    async def drain(self) -> None:
        """SIGTERM: ready answers 503 for [health] drain_s; ``stop`` then lets in-flight
        requests finish (aiohttp's graceful shutdown) before the process exits."""
        await self.health.drain()

    async def stop(self) -> None:
        """Stop what ``start`` started, also when it failed part-way (a port taken): the
        store's thread would otherwise keep the process from exiting. Reverse order of start:
        tasks, listeners, then pusher, outbox and store."""
        for task in self._tasks:
            task.cancel()
        for runner in reversed(self._runners):
            await runner.cleanup()
        while self._opened:
            await self._opened.pop()()
        await self.client.close()
        await self.dcp_http.close()


def _log_audit_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cannot write an audit entry: %s", task.exception())


async def serve(root: Path, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM."""
    settings = load_settings(root)
    logs.setup(settings.log)
    daemon = Daemon(settings)
    try:
        await daemon.start()
    except BaseException:
        await daemon.stop()
        raise
    gc.freeze()  # start-up objects live forever: keep them out of every collection
    await until_signalled(f"connector {settings.name} ready: {settings.public_url} "
                          f"(management {settings.management_url})", ready)
    await daemon.drain()
    await daemon.stop()


def run_forever(root: Path) -> None:
    logs.setup(logs.LogSettings())  # plain text until connector.toml is read
    tls_buffers.install()  # idle peers' connections cost 16 KiB of read buffer, not 256
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    asyncio.run(serve(root))
