"""DCAT catalogue and dataset documents built from the participant folder (pure).

DSP 2025-1 §CAT 2: a Catalog carries ``participantId`` and at least one DataService; each
Dataset carries at least one Offer in ``hasPolicy`` (without ``target``: the dataset is the
target) and at least one Distribution naming its format and access service.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from connector.core.errors import PolicyError
from connector.core.messages import DSP_CONTEXT, EDC_NS
from connector.core.policy.model import parse_policy

# ODRL keys of a policy file that become part of an offer; anything else (description,
# @context, authoring notes) stays in the file.
RULE_KEYS = ("permission", "prohibition", "obligation", "profile")


@dataclass(frozen=True)
class Offer:
    """One offer: a policy from ``policies/`` applied to one dataset."""

    id: str
    dataset_id: str
    policy_name: str
    policy: Mapping[str, Any]
    policy_hash: str | None = None  # SHA-256 of the policy's canonical JSON
    policy_commit: str | None = None  # git commit of the policy file in the folder

    def body(self, *, with_target: bool = False) -> dict[str, Any]:
        """The ODRL Offer object; ``target`` only inside negotiation messages."""
        out: dict[str, Any] = {"@id": self.id, "@type": "Offer"}
        for key in RULE_KEYS:
            if key in self.policy:
                out[key] = self.policy[key]
        if "permission" not in out and "prohibition" not in out:
            out["permission"] = [{"action": "use"}]
        if with_target:
            out["target"] = self.dataset_id
        return out


@dataclass(frozen=True)
class DatasetText:
    """What a dataset says about itself (DCAT 3 ``dct:identifier``/``@id``, ``dct:title``,
    ``dct:description``, ``dcat:keyword``): the same four in a participant's declaration, in
    its catalogue and in a registry's index."""

    id: str
    title: str
    description: str
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class DatasetEntry(DatasetText):
    """One dataset of the catalogue, with the offers its policies make."""

    format: str
    offers: tuple[Offer, ...]
    formats: tuple[str, ...] = ()  # every transfer format offered; empty: just ``format``
    confidential: bool = False  # hidden offers: say nothing of them (not even the dataset)

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
    for operand in _left_operands({k: policy[k] for k in RULE_KEYS if k in policy}):
        name = operand.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        out[operand] = ("not enforceable: denies" if name not in known
                        else "every data access" if name in _AT_ACCESS
                        else "every record streamed (consent register)" if name == "consent"
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
        "hasPolicy": [o.body() for o in offers],
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
    # Where each offer's left operands are checked, beside the offers rather than in them: a
    # client that sends an offer back as it read it (EDC's management API stores every extra
    # key of it and compares our agreement with all of that) sends only the ODRL.
    where = {o.id: w for o in offers if (w := enforcement(o.policy))}
    if where:
        doc["enforcement"] = where
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
    return all(a.get(k) == b.get(k) for k in RULE_KEYS)


def has_rules(policy: Mapping[str, Any]) -> bool:
    """Whether a policy states rules (an offer sent back by its ``@id`` alone states none)."""
    return any(k in policy for k in RULE_KEYS)


def rules_of(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The rule part of a policy (permission, prohibition, obligation, profile)."""
    return {k: policy[k] for k in RULE_KEYS if k in policy}


def echoed_rules(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The rules of a consumer's request, to echo in our agreement: unchanged, except that a
    left operand written ``edc:X`` becomes the IRI it stands for. The ``edc`` prefix comes from
    EDC's own context (``https://w3id.org/edc/dspace/v0.0.1``), which our messages do not
    carry; EDC compares the agreement's expanded terms with the offer it stored."""
    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, str) and key.endswith("leftOperand") and value.startswith("edc:"):
            return EDC_NS + value[4:]
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, key) for v in value]
        return value

    return {k: walk(v) for k, v in rules_of(policy).items()}


def equivalent_rules(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two policies carry the same rules, however spelled: ``odrl:``-prefixed or full
    ODRL IRIs, one-element arrays or bare values, our own operands in EDC's vocabulary
    (``policy.model.compact_operand``). Compared as parsed; rules that do not parse are not
    equivalent to anything."""
    if same_rules(a, b):
        return True
    try:
        return parse_policy(rules_of(a)) == parse_policy(rules_of(b))
    except PolicyError:
        return False
