"""DCAT catalogue and dataset documents built from the participant folder (pure).

DSP 2025-1 §CAT 2: a Catalog carries ``participantId`` and at least one DataService; each
Dataset carries at least one Offer in ``hasPolicy`` (without ``target``: the dataset is the
target) and at least one Distribution naming its format and access service.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from connector.core.messages import DSP_CONTEXT

# ODRL keys of a policy file that become part of an offer; anything else (description,
# @context, authoring notes) stays in the file.
_RULE_KEYS = ("permission", "prohibition", "obligation", "profile")


@dataclass(frozen=True)
class Offer:
    """One offer: a policy from ``policies/`` applied to one dataset."""

    id: str
    dataset_id: str
    policy_name: str
    policy: Mapping[str, Any]
    policy_hash: str | None = None  # SHA-256 of the policy's canonical JSON
    policy_commit: str | None = None  # git commit of the policy file in the folder

    def body(self, *, with_target: bool = False, annotate: bool = False) -> dict[str, Any]:
        """The ODRL Offer object; ``target`` only inside negotiation messages. Annotated (in
        the catalogue), it also says where each left operand is technically enforced."""
        out: dict[str, Any] = {"@id": self.id, "@type": "Offer"}
        for key in _RULE_KEYS:
            if key in self.policy:
                out[key] = self.policy[key]
        if "permission" not in out and "prohibition" not in out:
            out["permission"] = [{"action": "use"}]
        if with_target:
            out["target"] = self.dataset_id
        if annotate and (where := enforcement(self.policy)):
            out["enforcement"] = where
        return out


@dataclass(frozen=True)
class DatasetEntry:
    id: str
    title: str
    description: str
    keywords: tuple[str, ...]
    format: str
    offers: tuple[Offer, ...]
    formats: tuple[str, ...] = ()  # every transfer format offered; empty: just ``format``

    @property
    def offered_formats(self) -> tuple[str, ...]:
        return self.formats or (self.format,)


# Usage terms need an agreement (its time, its use count): they bind every data access.
_AT_ACCESS = frozenset({"count", "elapsedTime", "delayPeriod"})


def _left_operands(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("leftOperand"), str):
            yield node["leftOperand"]
        for value in node.values():
            yield from _left_operands(value)
    elif isinstance(node, list):
        for item in node:
            yield from _left_operands(item)


def enforcement(policy: Mapping[str, Any]) -> dict[str, str]:
    """Left operand -> where the connector checks it. An operand it cannot evaluate makes
    the offer deny, so it never reaches a catalogue; it is named here all the same."""
    from connector.core.policy import enforced_operands

    known = enforced_operands()
    out = {}
    for operand in _left_operands({k: policy[k] for k in _RULE_KEYS if k in policy}):
        name = operand.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        out[operand] = ("not enforceable: denies" if name not in known
                        else "every data access" if name in _AT_ACCESS
                        else "catalogue, negotiation and every data access")
    return out


def offer_id(dataset_id: str, policy_name: str) -> str:
    """A stable offer IRI: one per (dataset, policy)."""
    return f"urn:offer:{dataset_id}:{policy_name}"


def service_id(participant_id: str) -> str:
    return f"{participant_id}#dsp"


def dataset_doc(entry: DatasetEntry, offers: Iterable[Offer], participant_id: str,
                dsp_base: str) -> dict[str, Any]:
    """A Dataset object (without ``@context``: add it at the top level only)."""
    doc: dict[str, Any] = {
        "@id": entry.id,
        "@type": "Dataset",
        "hasPolicy": [o.body(annotate=True) for o in offers],
        "distribution": [{
            "@type": "Distribution",
            "format": fmt,
            "accessService": {
                "@id": service_id(participant_id),
                "@type": "DataService",
                "endpointURL": dsp_base,
            },
        } for fmt in entry.offered_formats],
    }
    if entry.title:
        doc["title"] = entry.title
    if entry.description:
        doc["description"] = entry.description
    if entry.keywords:
        doc["keyword"] = list(entry.keywords)
    return doc


def catalog_doc(datasets: Iterable[tuple[DatasetEntry, list[Offer]]], *, participant_id: str,
                dsp_base: str, catalog_id: str) -> dict[str, Any]:
    """The Catalog answering a CatalogRequestMessage; datasets with no visible offer are hidden."""
    catalog: dict[str, Any] = {
        "@context": [DSP_CONTEXT],
        "@id": catalog_id,
        "@type": "Catalog",
        "participantId": participant_id,
        "service": [{
            "@id": service_id(participant_id),
            "@type": "DataService",
            "endpointURL": dsp_base,
        }],
    }
    docs = [dataset_doc(e, offers, participant_id, dsp_base) for e, offers in datasets if offers]
    if docs:  # catalog-schema.json: `dataset`, when present, has at least one item
        catalog["dataset"] = docs
    return catalog


def is_paging_only(filters: Iterable[Any] | None) -> bool:
    """Whether a catalogue ``filter`` only pages (no filter expression). EDC's consumer
    always sends ``[{"@type": "QuerySpec", "offset": 0, "limit": 50, "filterExpression": []}]``;
    a small catalogue is answered whole. A real filter expression is still refused (400)."""
    return all(isinstance(f, dict) and str(f.get("@type", "")).endswith("QuerySpec")
               and not f.get("filterExpression") for f in filters or [])


def with_context(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"@context": [DSP_CONTEXT], **doc}


def same_rules(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two ODRL policies carry the same rules (ids, targets and parties aside)."""
    return all(a.get(k) == b.get(k) for k in _RULE_KEYS)
