"""Our credentials' revocation status, checked when the page is asked for, as a verifier
checks it: the status list each credential points at is fetched, its signature by the
credential's issuer verified (``fetch_status_list``, the DCP verifier's own step) and the
credential's bit read (W3C Bitstring Status List §3.2).

A status that cannot be established is said as such, with the reason (the list cannot be
fetched, is not signed by the issuer, the entry is malformed): never "valid" by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connector.console.views import Credential, StatusEntry
from connector.core import credentials as vc
from connector.core.errors import ConnectorError
from connector.service.dcp_verifier import DidResolver, Http, fetch_status_list

# What a credential's status can be (each a message of the console's catalogues).
VALID, REVOKED, SUSPENDED = "valid", "revoked", "suspended"
EXPIRED, UNKNOWN, NOT_REVOCABLE = "expired", "unknown", "not revocable"


@dataclass(frozen=True)
class CredentialState:
    credential: Credential
    status: str  # one of the words above
    reason: str = ""  # what was checked, or why the status is unknown


@dataclass(frozen=True)
class StatusChecker:
    """Checks our credentials' status lists over ``http`` (the DCP transport: its allowed
    hosts and TLS trust), resolving issuers' keys with ``resolver``."""

    http: Http
    resolver: DidResolver
    leeway_s: int
    clock: Callable[[], float]

    async def check(self, credentials: Sequence[Credential]) -> list[CredentialState]:
        lists: dict[tuple[str, str, str], bytes | str] = {}  # each list fetched once a page
        return [await self._state(c, lists) for c in credentials]

    async def _state(self, c: Credential, lists: dict[tuple[str, str, str], bytes | str]
                     ) -> CredentialState:
        if c.malformed:
            return CredentialState(c, UNKNOWN, c.malformed)
        if c.expires_at is not None and c.expires_at < self.clock():
            return CredentialState(c, EXPIRED)
        if not c.entries:
            return CredentialState(c, NOT_REVOCABLE)
        for entry in c.entries:
            key = (c.issuer, entry.url, entry.purpose)
            if key not in lists:
                lists[key] = await self._bits(c.issuer, entry)
            bits = lists[key]
            if isinstance(bits, str):
                return CredentialState(c, UNKNOWN, bits)
            try:
                set_ = vc.get_status(bits, entry.index)
            except ConnectorError as exc:
                return CredentialState(c, UNKNOWN, exc.message)
            if set_:
                return CredentialState(c, REVOKED if entry.purpose == "revocation"
                                       else SUSPENDED, f"{entry.url}#{entry.index}")
        return CredentialState(c, VALID, " ".join(f"{e.url}#{e.index}" for e in c.entries))

    async def _bits(self, issuer: str, entry: StatusEntry) -> bytes | str:
        """The verified bits of the entry's list, or why they cannot be had."""
        try:
            bits, _ = await fetch_status_list(
                self.http, self.resolver, entry.url, issuer=issuer, now=int(self.clock()),
                leeway_s=self.leeway_s, purpose=entry.purpose)
        except ConnectorError as exc:
            return f"status list {entry.url}: {exc.message}"
        except (OSError, ValueError) as exc:
            return f"status list {entry.url}: {exc}"
        return bits
