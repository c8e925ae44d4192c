"""The consumer's side: which provider a URL names, its catalogue, the offer to ask for, and
whether a copy of a transfer's records is whole.

Every way a consumer receives records (a pull into a file or to stdout by ``connector
transfer``, a pull into a sink by the daemon, a push from the provider) ends in the same
check, ``copy_mismatch``: the records, bytes and SHA-256 of the copy against the summary the
provider's data plane gives (``GET <endpoint>/summary``, or the push summary). A copy is
accepted, and the transfer completed, only when all three are equal.

The management API and the ``connector`` commands only call this module; the peer client is a
port (``FetchCatalog``), so it is tested without a network.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from connector.core.binding import DSP_PATH
from connector.core.errors import NotFound, PeerError

# The fields of a data plane's summary that a copy must match, in the order they are reported.
COPY_FIELDS = ("records", "bytes", "sha256")
# A negotiation reuses a provider's catalogue fetched this recently (the provider re-checks
# its policy on the request anyway); `connector catalog` always fetches afresh.
CATALOG_REUSE_S = 30.0
# Files are hashed in blocks of this size: large enough for a few system calls per MB.
HASH_BLOCK = 1 << 20


# -- the copy check ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """What a consumer holds: whole JSON-lines records, their bytes and their SHA-256."""

    records: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "bytes": self.bytes, "sha256": self.sha256}


def copy_mismatch(copy: Copy, summary: Mapping[str, Any]) -> str | None:
    """Why ``copy`` is not the provider's records (records, bytes and SHA-256 compared), or
    None when it is."""
    got = copy.as_dict()
    expected = {field: summary.get(field) for field in COPY_FIELDS}
    if got == expected:
        return None
    return f"copy does not match the provider's summary: {got} != {expected}"


def verify_copy(copy: Copy, summary: Mapping[str, Any]) -> None:
    """PeerError unless ``copy`` matches the provider's ``summary`` in all three fields."""
    problem = copy_mismatch(copy, summary)
    if problem is not None:
        raise PeerError(problem)


def complete_records(part: Path) -> Copy:
    """Cut a partial last record off ``part``; the records, bytes and SHA-256 that remain."""
    digest, records, keep = hashlib.sha256(), 0, 0
    tail = b""
    with part.open("rb") as f:
        while chunk := f.read(HASH_BLOCK):
            data = tail + chunk
            end = data.rfind(b"\n") + 1  # complete records end at the last newline
            digest.update(data[:end])
            records += data.count(b"\n", 0, end)
            keep += end
            tail = data[end:]
    if tail:  # a record cut mid-way: drop it, the resume fetches it whole
        with part.open("r+b") as f:
            f.truncate(keep)
    return Copy(records=records, bytes=keep, sha256=digest.hexdigest())


class CopyCounter:
    """Counts and hashes a stream of JSON-lines chunks as they pass (stdout has no file to
    re-read)."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._records = self._bytes = 0

    def update(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self._records += chunk.count(b"\n")
        self._bytes += len(chunk)

    def copy(self) -> Copy:
        return Copy(records=self._records, bytes=self._bytes, sha256=self._digest.hexdigest())


# -- providers, catalogues, offers ----------------------------------------------------------------


class PinnedPeer(Protocol):
    """What the consumer needs of a pinned peer (``trust/*.json``)."""

    @property
    def did(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def dsp_base(self) -> str | None: ...


FetchCatalog = Callable[[str, str], Awaitable[dict[str, Any]]]
# (DSP base, audience, dataset id) -> the provider's reason for showing us no offer of it.
ExplainHidden = Callable[[str, str, str], Awaitable[str | None]]


def root_of(url: str) -> str:
    """A provider's root URL, whether given as root or as its DSP base, without the default
    port (RFC 9110 §4.2.2: ``https://host:443`` is ``https://host``)."""
    url = url.rstrip("/")
    url = url[: -len(DSP_PATH)] if url.endswith(DSP_PATH) else url
    return url.removesuffix(":443") if url.startswith("https://") else url


def pick_offer(catalog: Mapping[str, Any], dataset_id: str, offer_id: Any) -> dict[str, Any]:
    """The offer ``offer_id`` (None: the first) of ``dataset_id`` in a DCAT catalogue."""
    for dataset in catalog.get("dataset", []) or []:
        if dataset.get("@id") != dataset_id:
            continue
        offers = dataset.get("hasPolicy", [])
        if isinstance(offers, dict):
            offers = [offers]
        for offer in offers:
            if offer_id is None or offer.get("@id") == offer_id:
                return dict(offer)
        raise NotFound(f"dataset {dataset_id!r} has no offer {offer_id!r} for us")
    raise NotFound(f"the provider shows us no dataset {dataset_id!r}")


@dataclass(frozen=True)
class Provider:
    """A peer as the consumer addresses it: its DSP base and its participant id."""

    dsp_base: str
    participant_id: str


@dataclass(frozen=True)
class ChosenOffer:
    provider: Provider
    offer: dict[str, Any]


class ConsumerService:
    """Finds providers among the pinned peers, fetches (and briefly reuses) their catalogues
    and picks the offer a negotiation asks for.

    ``unpinned``: participant id -> DSP base of peers that cannot be pinned in ``trust/``
    (a peer without a did:web identity, as EDC's test identity is), matched by that base or
    the URL above it.
    """

    def __init__(self, fetch_catalog: FetchCatalog,
                 peers: Callable[[], Mapping[str, PinnedPeer]], *,
                 unpinned: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 explain_hidden: ExplainHidden | None = None) -> None:
        self._fetch = fetch_catalog
        self._explain = explain_hidden
        self._peers = peers
        self._unpinned = {base.rstrip("/"): pid for pid, base in (unpinned or {}).items()}
        self._clock = clock
        self._catalogs: dict[str, tuple[float, dict[str, Any]]] = {}

    def provider(self, url: str) -> Provider:
        """The peer a URL names (its root URL or its DSP base); NotFound if none."""
        given = url.rstrip("/")
        for base, pid in self._unpinned.items():
            if given in (base, base.rsplit("/", 1)[0]):
                return Provider(base, pid)
        for peer in self._peers().values():
            base = peer.dsp_base or root_of(peer.url) + DSP_PATH
            if given in (base, root_of(peer.url)) or root_of(given) == root_of(peer.url):
                return Provider(base, peer.did)
        raise NotFound(f"no pinned peer with URL {given!r}: add it with `connector trust add`")

    async def catalog(self, provider: Provider, *, reuse: bool = False) -> dict[str, Any]:
        """The provider's catalogue as it shows it to us; one fetched less than
        CATALOG_REUSE_S ago is reused when ``reuse``."""
        now = self._clock()
        cached = self._catalogs.get(provider.dsp_base)
        if reuse and cached is not None and now - cached[0] < CATALOG_REUSE_S:
            return cached[1]
        doc = await self._fetch(provider.dsp_base, provider.participant_id)
        self._catalogs[provider.dsp_base] = (now, doc)
        return doc

    async def choose_offer(self, url: str, dataset_id: str, offer_id: Any) -> ChosenOffer:
        """The provider ``url`` names and the offer of ``dataset_id`` to negotiate for."""
        provider = self.provider(url)
        catalog = await self.catalog(provider, reuse=True)
        try:
            return ChosenOffer(provider, pick_offer(catalog, dataset_id, offer_id))
        except NotFound as exc:
            why = await self._why_hidden(provider, dataset_id)
            if why is None:
                raise
            raise NotFound(f"{exc.message}: {why}") from exc

    async def _why_hidden(self, provider: Provider, dataset_id: str) -> str | None:
        """The provider's own reason for hiding ``dataset_id`` from us, if it gives one."""
        if self._explain is None:
            return None
        try:
            return await self._explain(provider.dsp_base, provider.participant_id, dataset_id)
        except PeerError:
            return None


# Refusals a later run can get past: a data token that expired (the next run refreshes it
# before pulling) and a transfer the provider suspended (it may resume it).
PASSING_REFUSALS = ("expired", "SUSPENDED")


def retry_can_succeed(exc: PeerError) -> bool:
    """Whether pulling again may finish the copy: after a network cut or a provider error,
    yes; after the provider refused the access for good (its policy denies, e.g. the use
    count is exhausted; the agreement is revoked; the dataset is withdrawn or its source is
    gone), no: then the transfer ends TERMINATED with the provider's reason."""
    if exc.peer_status != 403:
        return True
    return any(word in exc.message for word in PASSING_REFUSALS)
