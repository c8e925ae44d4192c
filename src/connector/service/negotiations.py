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
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from connector.core import codec
from connector.core import negotiation as cn
from connector.core import process as proc
from connector.core.binding import path_for, recipient_pid
from connector.core.catalog import (
    RULE_KEYS,
    echoed_rules,
    equivalent_rules,
    has_rules,
    rules_of,
)
from connector.core.errors import (
    Area,
    MalformedMessage,
    NotFound,
    OfferRejected,
    PolicyError,
)
from connector.core.hosts import callback_refusal
from connector.core.messages import (
    ContractNegotiation,
    ContractOfferMessage,
    ContractRequestMessage,
    NegotiationMessage,
)
from connector.core.negotiation import Negotiation, NegotiationEvent, NegotiationState
from connector.core.policy import Decision, Scope
from connector.core.process import Role
from connector.service.catalog import Catalog, Claims
from connector.service.locks import KeyedLocks
from connector.service.outbox import Outbox
from connector.service.process import ProcessService, new_urn
from connector.service.store import Agreement, OutboxItem, Outgoing, Store

log = logging.getLogger("connector.negotiation")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NegotiationService(ProcessService[Negotiation]):
    area = Area.NEGOTIATION
    ack_type = ContractNegotiation
    noun = "negotiation"
    log = log

    def __init__(self, *, store: Store, catalog: Callable[[], Catalog], outbox: Outbox,
                 did: str, dsp_base: str, clock: Callable[[], float],
                 new_id: Callable[[], str] = new_urn, automatic: bool = True,
                 locks: KeyedLocks | None = None) -> None:
        super().__init__(store=store, outbox=outbox, clock=clock, new_id=new_id,
                         automatic=automatic, locks=locks)
        self._catalog = catalog
        self.did = did
        self.dsp_base = dsp_base

    # -- the shared shape's storage ------------------------------------------------------------

    async def _load(self, pid: str) -> Negotiation | None:
        return await self._store.get_negotiation(pid)

    async def _persist(self, record: Negotiation, out: list[Outgoing], new: bool
                       ) -> list[OutboxItem]:
        """The record, its outbox rows and, once FINALIZED, its agreement: one transaction."""
        agreement = None
        if record.state is NegotiationState.FINALIZED and record.agreement is not None:
            agreement = Agreement(
                id=str(record.agreement["@id"]), negotiation_id=record.id, role=record.role.value,
                dataset_id=record.dataset_id, assigner=str(record.agreement.get("assigner", "")),
                assignee=str(record.agreement.get("assignee", "")),
                created_at=record.updated_at, body=record.agreement,
                policy_hash=record.policy_hash, policy_commit=record.policy_commit)
        return await self._store.save_negotiation(record, outbox=out, agreement=agreement,
                                                  expect_new=new)

    async def _find(self, counterparty: str, opener: Role, pid: str) -> Negotiation | None:
        if opener is Role.CONSUMER:
            return await self._store.find_negotiation(
                counterparty=counterparty, role=Role.PROVIDER.value, consumer_pid=pid)
        return await self._store.find_negotiation(
            counterparty=counterparty, role=Role.CONSUMER.value, provider_pid=pid)

    def _ended(self, record: Negotiation, reason: str) -> Negotiation:
        return cn.terminate(record, record.role, reason, "delivery-failed", self._clock())[0]

    def _peer_took_it(self, record: Negotiation, peer_state: str) -> bool:
        return cn.peer_took_it(record, peer_state)

    # -- DSP: inbound ------------------------------------------------------------------------

    async def on_initial_request(self, msg: ContractRequestMessage, claims: Claims) -> Negotiation:
        """A consumer opens a negotiation with us as provider (DSP 2025-1 §CN 3.2). Returns
        the REQUESTED ack, or the negotiation this request opened before if it is sent again."""
        if msg.provider_pid is not None or not msg.callback_address:
            raise MalformedMessage("an initial ContractRequestMessage needs callbackAddress "
                                   "and no providerPid", area=Area.NEGOTIATION,
                                   consumer_pid=msg.consumer_pid)
        _check_callback(msg.callback_address, consumer_pid=msg.consumer_pid)

        async def opening() -> tuple[Negotiation, Negotiation, list[Outgoing]]:
            record = self._requested(msg, claims)
            after, out = self._provider_decide(record, claims) if self.automatic else (record, [])
            return record, after, out

        return await self._open_once(claims.participant_id, Role.CONSUMER, msg.consumer_pid,
                                     opening)

    def _requested(self, msg: ContractRequestMessage, claims: Claims) -> Negotiation:
        """The REQUESTED record an initial request opens, once its offer checks out."""
        offer = self._catalog().find_offer(_offer_id(msg.offer))
        target = msg.offer.get("target")
        if offer is None or (target is not None and target != offer.dataset_id):
            raise OfferRejected(f"unknown offer {_offer_id(msg.offer)!r} for target {target!r}",
                                consumer_pid=msg.consumer_pid, area=Area.NEGOTIATION)
        terms = offer.body(with_target=True)
        if has_rules(msg.offer):
            # DSP 2025-1 §CN: the request carries the offer it accepts. Its rules must be the
            # published ones; spelled as the consumer spelled them, they go into the agreement
            # (EDC compares the agreement with the offer as *it* stored it).
            if not equivalent_rules(msg.offer, terms):
                raise OfferRejected(
                    f"the rules requested for offer {offer.id!r} differ from the published "
                    f"ones: {json.dumps(rules_of(terms), sort_keys=True)[:500]}",
                    consumer_pid=msg.consumer_pid, area=Area.NEGOTIATION)
            terms = {k: v for k, v in terms.items() if k not in RULE_KEYS} | echoed_rules(
                msg.offer)
        pid = self._new_id()
        return cn.opened(
            Role.CONSUMER, id=pid, role=Role.PROVIDER, now=self._clock(),
            consumer_pid=msg.consumer_pid, provider_pid=pid, dataset_id=offer.dataset_id,
            offer=terms, counterparty_address=msg.callback_address or "",
            counterparty_id=claims.participant_id)

    async def on_message(self, pid: str, msg: NegotiationMessage, claims: Claims, *,
                         message_id: str | None = None) -> Negotiation:
        """Any message on an existing negotiation, for either role. Returns the new record;
        a message already applied, sent again, changes nothing (``core.process``)."""
        async with self._locks.hold(pid):
            record = await self._owned(pid, claims)
            proc.check_pids(record, msg, Area.NEGOTIATION)
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
        """A provider opens a negotiation with us as consumer (DSP 2025-1 §CN HTTPS binding,
        POST /negotiations/offers); we wait for our operator."""
        if msg.consumer_pid is not None or not msg.callback_address:
            raise MalformedMessage("an initial ContractOfferMessage needs callbackAddress "
                                   "and no consumerPid", area=Area.NEGOTIATION,
                                   provider_pid=msg.provider_pid)
        _check_callback(msg.callback_address, provider_pid=msg.provider_pid)
        callback = msg.callback_address

        async def opening() -> tuple[Negotiation, Negotiation, list[Outgoing]]:
            pid = self._new_id()
            record = cn.opened(
                Role.PROVIDER, id=pid, role=Role.CONSUMER, now=self._clock(), consumer_pid=pid,
                provider_pid=msg.provider_pid, dataset_id=str(msg.offer.get("target", "")),
                offer=msg.offer, counterparty_address=callback,
                counterparty_id=claims.participant_id)
            return record, record, []

        return await self._open_once(claims.participant_id, Role.PROVIDER, msg.provider_pid,
                                     opening)

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
            record = proc.noted(record, self._clock(), "policy", "cannot evaluate", exc.message)
            return self._terminate(record, "policy-error", exc.message)
        verdict = "granted" if decision.allowed else "denied"
        record = proc.noted(record, self._clock(), "policy",
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
                     reason: str = "", code: str = "terminated-by-operator") -> NegotiationMessage:
        """The message carrying ``event`` from us (``cn.message_for``); an agreement gets a
        fresh id, us as assigner, the peer as assignee and the current time."""
        agreement = None
        if event is NegotiationEvent.AGREE:
            agreement = cn.build_agreement(
                record.offer, agreement_id=self._new_id(), dataset_id=record.dataset_id,
                assigner=self.did, assignee=record.counterparty_id or "",
                timestamp=_iso(self._clock()))
        return cn.message_for(record, event, agreement=agreement, reason=reason, code=code)

    def _terminate(self, record: Negotiation, code: str, reason: str
                   ) -> tuple[Negotiation, list[Outgoing]]:
        log.info("terminating negotiation %s: %s: %s", record.id, code, reason)
        msg = self._message_for(record, NegotiationEvent.TERMINATE, reason=reason, code=code)
        after = cn.apply(record, record.role, msg, self._clock())
        if recipient_pid(msg, record.role.other) is None:
            # DSP 2025-1 §CN 2.2: a termination names the peer's process; a peer that never
            # answered has none to name, so the negotiation ends here only.
            return after, []
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
        pid = self._new_id()
        offer = {**offer, "target": dataset_id}
        record = cn.opened(
            Role.CONSUMER, id=pid, role=Role.CONSUMER, now=self._clock(), consumer_pid=pid,
            provider_pid=None, dataset_id=dataset_id, offer=offer,
            counterparty_address=provider_base, counterparty_id=provider_id)
        msg = ContractRequestMessage(consumer_pid=pid, offer=offer,
                                     callback_address=self.dsp_base)
        await self._save(record, [self._outgoing(record, msg)], new=True)
        return record

    async def offer(self, *, consumer_base: str, consumer_id: str, dataset_id: str,
                    send: Callable[[str, str, bytes], Awaitable[bytes]]) -> Negotiation:
        """Open a negotiation as provider (DSP 2025-1 §CN HTTPS binding): send our offer,
        persist it with the consumerPid the consumer answers.

        The initial offer is sent directly rather than through the outbox: until the consumer
        answers 201 we do not know its pid, and an operator who starts this sees the error.
        """
        entry = self._catalog().entries.get(dataset_id)
        if entry is None or not entry.offers:
            raise NotFound(f"no dataset {dataset_id!r} with an offer")
        cn.target_state(Role.PROVIDER, None, NegotiationEvent.OFFER)  # ours to send
        pid = self._new_id()
        offer = entry.offers[0].body(with_target=True)
        msg = ContractOfferMessage(provider_pid=pid, offer=offer, callback_address=self.dsp_base)
        url = consumer_base.rstrip("/") + path_for(msg, Role.CONSUMER)
        ack = codec.decode(await send(url, consumer_id, codec.encode(msg)),
                           ContractNegotiation, area=Area.NEGOTIATION)
        record = cn.opened(
            Role.PROVIDER, id=pid, role=Role.PROVIDER, now=self._clock(),
            consumer_pid=ack.consumer_pid, provider_pid=pid, dataset_id=dataset_id, offer=offer,
            counterparty_address=consumer_base, counterparty_id=consumer_id)
        await self._save(record, [], new=True)
        return record

    async def act(self, pid: str, event: NegotiationEvent, reason: str = "") -> Negotiation:
        """Our operator (or a test script) sends ``event`` on a negotiation, in either role.

        The same table that judges inbound messages refuses an illegal send (400 to the
        operator). A consumer that has not yet heard the provider's pid waits for it.
        """
        await self.until(pid, lambda r: r.provider_pid is not None, 10.0)
        async with self._locks.hold(pid):
            record = await self.mine(pid)
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

    async def wait(self, pid: str, timeout: float) -> Negotiation:
        """Wait for a terminal state (or the timeout); returns the latest record."""
        return await self.until(pid, lambda r: r.state.terminal, timeout)


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
    (cloud metadata and the like) before anything is stored."""
    why = callback_refusal(url)
    if why is not None:
        raise MalformedMessage(f"callbackAddress {url[:200]!r} refused: {why}",
                               area=Area.NEGOTIATION, consumer_pid=consumer_pid,
                               provider_pid=provider_pid)
