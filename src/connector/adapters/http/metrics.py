"""Domain metrics in the Prometheus exposition format, on a listener of their own.

What an operator watches (docs: ``deploy/README.md`` lists every series): negotiations and
transfers started and finished (by role, final state, reason and, while the set is small and
configured, peer DID), DSP messages in and out (by message type and status, with latency
histograms), refused token verifications by reason, policy decisions by scope, result and
failing constraint, data-plane records and bytes served and received, the outbox's depth and
the age of its oldest undelivered message, storage call latency, registry publications, and
the TLS certificate's expiry.

Every label value comes from a closed set: message types from the DSP binding table below,
reasons and constraints from fixed vocabularies (anything else is ``other``), peers by DID only
when pinned in ``trust/`` and at most ``MAX_PEER_LABELS`` of them. No process id, token, key or
path ever becomes a label. Instruments are fed through the daemon's seams (record listeners,
a middleware, the outbox's send function, the catalogue's decision observer), so the services
know nothing about Prometheus.
"""

from __future__ import annotations

import inspect
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, cast

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from connector import __version__
from connector.adapters.http.errors import REQUEST_ERROR
from connector.core.binding import DSP_PATH
from connector.core.errors import AuthError, PeerError
from connector.core.negotiation import Negotiation, NegotiationState
from connector.core.policy import Decision, Scope
from connector.core.policy.model import LeftOperand
from connector.core.transfer import Transfer, TransferState
from connector.service.store import OutboxItem, Store

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Send = Callable[[OutboxItem], Awaitable[bytes]]
# Peers are labelled by DID only while trust/ pins at most this many (else all are "other").
MAX_PEER_LABELS = 20
OTHER = "other"
# Latency buckets (seconds): a DSP round trip on loopback is ~1-3 ms, a peer across the
# internet 50-500 ms; the outbox gives up on a request after 10 s (REQUEST_TIMEOUT_S).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A storage call is an in-memory cache hit (µs) or a group commit (~0.1-5 ms on a local disk).
STORAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

# DSP 2025-1 §CAT/§CN/§TP HTTPS bindings: (method, path below the area) -> message type.
# One table for the messages we receive (the request path) and those we send (the outbox URL).
DSP_MESSAGE_TYPES: dict[tuple[str, str], str] = {
    ("POST", "catalog/request"): "CatalogRequestMessage",
    ("GET", "catalog/datasets/{id}"): "DatasetRequest",
    ("POST", "negotiations/request"): "ContractRequestMessage",
    ("POST", "negotiations/offers"): "ContractOfferMessage",
    ("GET", "negotiations/{pid}"): "ContractNegotiationRequest",
    ("POST", "negotiations/{pid}/request"): "ContractRequestMessage",
    ("POST", "negotiations/{pid}/offers"): "ContractOfferMessage",
    ("POST", "negotiations/{pid}/agreement"): "ContractAgreementMessage",
    ("POST", "negotiations/{pid}/agreement/verification"): "ContractAgreementVerificationMessage",
    ("POST", "negotiations/{pid}/events"): "ContractNegotiationEventMessage",
    ("POST", "negotiations/{pid}/termination"): "ContractNegotiationTerminationMessage",
    ("POST", "transfers/request"): "TransferRequestMessage",
    ("GET", "transfers/{pid}"): "TransferProcessRequest",
    ("POST", "transfers/{pid}/start"): "TransferStartMessage",
    ("POST", "transfers/{pid}/completion"): "TransferCompletionMessage",
    ("POST", "transfers/{pid}/suspension"): "TransferSuspensionMessage",
    ("POST", "transfers/{pid}/termination"): "TransferTerminationMessage",
}
_FIXED_SEGMENTS = frozenset({"request", "offers"})
# Store methods not timed: one record by id, served from the store's memory (a µs each).
UNTIMED_PREFIX = "get_"

# Why a token verification was refused: the first keyword found in the AuthError's message.
REFUSAL_REASONS: tuple[tuple[str, str], ...] = (
    ("missing authorization", "missing"),
    ("not a bearer", "missing"),
    ("replayed", "replayed"),
    ("lifetime", "lifetime"),
    ("too many live tokens", "overload"),
    ("not yet valid", "not_yet_valid"),
    ("expired", "expired"),
    ("signature", "signature"),
    ("not signed", "signature"),
    ("audience", "audience"),
    ("unknown key id", "unknown_key"),
    ("untrusted issuer", "untrusted_issuer"),
    ("revoked", "revoked"),
    ("suspended", "revoked"),
    ("status", "status"),
    ("credential", "credential"),
    ("presentation", "credential"),
    ("did document", "did_document"),
    ("malformed", "malformed"),
    ("push", "push_token"),
)
# Termination codes we send (service/negotiations.py, service/transfers.py) and the DSP ones.
KNOWN_CODES = frozenset({
    "offer-withdrawn", "counter-offer-refused", "policy-error", "policy-denied",
    "agreement-mismatch", "terminated-by-operator", "delivery-failed", "agreement-revoked",
    "push-failed",
})
_CONSTRAINTS = frozenset(op.value for op in LeftOperand)


def message_type(method: str, path: str) -> str:
    """The DSP message type of a request to ``path`` (ours or a peer's), or ``other``."""
    for area in ("negotiations", "transfers", "catalog"):
        at = path.rfind(f"/{area}/")  # the binding part ends the path
        if at < 0:
            continue
        parts = path[at + len(area) + 2:].strip("/").split("/")
        if area != "catalog" and parts[0] not in _FIXED_SEGMENTS:
            parts[0] = "{pid}"
        elif area == "catalog" and len(parts) == 2 and parts[0] == "datasets":
            parts[1] = "{id}"
        return DSP_MESSAGE_TYPES.get((method, "/".join([area, *parts])), OTHER)
    return OTHER


def refusal_reason(message: str) -> str:
    """A bounded reason for a refused verification (the message itself names peers)."""
    lowered = message.lower()
    return next((label for word, label in REFUSAL_REASONS if word in lowered), OTHER)


def finish_reason(reason: str | None) -> str:
    """The termination code of a finished process (``code: text``), if one we know."""
    if not reason:
        return "none"
    code = reason.split(":", 1)[0].strip()
    return code if code in KNOWN_CODES else OTHER


def failing_constraint(decision: Decision) -> str:
    """The left operand of the first constraint that made ``decision`` deny."""
    if decision.allowed:
        return "none"
    for result in decision.trace:
        if result.blocking and result.left_operand:
            return result.left_operand if result.left_operand in _CONSTRAINTS else OTHER
    return "rule"  # no constraint failed: no permission applies (or a prohibition holds)


def _finished_now(history: list[Any], final: frozenset[str]) -> bool:
    """Whether the latest timeline line is the step *into* a final state (not a note after)."""
    if not history or history[-1].state not in final:
        return False
    return len(history) == 1 or history[-2].state not in final


_FINAL_NEGOTIATION = frozenset({NegotiationState.FINALIZED.value,
                                NegotiationState.TERMINATED.value})
_FINAL_TRANSFER = frozenset({TransferState.COMPLETED.value, TransferState.TERMINATED.value})


class _Count:
    """One labelled counter's value: a plain number (the event loop is its only writer)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Observed:
    """One labelled histogram's buckets (not cumulative), sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket ``le`` bound: value <= it
        self.sum += value


class _Lean(Collector):
    """A labelled counter or histogram on the hot path, kept in plain numbers and turned
    into Prometheus samples only when scraped. prometheus_client's own instruments take a
    lock and re-check their state on every call: ~4 µs per ``inc`` and ~10 µs per
    ``observe`` here, against ~0.1 and ~0.4 µs; a negotiation makes about fifteen such
    calls in each daemon. Children are memoised by label values (a closed set)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *,
                 registry: CollectorRegistry, buckets: Sequence[float] | None = None) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets) if buckets is not None else None
        self._children: dict[tuple[str, ...], Any] = {}
        registry.register(self)

    def __call__(self, *labels: str) -> Any:
        child = self._children.get(labels)
        if child is None:
            if len(labels) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}")
            child = self._children[labels] = (
                _Count() if self.buckets is None else _Observed(self.buckets))
        return child

    labels = __call__

    def collect(self) -> Iterator[Metric]:
        if self.buckets is None:
            counter = CounterMetricFamily(self.name, self.documentation,
                                          labels=self.labelnames)
            for labels, count in self._children.items():
                counter.add_metric(labels, count.value)
            yield counter
            return
        histogram = HistogramMetricFamily(self.name, self.documentation,
                                          labels=self.labelnames)
        les = [str(floatToGoString(b)) for b in self.buckets]  # type: ignore[no-untyped-call]
        les.append("+Inf")
        for labels, observed in self._children.items():
            cumulative, total = [], 0
            for le, n in zip(les, observed.counts, strict=True):
                total += n
                cumulative.append((le, float(total)))
            histogram.add_metric(labels, cumulative, observed.sum)
        yield histogram


class Metrics:
    """The instruments of one daemon, in a registry of their own (no global state)."""

    def __init__(self, *, peers: Callable[[], Collection[str]] = tuple,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        # No ``*_created`` series: half the exposition, and nothing an alert needs.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._peers = peers
        self._clock = clock
        self._kinds: dict[tuple[str, str], str] = {}  # (method, route) -> DSP message type
        r = self.registry
        Gauge("connector_build_info", "Version of the running connector (always 1).",
              ["version"], registry=r).labels(__version__).set(1)
        process = ["role", "peer"]
        finished = ["role", "state", "reason", "peer"]
        self.negotiations_started = _Lean(
            "connector_negotiations_started", "Contract negotiations opened.", process,
            registry=r)
        self.negotiations_finished = _Lean(
            "connector_negotiations_finished", "Contract negotiations that reached a final "
            "state, by that state and the termination code.", finished, registry=r)
        self.transfers_started = _Lean(
            "connector_transfers_started", "Transfer processes opened.", process, registry=r)
        self.transfers_finished = _Lean(
            "connector_transfers_finished", "Transfer processes that reached a final state, "
            "by that state and the termination code.", finished, registry=r)
        self.dsp_in = _Lean(
            "connector_dsp_messages_received",
            "DSP requests received, by message type and HTTP status.", ["type", "status"],
            registry=r)
        self.dsp_in_seconds = _Lean(
            "connector_dsp_message_received_seconds", "Time to answer a DSP request.",
            ["type"], buckets=LATENCY_BUCKETS, registry=r)
        self.dsp_out = _Lean(
            "connector_dsp_messages_sent", "DSP messages sent from the outbox, by type and the "
            "peer's status (2xx, the error status, or 'error' for no answer).",
            ["type", "status"], registry=r)
        self.dsp_out_seconds = _Lean(
            "connector_dsp_message_sent_seconds", "Time for a peer to acknowledge a message.",
            ["type"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens_refused = Counter(
            "connector_token_verifications_refused", "Callers' tokens refused, by reason.",
            ["reason"], registry=r)
        self.policy_decisions = _Lean(
            "connector_policy_decisions", "Policy evaluations, by scope, result and the left "
            "operand of the first failing constraint.", ["scope", "result", "constraint"],
            registry=r)
        records = _Lean("connector_dataplane_records", "Records (JSON lines) on the data "
                        "plane, served as provider or received as consumer.", ["direction"],
                        registry=r)
        data_bytes = _Lean("connector_dataplane_bytes", "Bytes on the data plane, served as "
                           "provider or received as consumer.", ["direction"], registry=r)
        self._served = (records("served"), data_bytes("served"))
        self._received = (records("received"), data_bytes("received"))
        self.consent_withheld = _Lean(
            "connector_consent_withheld_records", "Records a consent-governed stream did not "
            "serve, by reason class (docs/consent.md); never by subject.", ["reason"],
            registry=r)
        self.outbox_depth = Gauge("connector_outbox_depth",
                                  "Messages in the outbox not yet delivered.", registry=r)
        self.outbox_oldest_age = Gauge(
            "connector_outbox_oldest_age_seconds", "Age of the oldest message still being "
            "delivered (0 when none).", registry=r)
        self.storage_seconds = _Lean("connector_storage_seconds",
                                     "Latency of storage calls, by operation.",
                                     ["operation"], buckets=STORAGE_BUCKETS, registry=r)
        self.registry_publications = Counter(
            "connector_registry_publications", "Catalogue publications to registries, by "
            "registry (as configured) and result.", ["registry", "result"], registry=r)
        self.certificate_expiry = Gauge(
            "connector_tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate of the DSP listener expires (Unix time).", registry=r)
        self.certificate_expiring = Gauge(
            "connector_tls_certificate_expiring", "1 when the TLS certificate expires within "
            "[health] certificate_warn_days.", registry=r)
        self.health_check = Gauge("connector_health_check_ok",
                                  "1 when a readiness check passes, 0 when it fails.",
                                  ["check"], registry=r)
        self.ready = Gauge("connector_ready", "1 when /health/ready answers 200.", registry=r)
        self.draining = Gauge("connector_draining",
                              "1 after SIGTERM, while in-flight requests finish.", registry=r)

    # -- exposition --------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        return web.Response(body=self.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- labels ------------------------------------------------------------------------------

    def peer_label(self, did: str | None) -> str:
        known = self._peers()
        return did if did and did in known and len(known) <= MAX_PEER_LABELS else OTHER

    # -- process records (the services' listeners) -------------------------------------------

    def on_negotiation(self, record: Negotiation, new: bool) -> None:
        self._on_record(record, new, self.negotiations_started, self.negotiations_finished,
                        _FINAL_NEGOTIATION)

    def on_transfer(self, record: Transfer, new: bool) -> None:
        self._on_record(record, new, self.transfers_started, self.transfers_finished,
                        _FINAL_TRANSFER)

    def _on_record(self, record: Negotiation | Transfer, new: bool, started: _Lean,
                   finished: _Lean, final: frozenset[str]) -> None:
        peer = self.peer_label(record.counterparty_id)
        if new:
            started(record.role.value, peer).inc()
        if _finished_now(record.history, final):
            finished(record.role.value, record.state.value, finish_reason(record.reason),
                     peer).inc()

    # -- DSP messages in (a middleware of the public app) ------------------------------------

    @web.middleware
    async def dsp_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outside the error middleware: every DSP request's message type, final status and
        latency, and the reason of a refused token (the error the response was made from)."""
        if not request.path.startswith(DSP_PATH):  # data plane, push, credential service
            response = await handler(request)
            self._count_refusal(request)
            return response
        t0 = self._clock()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            kind = self._kind_of(request)
            self.dsp_in(kind, str(status)).inc()
            self.dsp_in_seconds(kind).observe(self._clock() - t0)
            self._count_refusal(request)

    def _count_refusal(self, request: web.Request) -> None:
        error = request.get(REQUEST_ERROR)
        if isinstance(error, AuthError):
            self.tokens_refused.labels(refusal_reason(error.message)).inc()

    def _kind_of(self, request: web.Request) -> str:
        """The message type of a request, memoised per route (a request matching no route is
        typed from its path, not memoised: its path is the caller's choice)."""
        resource = request.match_info.route.resource
        if resource is None:
            return message_type(request.method, request.path[len(DSP_PATH):])
        key = (request.method, resource.canonical)
        kind = self._kinds.get(key)
        if kind is None:
            kind = self._kinds[key] = message_type(request.method,
                                                   resource.canonical[len(DSP_PATH):])
        return kind

    # -- DSP messages out (the outbox's send function) ---------------------------------------

    def metered_send(self, send: Send) -> Send:
        async def metered(item: OutboxItem) -> bytes:
            # The area's segment cannot occur in scheme or host: the whole URL will do.
            kind = message_type("POST", item.url)
            t0 = self._clock()
            try:
                body = await send(item)
            except PeerError as exc:
                status = str(exc.peer_status) if exc.peer_status else "error"
                self.dsp_out(kind, status).inc()
                raise
            self.dsp_out(kind, "2xx").inc()
            self.dsp_out_seconds(kind).observe(self._clock() - t0)
            return body
        return metered

    # -- policy, data plane, registries ------------------------------------------------------

    def on_decision(self, scope: Scope, decision: Decision) -> None:
        result = "permit" if decision.allowed else "deny"
        self.policy_decisions(scope.value, result, failing_constraint(decision)).inc()

    def served(self, chunk: bytes) -> None:
        self._served[0].inc(chunk.count(b"\n"))
        self._served[1].inc(len(chunk))

    def withheld(self, counts: Mapping[str, int]) -> None:
        """A consent-governed stream's withheld records, by reason class (a closed set)."""
        for reason, count in counts.items():
            self.consent_withheld(str(reason)).inc(count)

    def received(self, chunk: bytes) -> None:
        self._received[0].inc(chunk.count(b"\n"))
        self._received[1].inc(len(chunk))

    def on_publication(self, registry: str, ok: bool) -> None:
        self.registry_publications.labels(registry, "ok" if ok else "failed").inc()

    # -- storage -----------------------------------------------------------------------------

    def timed_store(self, store: Store) -> Store:
        """``store`` with every coroutine method timed into ``connector_storage_seconds``."""
        return cast(Store, _TimedStore(store, self.storage_seconds, self._clock))


class _TimedStore:
    """Delegates to a store; each coroutine method's latency goes into a histogram, except
    reads of one record by id (``get_*``), which the store serves from memory."""

    def __init__(self, store: Store, histogram: _Lean, clock: Callable[[], float]) -> None:
        self._store = store
        self._histogram = histogram
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        """The store's attribute, timed if it is a coroutine method; built once per name."""
        target = getattr(self._store, name)
        if not callable(target):
            return target  # data: always read through
        if not inspect.iscoroutinefunction(target) or name.startswith(UNTIMED_PREFIX):
            self.__dict__[name] = target
            return target
        child = self._histogram.labels(name)
        clock = self._clock

        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return await target(*args, **kwargs)
            finally:
                child.observe(clock() - t0)
        self.__dict__[name] = timed
        return timed
