"""Transfer processes, both roles, and the provider's data-plane authorisation.

Provider: a TransferRequestMessage under one of our finalised agreements, from that
agreement's assignee, is acknowledged REQUESTED (201) and started at once: the Start message
carries an HTTP-pull data address with a short-lived bearer token (DSP 2025-1 §TP 2.3). Only
the token's SHA-256 is stored. Every data-plane access re-evaluates the agreement's policy in
transfer scope, counting the use atomically.

Consumer: a transfer is opened from an agreement, the records are pulled once STARTED, and a
TransferCompletionMessage ends it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import msgspec

from connector.core import process as proc
from connector.core import transfer as tp
from connector.core.errors import (
    Area,
    InvalidTransition,
    MalformedMessage,
    NotFound,
    PolicyError,
    ProtocolError,
    TransferDenied,
)
from connector.core.hosts import callback_refusal
from connector.core.messages import (
    EDC_NS,
    DataAddress,
    TransferCompletionMessage,
    TransferMessage,
    TransferProcess,
    TransferRequestMessage,
)
from connector.core.process import Role
from connector.core.transfer import Transfer, TransferEvent, TransferState
from connector.service.catalog import Catalog, Claims
from connector.service.locks import KeyedLocks
from connector.service.outbox import Outbox
from connector.service.process import ProcessService, new_urn
from connector.service.store import Agreement, OutboxItem, Outgoing, Store

log = logging.getLogger("connector.transfer")
DEFAULT_FORMAT = "HttpData-PULL"
# A refreshed data token's predecessor stays valid this long, or until the new one is used.
TOKEN_GRACE_S = 60.0


def withdrawn(dataset_id: str, why: str | None = None) -> str:
    """What a consumer is told when an agreement's dataset is not offered any more (its
    declaration removed, or its source gone): a refusal for good, not an interruption."""
    return f"dataset {dataset_id} is no longer offered by the provider" + (
        f": {why}" if why else "")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TransferService(ProcessService[Transfer]):
    area = Area.TRANSFER
    ack_type = TransferProcess
    noun = "transfer process"
    log = log

    def __init__(self, *, store: Store, catalog: Callable[[], Catalog], outbox: Outbox,
                 did: str, dsp_base: str, data_url: str, token_ttl_s: int,
                 claims_for: Callable[[str], Claims], clock: Callable[[], float],
                 new_id: Callable[[], str] = new_urn,
                 automatic: bool = True, token_secret: bytes | None = None,
                 completion_guard: Callable[[Transfer], str | None] | None = None,
                 locks: KeyedLocks | None = None) -> None:
        # automatic=False: the provider does not start on its own.
        super().__init__(store=store, outbox=outbox, clock=clock, new_id=new_id,
                         automatic=automatic, locks=locks)
        # Derives refreshed data tokens; keep it across restarts (the daemon reads it from
        # keys/) so that a refresh repeated after a restart still returns the same token.
        self._token_secret = token_secret or secrets.token_bytes(32)
        self._catalog = catalog
        self.did = did
        self.dsp_base = dsp_base
        self.data_url = data_url
        self._token_ttl_s = token_ttl_s
        self._claims_for = claims_for
        # Consumer: why a pushed copy may not be completed yet (None: it may); see push.py.
        self._completion_guard = completion_guard

    # -- the shared shape's storage ------------------------------------------------------------

    async def _load(self, pid: str) -> Transfer | None:
        return await self._store.get_transfer(pid)

    async def _persist(self, record: Transfer, out: list[Outgoing], new: bool
                       ) -> list[OutboxItem]:
        return await self._store.save_transfer(record, outbox=out, expect_new=new)

    async def _find(self, counterparty: str, opener: Role, pid: str) -> Transfer | None:
        # Only a consumer opens a transfer (DSP 2025-1 §TP 1.2).
        return await self._store.find_transfer(consumer_pid=pid, role=Role.PROVIDER.value,
                                               counterparty=counterparty)

    def _ended(self, record: Transfer, reason: str) -> Transfer:
        msg = tp.message_for(record, TransferEvent.TERMINATE, reason=reason)
        return tp.apply(record, record.role, msg, self._clock())

    def _peer_took_it(self, record: Transfer, peer_state: str) -> bool:
        return tp.peer_took_it(record, peer_state)

    # -- DSP: inbound ------------------------------------------------------------------------

    async def on_request(self, msg: TransferRequestMessage, claims: Claims) -> Transfer:
        """A consumer opens a transfer under one of our agreements (DSP 2025-1 §TP 3.2); the
        same request sent again gets the same process (``core.process``)."""
        why = callback_refusal(msg.callback_address)  # we send Start (and pushes) there
        if why is not None:
            raise MalformedMessage(f"callbackAddress {msg.callback_address[:200]!r} refused: "
                                   f"{why}", area=Area.TRANSFER, consumer_pid=msg.consumer_pid)

        async def opening() -> tuple[Transfer, Transfer, list[Outgoing]]:
            record = await self._requested(msg, claims)
            started, out = self._start(record) if self.automatic else (record, [])
            return record, started, out

        return await self._open_once(claims.participant_id, Role.CONSUMER, msg.consumer_pid,
                                     opening)

    async def _requested(self, msg: TransferRequestMessage, claims: Claims) -> Transfer:
        """The REQUESTED record a transfer request opens, once it checks out."""
        agreement = await self._store.get_agreement(msg.agreement_id)
        if (agreement is None or agreement.role != Role.PROVIDER.value
                or agreement.assignee != claims.participant_id):
            raise ProtocolError(f"no agreement {msg.agreement_id!r} for this participant",
                                area=Area.TRANSFER, consumer_pid=msg.consumer_pid)
        if agreement.revoked:  # refused for good, in words, before any token is minted
            raise ProtocolError(f"the agreement was revoked by the provider: "
                                f"{agreement.revoked}", area=Area.TRANSFER,
                                consumer_pid=msg.consumer_pid)
        entry = self._catalog().entries.get(agreement.dataset_id)
        if entry is None:
            raise ProtocolError(withdrawn(agreement.dataset_id), area=Area.TRANSFER,
                                consumer_pid=msg.consumer_pid)
        if msg.format not in entry.offered_formats:
            raise ProtocolError(f"format {msg.format!r} not offered; use one of "
                                f"{list(entry.offered_formats)}",
                                area=Area.TRANSFER, consumer_pid=msg.consumer_pid)
        if msg.format == tp.PUSH_FORMAT:
            _check_push_address(msg)
        pid = self._new_id()
        return tp.opened(
            id=pid, role=Role.PROVIDER, now=self._clock(),
            consumer_pid=msg.consumer_pid, provider_pid=pid, agreement_id=agreement.id,
            format=msg.format, counterparty_address=msg.callback_address,
            counterparty_id=claims.participant_id, dataset_id=agreement.dataset_id,
            data_address=msg.data_address if msg.format == tp.PUSH_FORMAT else None)

    def _start(self, record: Transfer) -> tuple[Transfer, list[Outgoing]]:
        """Provider: mint a fresh data token and send Start with the pull address. A push
        starts without a data address (DSP 2025-1 §TP 2.3); the pusher then streams."""
        if record.format == tp.PUSH_FORMAT:
            msg = tp.message_for(record, TransferEvent.START)
            started = tp.apply(record, Role.PROVIDER, msg, self._clock())
            return started, [self._outgoing(started, msg)]
        token = secrets.token_urlsafe(32)
        address = tp.pull_address(self.data_url, token)
        msg = tp.message_for(record, TransferEvent.START, data_address=address)
        now = self._clock()
        started = tp.apply(record, Role.PROVIDER, msg, now)
        started = _replace(started, token_hash=token_hash(token),
                           token_expires_at=now + self._token_ttl_s, data_address=None)
        return started, [self._outgoing(started, msg)]

    async def on_message(self, pid: str, msg: TransferMessage, claims: Claims, *,
                         message_id: str | None = None) -> Transfer:
        """Any message on an existing transfer, for either role; a message already applied,
        sent again, changes nothing (``core.process``)."""
        async with self._locks.hold(pid):
            record = await self._owned(pid, claims)
            proc.check_pids(record, msg, Area.TRANSFER)
            if tp.is_redelivery(record, record.role.other, msg, message_id):
                log.info("transfer %s: %s sent again; acknowledged", pid, type(msg).__name__)
                return record
            if (isinstance(msg, TransferCompletionMessage) and record.role is Role.CONSUMER
                    and record.format == tp.PUSH_FORMAT and self._completion_guard is not None):
                problem = self._completion_guard(record)
                if problem is not None:  # a push is complete only once its copy checks out
                    raise InvalidTransition(f"cannot complete: {problem}", area=Area.TRANSFER,
                                            consumer_pid=record.consumer_pid,
                                            provider_pid=record.provider_pid)
            # A consumer's resume (Start from SUSPENDED) keeps the token it already holds.
            after = tp.apply(record, record.role.other, msg, self._clock(),
                             message_id=message_id)
            await self._save(after, [])
            return after

    # -- provider data plane -------------------------------------------------------------------

    async def authorize_pull(self, token: str | None, *, use: bool = True
                             ) -> tuple[Transfer, Agreement]:
        """Check a data-plane token and the agreement's policy; count the use if ``use``."""
        record, current = await self._token_holder(token)
        if record.state is not TransferState.STARTED:
            raise TransferDenied(f"transfer is {record.state.value}, not STARTED")
        if current and (record.token_expires_at or 0) < self._clock():
            raise TransferDenied("data token expired")
        if current and record.prev_token_hash is not None:
            record = await self._retire_previous_token(record.id)  # the new one is in use
        return record, await self._authorize_agreement(record, use)

    async def authorize_push(self, pid: str, *, count_use: bool = True
                             ) -> tuple[Transfer, Agreement]:
        """Provider, before a push: as a pull's check (state, revocation, the agreement's
        policy with the use counted), for the transfer itself instead of a token. A push
        resumed by another replica was counted when it started (``count_use=False``)."""
        record = await self.mine(pid)
        if record.state is not TransferState.STARTED:
            raise TransferDenied(f"transfer is {record.state.value}, not STARTED")
        return record, await self._authorize_agreement(record, count_use)

    async def _authorize_agreement(self, record: Transfer, use: bool) -> Agreement:
        agreement = await self._store.get_agreement(record.agreement_id)
        try:
            if agreement is None:
                raise TransferDenied("agreement not found")
            if agreement.revoked:
                raise TransferDenied(f"agreement revoked by the provider: {agreement.revoked}")
            await self._check_policy(agreement, 1 if use else 0)
        except TransferDenied as exc:
            await self._note(record.id, "data access denied", exc.message)
            raise
        return agreement

    async def _token_holder(self, token: str | None) -> tuple[Transfer, bool]:
        """The transfer a data token opens, and whether it is the current token (else the
        previous one, still inside its grace window)."""
        if not token:
            raise TransferDenied("missing data token")
        digest = token_hash(token)
        record = await self._store.find_transfer_by_token(digest)
        if record is not None and hmac.compare_digest(record.token_hash or "", digest):
            return record, True
        if (record is not None and hmac.compare_digest(record.prev_token_hash or "", digest)
                and (record.prev_token_until or 0) >= self._clock()):
            return record, False
        raise TransferDenied("unknown data token")

    async def _retire_previous_token(self, pid: str) -> Transfer:
        async with self._locks.hold(pid):
            record = await self.mine(pid)
            record = _replace(record, prev_token_hash=None, prev_token_until=None)
            await self._save(record, [])
            return record

    async def refresh_token(self, token: str | None) -> tuple[str, float]:
        """A new data token for the transfer ``token`` opens; returns (token, expiry).

        Idempotent, so a lost answer costs nothing: the new token is derived from the old
        one, and asking again with the old token (inside the grace window, before the new
        one was used) returns the same new token. The old one keeps working until then.
        """
        record, current = await self._token_holder(token)
        if record.state is not TransferState.STARTED:
            raise TransferDenied(f"transfer is {record.state.value}, not STARTED")
        agreement = await self._store.get_agreement(record.agreement_id)
        if agreement is None or agreement.revoked:
            raise TransferDenied("agreement revoked or gone")
        if not current:  # a repeated refresh: the answer was lost; give the same token
            return self._derive(record.prev_token_hash or ""), record.token_expires_at or 0.0
        async with self._locks.hold(record.id):
            record = await self.mine(record.id)
            old = record.token_hash or ""
            new = self._derive(old)
            now = self._clock()
            record = _replace(record, token_hash=token_hash(new), prev_token_hash=old,
                              prev_token_until=now + TOKEN_GRACE_S,
                              token_expires_at=now + self._token_ttl_s)
            await self._save(record, [])
        return new, record.token_expires_at or 0.0

    def _derive(self, previous_hash: str) -> str:
        mac = hmac.new(self._token_secret, previous_hash.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    async def replace_data_token(self, pid: str, token: str) -> Transfer:
        """Consumer: keep the refreshed token in our record of the pull address."""
        async with self._locks.hold(pid):
            record = await self.mine(pid)
            address = record.data_address
            if address is None:
                raise NotFound(f"transfer {pid!r} has no data address")
            props = [p if p.name not in ("authorization", EDC_NS + "authorization")
                     else _replace(p, value=token) for p in address.endpoint_properties]
            record = _replace(record, data_address=_replace(address, endpoint_properties=props))
            await self._save(record, [])
            return record

    async def note(self, pid: str, by: str, message: str, note: str = "") -> None:
        """Add a line to a transfer's timeline (a push's verification, its failure)."""
        async with self._locks.hold(pid):
            record = await self._store.get_transfer(pid)
            if record is not None:
                await self._save(proc.noted(record, self._clock(), by, message, note), [])

    async def _note(self, pid: str, message: str, note: str) -> None:
        """Add a line to a transfer's timeline (``connector why``)."""
        async with self._locks.hold(pid):
            record = await self._store.get_transfer(pid)
            if record is not None:
                await self._save(proc.noted(record, self._clock(), "policy", message, note), [])

    async def still_streaming(self, pid: str) -> bool:
        """Whether a running stream may go on (checked between chunks): STARTED and not
        revoked. A revocation or termination stops the stream mid-way."""
        record = await self._store.get_transfer(pid)
        return record is not None and record.state is TransferState.STARTED

    async def revoke_agreement(self, agreement_id: str, reason: str) -> list[Transfer]:
        """Provider: withdraw an agreement (e.g. a withdrawn consent). Every open transfer
        under it is terminated with the reason, and no data-plane access passes again."""
        agreement = await self._store.get_agreement(agreement_id)
        if agreement is None or agreement.role != Role.PROVIDER.value:
            raise NotFound(f"no agreement {agreement_id!r} as provider")
        await self._store.save_agreement(_replace(agreement, revoked=reason))
        ended = []
        for record in await self._store.list_transfers(agreement_id):
            if not record.state.terminal:
                ended.append(await self.act(record.id, TransferEvent.TERMINATE,
                                            f"agreement revoked: {reason}",
                                            code="agreement-revoked"))
        return ended

    async def _check_policy(self, agreement: Agreement, use: int) -> None:
        """Transfer scope: the agreement's policy with the use being counted (atomically)."""
        uses = await self._store.add_use(agreement.id, use)
        try:
            decision = self._catalog().decide_agreement(
                agreement.id, agreement.body, self._claims_for(agreement.assignee),
                agreement_time=datetime.fromtimestamp(agreement.created_at, UTC), use_count=uses)
        except PolicyError as exc:
            await self._store.add_use(agreement.id, -use)
            raise TransferDenied(exc.message) from exc
        if not decision.allowed:
            await self._store.add_use(agreement.id, -use)
            raise TransferDenied("policy denies: " + "; ".join(decision.reasons))

    # -- management: consumer side ------------------------------------------------------------

    async def start(self, agreement_id: str, *, provider_base: str | None = None,
                    provider_id: str | None = None, format: str = DEFAULT_FORMAT,
                    push_to: Callable[[str], DataAddress] | None = None) -> Transfer:
        """Open a transfer as consumer under one of our agreements; queue the request.

        The provider is the agreement's counterparty unless given (a test harness that holds
        agreements it did not negotiate gives it).
        """
        agreement = await self._store.get_agreement(agreement_id)
        if agreement is None or agreement.role != Role.CONSUMER.value:
            raise NotFound(f"no agreement {agreement_id!r} as consumer")
        if provider_base is None or provider_id is None:
            negotiation = await self._store.get_negotiation(agreement.negotiation_id)
            if negotiation is None:
                raise NotFound(f"negotiation of agreement {agreement_id!r} is missing")
            provider_base = negotiation.counterparty_address
            provider_id = negotiation.counterparty_id
        pid = self._new_id()
        record = tp.opened(
            id=pid, role=Role.CONSUMER, now=self._clock(), consumer_pid=pid,
            provider_pid=None, agreement_id=agreement_id, format=format,
            counterparty_address=provider_base, counterparty_id=provider_id,
            dataset_id=agreement.dataset_id)
        if push_to is not None:
            record = _replace(record, format=tp.PUSH_FORMAT)
        address = push_to(pid) if push_to is not None else None  # not kept: it holds a token
        msg = tp.request_message(record, self.dsp_base, address)
        await self._save(record, [self._outgoing(record, msg)], new=True)
        return record

    async def act(self, pid: str, event: TransferEvent, reason: str | None = None,
                  code: str | None = None) -> Transfer:
        """Our operator (or pull loop, or a test script) starts, completes, suspends, resumes
        or terminates. A provider's Start carries a fresh data token."""
        await self.until(pid, lambda r: r.provider_pid is not None, 10.0)
        async with self._locks.hold(pid):
            record = await self.mine(pid)
            if event is TransferEvent.START and record.role is Role.PROVIDER:
                tp.target_state(Role.PROVIDER, record.state, event,
                                consumer_pid=record.consumer_pid, provider_pid=record.provider_pid)
                after, out = self._start(record)
            else:
                if code is None and event is TransferEvent.TERMINATE:
                    code = "terminated-by-operator"
                msg = tp.message_for(record, event, reason=reason, code=code)
                after = tp.apply(record, record.role, msg, self._clock())
                out = [self._outgoing(after, msg)]
            await self._save(after, out)
            return after

    async def wait_started(self, pid: str, timeout: float) -> Transfer:
        return await self.until(pid, lambda r: r.state is not TransferState.REQUESTED, timeout)


_replace = msgspec.structs.replace


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _check_push_address(msg: TransferRequestMessage) -> None:
    """A push goes over HTTPS to the consumer's own host and port (its callback address's),
    never to a third party the request names (no pushing our data at someone else)."""
    address = msg.data_address
    url = address.url() if address is not None else None
    if not url or _origin(url)[0] != "https" or _origin(url) != _origin(msg.callback_address):
        raise MalformedMessage("a push request needs a dataAddress with an https endpoint at "
                               "the callbackAddress's host and port", area=Area.TRANSFER,
                               consumer_pid=msg.consumer_pid)
