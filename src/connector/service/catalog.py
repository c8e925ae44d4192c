"""The provider's catalogue: datasets and offers from the folder, filtered by access policy.

DSP 2025-1 §CAT: a consumer sees only the offers whose policy its verified claims satisfy
(catalog scope); a request for a dataset with no visible offer is answered as unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connector.core.catalog import DatasetEntry, Offer, catalog_doc, dataset_doc, offer_id
from connector.core.errors import CatalogError, PolicyError
from connector.core.policy import Decision, PolicyContext, Scope, evaluate, parse_policy
from connector.core.policy.model import Policy

log = logging.getLogger("connector.catalog")


@dataclass(frozen=True)
class Claims:
    """What the connector verified about a caller."""

    participant_id: str
    attributes: Mapping[str, Any]


class Catalog:
    """The datasets and offers of one participant folder (rebuilt when the folder changes)."""

    def __init__(self, entries: Iterable[DatasetEntry], *, participant_id: str,
                 dsp_base: str, clock: Callable[[], float],
                 on_decision: Callable[[Scope, Decision], None] | None = None) -> None:
        self._on_decision = on_decision  # every evaluation's scope and verdict (metrics)
        self.entries = {e.id: e for e in entries}
        self.participant_id = participant_id
        self.dsp_base = dsp_base
        self._clock = clock
        self.offers: dict[str, Offer] = {o.id: o for e in self.entries.values() for o in e.offers}
        self._parsed: dict[str, Policy | PolicyError] = {}
        for offer in self.offers.values():
            try:
                self._parsed[offer.id] = parse_policy(offer.policy)
            except PolicyError as exc:  # deny: a policy that cannot be evaluated never grants
                self._parsed[offer.id] = exc

    @classmethod
    def from_folder(cls, datasets: Iterable[Any], policies: Mapping[str, Mapping[str, Any]], *,
                    participant_id: str, dsp_base: str, clock: Callable[[], float],
                    hashes: Mapping[str, str] | None = None,
                    commits: Mapping[str, str] | None = None,
                    on_decision: Callable[[Scope, Decision], None] | None = None) -> Catalog:
        """Build from ``participant.datasets.load_datasets`` / ``load_policies`` results; each
        offer remembers its policy's content hash and git commit for the agreements made on it."""
        hashes, commits = hashes or {}, commits or {}
        entries = []
        for d in datasets:
            offers = tuple(Offer(id=offer_id(d.id, name), dataset_id=d.id, policy_name=name,
                                 policy=policies[name], policy_hash=hashes.get(name),
                                 policy_commit=commits.get(name))
                           for name in d.policies if name in policies)
            entries.append(DatasetEntry(id=d.id, title=d.title, description=d.description,
                                        keywords=tuple(d.keywords), format=d.format,
                                        offers=offers, formats=tuple(getattr(d, "formats", ())),
                                        confidential=bool(getattr(d, "confidential", False))))
        return cls(entries, participant_id=participant_id, dsp_base=dsp_base, clock=clock,
                   on_decision=on_decision)

    def decide(self, offer: Offer, claims: Claims, scope: Scope) -> Decision:
        """Evaluate one published offer for a caller; a broken policy raises PolicyError."""
        return self._evaluate(self._parsed[offer.id], claims, scope)

    def decide_agreement(self, agreement_id: str, body: Mapping[str, Any], claims: Claims, *,
                         agreement_time: datetime, use_count: int) -> Decision:
        """Transfer scope: an agreement's own rules (never the current policy file)."""
        parsed = self._parsed.get(agreement_id)
        if parsed is None:
            try:
                parsed = parse_policy(body)
            except PolicyError as exc:
                parsed = exc
            self._parsed[agreement_id] = parsed
        return self._evaluate(parsed, claims, Scope.TRANSFER, agreement_time=agreement_time,
                              use_count=use_count)

    def _evaluate(self, parsed: Policy | PolicyError, claims: Claims, scope: Scope, *,
                  agreement_time: datetime | None = None,
                  use_count: int | None = None) -> Decision:
        if isinstance(parsed, PolicyError):
            raise PolicyError(f"policy cannot be evaluated: {parsed.message}")
        ctx = PolicyContext(scope=scope, now=datetime.fromtimestamp(self._clock(), UTC),
                            participant_id=claims.participant_id, claims=claims.attributes,
                            agreement_time=agreement_time, use_count=use_count)
        decision = evaluate(parsed, ctx)
        if self._on_decision is not None:
            self._on_decision(scope, decision)
        return decision

    def visible_offers(self, entry: DatasetEntry, claims: Claims) -> list[Offer]:
        out = []
        for offer in entry.offers:
            try:
                if self.decide(offer, claims, Scope.CATALOG).allowed:
                    out.append(offer)
            except PolicyError:
                continue
        return out

    def catalog(self, claims: Claims) -> dict[str, Any]:
        visible = [(e, self.visible_offers(e, claims)) for e in self.entries.values()]
        return catalog_doc(visible, participant_id=self.participant_id, dsp_base=self.dsp_base,
                           catalog_id=f"{self.participant_id}#catalog")

    def dataset(self, dataset_id: str, claims: Claims) -> dict[str, Any]:
        """The dataset with the offers the caller may see. With none, a 404 that names the
        constraints each offer's policy found unmet, unless the dataset is confidential."""
        entry = self.entries.get(dataset_id)
        offers = self.visible_offers(entry, claims) if entry else []
        if entry is None or (not offers and entry.confidential):
            raise CatalogError(f"unknown dataset {dataset_id!r}", status=404)
        if not offers:
            unmet = "; ".join(self.unmet(entry, claims))
            log.info("dataset %s is hidden from %s: %s", dataset_id, claims.participant_id,
                     unmet)
            raise CatalogError(f"dataset {dataset_id!r} is offered on terms you do not meet: "
                               + unmet, status=404)
        return dataset_doc(entry, offers, self.participant_id, self.dsp_base)

    def unmet(self, entry: DatasetEntry, claims: Claims) -> list[str]:
        """For each offer of ``entry``: its policy's name and the constraints that deny."""
        found = []
        for offer in entry.offers:
            try:
                reasons = self.decide(offer, claims, Scope.CATALOG).reasons
            except PolicyError:
                reasons = ["its policy cannot be evaluated (the provider must fix it)"]
            found.append(f"offer {offer.policy_name!r}: {', '.join(reasons)}")
        return found

    def find_offer(self, offer_id_: str | None) -> Offer | None:
        return self.offers.get(offer_id_) if offer_id_ else None
