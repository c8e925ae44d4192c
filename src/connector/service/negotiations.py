"""Contract negotiation, both roles: load record -> core step -> persist with outbox -> dispatch.

Automatic reactions (the connector's default behaviour, DSP 2025-1 §CN 1.2):
- provider, on a request for a known offer: evaluate the policy against the caller's verified
  claims (negotiation scope); grant -> Agreement, deny -> Termination carrying the reasons;
- provider, on ACCEPTED: Agreement; on verification: FINALIZED;
- consumer, on an Agreement matching what it asked for: verification; otherwise Termination;
- consumer, on a counter-offer with the same rules it asked for: ACCEPTED; otherwise it waits
  for its operator (management API);
- consumer, on a provider-initiated offer: waits for its operator.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from connector.core import codec
from connector.core import negotiation as cn
from connector.core.binding import path_for, process_path
from connector.core.catalog import (
    RULE_KEYS,
    echoed_rules,
    equivalent_rules,
    has_rules,
    rules_of,
)
from connector.core.errors import (
    Area,
    ConflictError,
    MalformedMessage,
    NotFound,
    OfferRejected,
    PolicyError,
    ProtocolError,
    UnknownProcess,
)
from connector.core.hosts import callback_refusal
from connector.core.messages import (
    ContractAgreementMessage,
    ContractNegotiation,
    ContractNegotiationTerminationMessage,
    ContractOfferMessage,
    ContractRequestMessage,
    Message,
    NegotiationMessage,
)
from connector.core.negotiation import Negotiation, NegotiationEvent, NegotiationState
from connector.core.policy import Decision, Scope
from connector.core.process import HistoryEntry, Role
from connector.service.catalog import Catalog, Claims
from connector.service.locks import KeyedLocks
from connector.service.outbox import Outbox
from connector.service.store import Agreement, Outgoing, Store
from connector.service.watch import Watch

log = logging.getLogger("connector.negotiation")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NegotiationService:
    def __init__(self, *, store: Store, catalog: Callable[[], Catalog], outbox: Outbox,
                 did: str, dsp_base: str, clock: Callable[[], float],
                 new_id: Callable[[], str] = lambda: f"urn:uuid:{uuid.uuid4()}",
                 automatic: bool = True, locks: KeyedLocks | None = None) -> None:
        self._store = store
        self.automatic = automatic  # False: only the operator (or a test script) acts
        self.listeners: list[Callable[[Negotiation, bool], None]] = []
        self._catalog = catalog
        self._outbox = outbox
        self.did = did
        self.dsp_base = dsp_base
        self._clock = clock
        self._new_id = new_id
        self.watch: Watch[Negotiation] = Watch()
        self._locks = locks or KeyedLocks()  # replicas: with the database's locks

    # -- persistence with effects ------------------------------------------------------------

    def _outgoing(self, record: Negotiation, msg: Message) -> Outgoing:
        """``msg`` to our counterparty, at its path in the binding table."""
        base = record.counterparty_address.rstrip("/")
        return Outgoing(process_id=record.id, url=base + path_for(msg, record.role.other),
                        audience=record.counterparty_id or "", body=codec.encode(msg))

    async def _save(self, record: Negotiation, out: list[Outgoing], *, new: bool = False) -> None:
        agreement = None
        if record.state is NegotiationState.FINALIZED and record.agreement is not None:
            agreement = Agreement(
                id=str(record.agreement["@id"]), negotiation_id=record.id, role=record.role.value,
                dataset_id=record.dataset_id, assigner=str(record.agreement.get("assigner", "")),
                assignee=str(record.agreement.get("assignee", "")),
                created_at=record.updated_at, body=record.agreement,
                policy_hash=record.policy_hash, policy_commit=record.policy_commit)
        items = await self._store.save_negotiation(record, outbox=out, agreement=agreement,
                                                   expect_new=new)
        self._outbox.submit(items)
        self.watch.changed(record.id, record)
        for listener in self.listeners:
            listener(record, new)

    async def _owned(self, pid: str, claims: Claims) -> Negotiation:
        """Our record for ``pid`` if the caller is its counterparty; 404 otherwise."""
        record = await self._store.get_negotiation(pid)
        if record is None or record.counterparty_id != claims.participant_id:
            # DSP 2025-1 §CN HTTPS binding: unknown or foreign pids are a 404.
            raise UnknownProcess(f"no negotiation {pid!r}", area=Area.NEGOTIATION,
                                 **_pids_of(pid))
        return record

    # -- DSP: inbound ------------------------------------------------------------------------

    async def get(self, pid: str, claims: Claims) -> Negotiation:
        return await self._owned(pid, claims)

    async def on_initial_request(self, msg: ContractRequestMessage, claims: Claims) -> Negotiation:
        """N2: a consumer opens a negotiation with us as provider. Returns the REQUESTED ack,
        or the negotiation this request opened before if it is sent again."""
        if msg.provider_pid is not None or not msg.callback_address:
            raise MalformedMessage("an initial ContractRequestMessage needs callbackAddress "
                                   "and no providerPid", consumer_pid=msg.consumer_pid)
        _check_callback(msg.callback_address, consumer_pid=msg.consumer_pid)
        async with self._locks.hold(_peer_key(claims.participant_id, msg.consumer_pid)):
            existing = await self._known(msg, claims)
            if existing is not None:
                return existing
            record = self._requested(msg, claims)
            after, out = self._provider_decide(record, claims) if self.automatic else (record, [])
            try:
                async with self._locks.hold(record.id):
                    await self._save(after, out, new=True)
            except ConflictError:  # the same request, committed first elsewhere
                existing = await self._known(msg, claims)
                if existing is None:
                    raise
                return existing
            return record

    def _requested(self, msg: ContractRequestMessage, claims: Claims) -> Negotiation:
        """The REQUESTED record an initial request opens, once its offer checks out."""
        offer = self._catalog().find_offer(_offer_id(msg.offer))
        target = msg.offer.get("target")
        if offer is None or (target is not None and target != offer.dataset_id):
            raise OfferRejected(f"unknown offer {_offer_id(msg.offer)!r} for target {target!r}",
                                consumer_pid=msg.consumer_pid)
        terms = offer.body(with_target=True)
        if has_rules(msg.offer):
            # DSP 2025-1 §CN: the request carries the offer it accepts. Its rules must be the
            # published ones; spelled as the consumer spelled them, they go into the agreement
            # (EDC compares the agreement with the offer as *it* stored it).
            if not equivalent_rules(msg.offer, terms):
                raise OfferRejected(
                    f"the rules requested for offer {offer.id!r} differ from the published "
                    f"ones: {json.dumps(rules_of(terms), sort_keys=True)[:500]}",
                    consumer_pid=msg.consumer_pid)
            terms = {k: v for k, v in terms.items() if k not in RULE_KEYS} | echoed_rules(
                msg.offer)
        cn.target_state(Role.CONSUMER, None, NegotiationEvent.REQUEST)
        now = self._clock()
        pid = self._new_id()
        return Negotiation(
            id=pid, role=Role.PROVIDER, state=NegotiationState.REQUESTED,
            consumer_pid=msg.consumer_pid, provider_pid=pid, dataset_id=offer.dataset_id,
            offer=terms, counterparty_address=msg.callback_address or "",
            counterparty_id=claims.participant_id, created_at=now, updated_at=now,
            history=[created(now, "consumer", NegotiationEvent.REQUEST, "REQUESTED")])

    async def _known(self, msg: ContractRequestMessage, claims: Claims) -> Negotiation | None:
        """The negotiation this peer already opened with this consumerPid: an initial request
        sent again gets the same process (``core.process``, the unique key in the store)."""
        existing = await self._store.find_negotiation(
            counterparty=claims.participant_id, consumer_pid=msg.consumer_pid,
            role=Role.PROVIDER.value)
        if existing is not None:
            log.info("negotiation %s: the initial request was sent again; acknowledged",
                     existing.id)
        return existing

    async def on_message(self, pid: str, msg: NegotiationMessage, claims: Claims, *,
                         message_id: str | None = None) -> Negotiation:
        """Any message on an existing negotiation, for either role. Returns the new record;
        a message already applied, sent again, changes nothing (``core.process``)."""
        async with self._locks.hold(pid):
            record = await self._owned(pid, claims)
            _check_pids(record, msg)
            sender = record.role.other
            if cn.is_redelivery(record, sender, msg, message_id):
                log.info("negotiation %s: %s sent again; acknowledged", pid,
                         cn.event_of(msg).value)
                return record
            record = cn.apply(record, sender, msg, self._clock(), message_id=message_id)
            record, out = self._react(record, claims) if self.automatic else (record, [])
            await self._save(record, out)
            return record

    async def on_initial_offer(self, msg: ContractOfferMessage, claims: Claims) -> Negotiation:
        """N8: a provider opens a negotiation with us as consumer; we wait for our operator."""
        if msg.consumer_pid is not None or not msg.callback_address:
            raise MalformedMessage("an initial ContractOfferMessage needs callbackAddress "
                                   "and no consumerPid", provider_pid=msg.provider_pid)
        _check_callback(msg.callback_address, provider_pid=msg.provider_pid)
        cn.target_state(Role.PROVIDER, None, NegotiationEvent.OFFER)
        now = self._clock()
        pid = self._new_id()
        record = Negotiation(
            id=pid, role=Role.CONSUMER, state=NegotiationState.OFFERED, consumer_pid=pid,
            provider_pid=msg.provider_pid, dataset_id=str(msg.offer.get("target", "")),
            offer=msg.offer, counterparty_address=msg.callback_address,
            counterparty_id=claims.participant_id, created_at=now, updated_at=now,
            history=[created(now, "provider", NegotiationEvent.OFFER, "OFFERED")])
        await self._save(record, [], new=True)
        return record

    # -- reactions --------------------------------------------------------------------------

    def _provider_decide(self, record: Negotiation, claims: Claims
                         ) -> tuple[Negotiation, list[Outgoing]]:
        """Grant (Agreement) or refuse (Termination with the policy's reasons)."""
        offer = self._catalog().find_offer(_offer_id(record.offer))
        if offer is None:
            return self._terminate(record, "offer-withdrawn", "the offer is no longer published")
        if not equivalent_rules(record.offer, offer.body()):
            return self._terminate(record, "counter-offer-refused",
                                   "the requested rules differ from the published offer")
        try:
            decision = self._catalog().decide(offer, claims, Scope.NEGOTIATION)
        except PolicyError as exc:
            record = cn.noted(record, self._clock(), "policy", "cannot evaluate", exc.message)
            return self._terminate(record, "policy-error", exc.message)
        verdict = "granted" if decision.allowed else "denied"
        record = cn.noted(record, self._clock(), "policy",
                          f"{offer.policy_name} {verdict} for {claims.participant_id}",
                          "\n".join(trace_lines(decision)))
        if not decision.allowed:
            return self._terminate(record, "policy-denied", "; ".join(decision.reasons))
        msg = self._message_for(record, NegotiationEvent.AGREE)
        after = cn.apply(record, Role.PROVIDER, msg, self._clock())
        after = msgspec.structs.replace(after, policy_hash=offer.policy_hash,
                                        policy_commit=offer.policy_commit)
        return after, [self._outgoing(after, msg)]

    def _message_for(self, record: Negotiation, event: NegotiationEvent, *,
                     reason: str = "", code: str = "terminated-by-operator",
                     offer: dict[str, Any] | None = None) -> NegotiationMessage:
        """The message carrying ``event`` from us on this negotiation."""
        cpid, ppid = record.consumer_pid, record.provider_pid or ""
        E = NegotiationEvent
        if event is E.OFFER:
            return ContractOfferMessage(provider_pid=ppid, consumer_pid=cpid, offer=record.offer)
        if event is E.REQUEST:
            return ContractRequestMessage(consumer_pid=cpid, provider_pid=ppid,
                                          offer=record.offer)
        if event is E.ACCEPT:
            return cn.event(record, "ACCEPTED")
        if event is E.FINALIZE:
            return cn.event(record, "FINALIZED")
        if event is E.VERIFY:
            return cn.verification(record)
        if event is E.AGREE:
            agreement = cn.build_agreement(
                offer or record.offer, agreement_id=self._new_id(), dataset_id=record.dataset_id,
                assigner=self.did, assignee=record.counterparty_id or "",
                timestamp=_iso(self._clock()))
            return ContractAgreementMessage(consumer_pid=cpid, provider_pid=ppid,
                                            agreement=agreement)
        return ContractNegotiationTerminationMessage(consumer_pid=cpid, provider_pid=ppid,
                                                     code=code, reason=[reason or "terminated"])

    def _terminate(self, record: Negotiation, code: str, reason: str
                   ) -> tuple[Negotiation, list[Outgoing]]:
        log.info("terminating negotiation %s: %s: %s", record.id, code, reason)
        msg = self._message_for(record, NegotiationEvent.TERMINATE, reason=reason, code=code)
        after = cn.apply(record, record.role, msg, self._clock())
        return after, [self._outgoing(after, msg)]

    def _react(self, record: Negotiation, claims: Claims) -> tuple[Negotiation, list[Outgoing]]:
        """The default automatic reaction to the state an inbound message produced."""
        state = record.state
        if record.role is Role.PROVIDER:
            if state in (NegotiationState.REQUESTED, NegotiationState.ACCEPTED):
                return self._provider_decide(record, claims)
            if state is NegotiationState.VERIFIED:
                return self._step(record, NegotiationEvent.FINALIZE)
            return record, []
        if state is NegotiationState.AGREED:
            problem = self._agreement_problem(record)
            if problem:
                return self._terminate(record, "agreement-mismatch", problem)
            return self._step(record, NegotiationEvent.VERIFY)
        return record, []

    def _step(self, record: Negotiation, event: NegotiationEvent
              ) -> tuple[Negotiation, list[Outgoing]]:
        msg = self._message_for(record, event)
        after = cn.apply(record, record.role, msg, self._clock())
        return after, [self._outgoing(after, msg)]

    def _agreement_problem(self, record: Negotiation) -> str | None:
        agreement = record.agreement or {}
        if agreement.get("assignee") not in (None, self.did):
            return f"agreement assignee {agreement.get('assignee')!r} is not us"
        if agreement.get("target") != record.dataset_id:
            return f"agreement target {agreement.get('target')!r} is not {record.dataset_id!r}"
        if not equivalent_rules(agreement, record.offer):
            return "agreement rules differ from the offer"
        return None

    # -- management: consumer side ----------------------------------------------------------

    async def start(self, *, provider_base: str, provider_id: str, dataset_id: str,
                    offer: dict[str, Any]) -> Negotiation:
        """Open a negotiation as consumer: persist REQUESTED, queue the initial request."""
        now = self._clock()
        pid = self._new_id()
        offer = {**offer, "target": dataset_id}
        record = Negotiation(
            id=pid, role=Role.CONSUMER, state=NegotiationState.REQUESTED, consumer_pid=pid,
            provider_pid=None, dataset_id=dataset_id, offer=offer,
            counterparty_address=provider_base, counterparty_id=provider_id,
            created_at=now, updated_at=now,
            history=[created(now, "consumer", NegotiationEvent.REQUEST, "REQUESTED")])
        msg = ContractRequestMessage(consumer_pid=pid, offer=offer,
                                     callback_address=self.dsp_base)
        cn.target_state(Role.CONSUMER, None, NegotiationEvent.REQUEST)
        await self._save(record, [self._outgoing(record, msg)], new=True)
        return record

    async def offer(self, *, consumer_base: str, consumer_id: str, dataset_id: str,
                    send: Callable[[str, str, bytes], Awaitable[bytes]]) -> Negotiation:
        """Open a negotiation as provider (N8): send our offer, persist with the consumerPid.

        The initial offer is sent directly rather than through the outbox: until the consumer
        answers 201 we do not know its pid, and an operator who starts this sees the error.
        """
        entry = self._catalog().entries.get(dataset_id)
        if entry is None or not entry.offers:
            raise NotFound(f"no dataset {dataset_id!r} with an offer")
        cn.target_state(Role.PROVIDER, None, NegotiationEvent.OFFER)
        pid = self._new_id()
        offer = entry.offers[0].body(with_target=True)
        msg = ContractOfferMessage(provider_pid=pid, offer=offer, callback_address=self.dsp_base)
        url = consumer_base.rstrip("/") + path_for(msg, Role.CONSUMER)
        ack = codec.decode(await send(url, consumer_id, codec.encode(msg)),
                           ContractNegotiation, area=Area.NEGOTIATION)
        now = self._clock()
        record = Negotiation(
            id=pid, role=Role.PROVIDER, state=NegotiationState.OFFERED,
            consumer_pid=ack.consumer_pid, provider_pid=pid, dataset_id=dataset_id, offer=offer,
            counterparty_address=consumer_base, counterparty_id=consumer_id,
            created_at=now, updated_at=now,
            history=[created(now, "provider", NegotiationEvent.OFFER, "OFFERED")])
        await self._save(record, [], new=True)
        return record

    async def act(self, pid: str, event: NegotiationEvent, reason: str = "") -> Negotiation:
        """Our operator (or a test script) sends ``event`` on a negotiation, in either role.

        The same table that judges inbound messages refuses an illegal send (400 to the
        operator). A consumer that has not yet heard the provider's pid waits for it.
        """
        record = await self._mine(pid)
        if record.provider_pid is None:
            await self.watch.wait(pid, record, lambda r: r.provider_pid is not None, 10.0)
        async with self._locks.hold(pid):
            record = await self._mine(pid)
            if event is NegotiationEvent.TERMINATE:
                after, out = self._terminate(record, "terminated-by-operator",
                                             reason or "terminated by operator")
            else:
                after, out = self._step(record, event)
            await self._save(after, out)
            return after

    async def accept(self, pid: str) -> Negotiation:
        """Our operator accepts the provider's current offer (consumer, OFFERED)."""
        return await self.act(pid, NegotiationEvent.ACCEPT)

    async def terminate(self, pid: str, reason: str) -> Negotiation:
        """Our operator ends a negotiation, in either role."""
        return await self.act(pid, NegotiationEvent.TERMINATE, reason)

    async def on_initial_ack(self, pid: str, body: bytes) -> None:
        """The provider's 201 to our initial request: learn its pid (DSP 2025-1 §CN 3.2)."""
        ack = codec.decode(body, ContractNegotiation, area=Area.NEGOTIATION)
        async with self._locks.hold(pid):
            record = await self._store.get_negotiation(pid)
            if record is not None and record.provider_pid is None and ack.provider_pid:
                await self._save(msgspec.structs.replace(record, provider_pid=ack.provider_pid),
                                 [])

    async def _mine(self, pid: str) -> Negotiation:
        record = await self._store.get_negotiation(pid)
        if record is None:
            raise NotFound(f"no negotiation {pid!r}")
        return record

    async def wait(self, pid: str, timeout: float) -> Negotiation:
        """Wait for a terminal state (or the timeout); returns the latest record."""
        record = await self._mine(pid)
        if record.state.terminal or timeout <= 0:
            return record
        latest = await self.watch.wait(pid, record, lambda r: r.state.terminal, timeout)
        # The watch hands over the terminal record itself; only a timeout needs a fresh read.
        return latest if latest is not record else await self._mine(pid)

    async def on_delivery_failed(self, process_id: str, error: str) -> None:
        """A message could not be delivered (4xx or retries exhausted): end our side, unless
        the peer's own state shows it took the message before (a repeat it refused)."""
        async with self._locks.hold(process_id):
            record = await self._store.get_negotiation(process_id)
            if record is None or record.state.terminal:
                return
            if await self._peer_holds(record):
                log.info("negotiation %s: the peer refused a message it had already taken "
                         "(%s); kept", process_id, error)
                return
            after, _ = cn.terminate(record, record.role, f"peer unreachable or refused: {error}",
                                    "delivery-failed", self._clock())
            await self._save(after, [])

    async def _peer_holds(self, record: Negotiation) -> bool:
        """Whether the peer's negotiation is where ours is, or past it by its own moves."""
        theirs = record.consumer_pid if record.role is Role.PROVIDER else record.provider_pid
        if not theirs:
            return False
        url = record.counterparty_address.rstrip("/") + process_path(Area.NEGOTIATION, theirs)
        body = await self._outbox.ask(url, record.counterparty_id or "")
        if body is None:
            return False
        try:
            ack = codec.decode(body, ContractNegotiation, area=Area.NEGOTIATION)
        except ProtocolError:
            return False
        same = (ack.consumer_pid, ack.provider_pid) == (record.consumer_pid, record.provider_pid)
        return same and cn.peer_took_it(record, ack.state)


def created(now: float, by: str, event: NegotiationEvent, state: str) -> HistoryEntry:
    """The first line of a process's timeline."""
    return HistoryEntry(at=now, by=by, message=event.value, state=state)


def trace_lines(decision: Decision) -> list[str]:
    """One line per evaluated constraint: ✓/✗, the constraint, what was found, why."""
    return [f"{'✓' if r.satisfied else '✗'} {r.path} {r.head}: {r.note}".replace("  ", " ")
            for r in decision.trace]


def _offer_id(offer: dict[str, Any]) -> str | None:
    value = offer.get("@id")
    return value if isinstance(value, str) else None


def _check_callback(url: str, *, consumer_pid: str | None = None,
                    provider_pid: str | None = None) -> None:
    """We will send to a peer's callbackAddress: refuse one aimed at internal services
    (cloud metadata and the like, issue #4) before anything is stored."""
    why = callback_refusal(url)
    if why is not None:
        raise MalformedMessage(f"callbackAddress {url[:200]!r} refused: {why}",
                               consumer_pid=consumer_pid, provider_pid=provider_pid)


def _peer_key(counterparty: str | None, consumer_pid: str) -> str:
    """The lock that serialises a peer's initial requests for one consumerPid."""
    return f"initial\x00{counterparty}\x00{consumer_pid}"


def _pids_of(pid: str) -> dict[str, str | None]:
    return {"consumer_pid": None, "provider_pid": pid}


def _check_pids(record: Negotiation, msg: NegotiationMessage) -> None:
    """The message must name this negotiation's pids (DSP 2025-1 §CN 2: both pids)."""
    mine = record.provider_pid if record.role is Role.PROVIDER else record.consumer_pid
    theirs = record.consumer_pid if record.role is Role.PROVIDER else record.provider_pid
    sent_mine = msg.provider_pid if record.role is Role.PROVIDER else msg.consumer_pid
    sent_theirs = msg.consumer_pid if record.role is Role.PROVIDER else msg.provider_pid
    bad = sent_mine != mine or (theirs is not None and sent_theirs not in (None, theirs))
    if bad:
        raise MalformedMessage("process ids in the message do not match this negotiation",
                               consumer_pid=record.consumer_pid, provider_pid=record.provider_pid)
