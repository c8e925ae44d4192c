"""The storage port the services depend on, and the records that only storage adds.

Every state change is persisted, together with the messages it causes (the outbox), in one
transaction, before the change is acknowledged to anyone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import msgspec

from connector.core.negotiation import Negotiation
from connector.core.transfer import Transfer


class Agreement(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A finalised contract as this party keeps it."""

    id: str
    negotiation_id: str
    role: str
    dataset_id: str
    assigner: str
    assignee: str
    created_at: float
    body: dict[str, Any]
    revoked: str | None = None  # the provider's reason, once it withdrew the agreement
    policy_hash: str | None = None  # SHA-256 of the policy file it was made under
    policy_commit: str | None = None  # the folder's git commit of that file, if any


@dataclass(frozen=True)
class ListQuery:
    """Which records a list shows: those equal to every non-empty filter, newest first."""

    state: str = ""
    role: str = ""
    subject: str = ""  # the dataset or agreement the records are about
    limit: int = 50
    offset: int = 0


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    """A message to send once the transaction that produced it has committed."""

    process_id: str
    url: str
    audience: str
    body: bytes


class OutboxItem(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    process_id: str
    url: str
    audience: str
    body: bytes
    attempts: int = 0


class SeenTokens(Protocol):
    """The token ids (jti) a verifier accepted, kept until they expire (replays, across restarts).

    ``record_jti`` is write-behind: it queues the row and returns at once (the verifier's
    in-memory check stays the authority), the row commits with the store's next write.
    """

    def record_jti(self, jti: str, until: int) -> None: ...

    async def live_jtis(self, now: int) -> list[tuple[str, int]]:
        """(jti, until) of every row with ``until >= now``, soonest expiry first."""
        ...

    async def purge_jtis(self, now: int) -> None:
        """Delete the rows with ``until < now``."""
        ...


@runtime_checkable
class SharedSeenTokens(Protocol):
    """Seen token ids in a database several replicas share: a jti is claimed synchronously,
    so a replay is refused whichever replica saw the token first."""

    async def claim_jti(self, jti: str, until: int, now: int) -> bool:
        """True if ``jti`` was not live (now recorded until ``until``); False: a replay."""
        ...


class Store(SeenTokens, Protocol):
    """Persistence of negotiations, agreements, transfers, the outbox and seen token ids."""

    async def get_negotiation(self, id: str) -> Negotiation | None: ...

    async def save_negotiation(
        self, record: Negotiation, *, outbox: Sequence[Outgoing] = (),
        agreement: Agreement | None = None, expect_new: bool = False,
    ) -> list[OutboxItem]: ...

    async def find_negotiation(self, *, counterparty: str | None, role: str,
                               consumer_pid: str | None = None,
                               provider_pid: str | None = None) -> Negotiation | None:
        """The negotiation a peer's consumerPid (or, given instead, its providerPid) names in
        ``role``: one at most (a unique key)."""
        ...

    async def list_negotiations(self) -> list[Negotiation]: ...

    async def get_agreement(self, id: str) -> Agreement | None: ...

    async def list_agreements(self) -> list[Agreement]: ...

    async def save_agreement(self, agreement: Agreement) -> None: ...

    async def get_transfer(self, id: str) -> Transfer | None: ...

    async def find_transfer(self, *, consumer_pid: str, role: str,
                            counterparty: str | None = None) -> Transfer | None:
        """The transfer a consumerPid names in ``role`` (a peer's, one at most, if given)."""
        ...

    async def find_transfer_by_token(self, token_hash: str) -> Transfer | None: ...

    async def save_transfer(
        self, record: Transfer, *, outbox: Sequence[Outgoing] = (), expect_new: bool = False,
    ) -> list[OutboxItem]: ...

    async def list_transfers(self, agreement_id: str | None = None) -> list[Transfer]: ...

    async def add_use(self, agreement_id: str, delta: int) -> int: ...

    async def agreement_uses(self, agreement_id: str) -> int:
        """The data-plane uses counted under an agreement (``add_use``), 0 before any."""
        ...

    async def pending_outbox(self) -> list[OutboxItem]: ...

    async def outbox_done(self, seqs: Sequence[int]) -> None: ...

    async def outbox_retry(self, seq: int, attempts: int, next_attempt: float,
                           error: str) -> None: ...

    # Lists a page at a time, newest first (the console): a page costs the same whatever
    # the store holds beyond it.

    async def page_negotiations(self, query: ListQuery) -> tuple[int, list[Negotiation]]:
        """(how many match, the page of them); ``query.subject`` is a dataset id."""
        ...

    async def page_transfers(self, query: ListQuery) -> tuple[int, list[Transfer]]:
        """(how many match, the page of them); ``query.subject`` is an agreement id."""
        ...

    async def page_agreements(self, query: ListQuery) -> tuple[int, list[Agreement]]:
        """(how many match, the page of them); ``query.subject`` is a dataset id."""
        ...

    async def state_counts(self, kind: str) -> dict[str, int]:
        """How many ``kind`` ("negotiations" or "transfers") are in each state."""
        ...

    async def close(self) -> None: ...
