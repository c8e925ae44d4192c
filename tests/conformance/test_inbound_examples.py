"""The codec accepts every official example of a message type we receive, leniently.

Each example of a type that a ``DspRoutes`` handler decodes is read through
``connector.core.codec.decode`` as written, with its keys written as ``dspace:<key>`` and as
absolute DSP IRIs, and with an extra ``@context`` entry plus unknown fields. All four forms
must decode to the same message, equal to the example's own fields.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from connector.core import codec
from connector.core.errors import Area
from connector.core.messages import (
    DSP_CONTEXT,
    DSP_NS,
    CatalogRequestMessage,
    ContractAgreementMessage,
    ContractAgreementVerificationMessage,
    ContractNegotiationEventMessage,
    ContractNegotiationTerminationMessage,
    ContractOfferMessage,
    ContractRequestMessage,
    Message,
    TransferCompletionMessage,
    TransferRequestMessage,
    TransferStartMessage,
    TransferSuspensionMessage,
    TransferTerminationMessage,
)
from tests.conformance.dsp_schemas import EXAMPLES

Doc = dict[str, Any]

# Official example -> the struct and error area the matching DspRoutes handler decodes with.
INBOUND: dict[str, tuple[type[Message], Area]] = {
    "catalog/catalog-request-message": (CatalogRequestMessage, Area.CATALOG),
    "negotiation/contract-request-message_initial": (ContractRequestMessage, Area.NEGOTIATION),
    "negotiation/contract-request-message": (ContractRequestMessage, Area.NEGOTIATION),
    "negotiation/contract-offer-message_initial": (ContractOfferMessage, Area.NEGOTIATION),
    "negotiation/contract-offer-message": (ContractOfferMessage, Area.NEGOTIATION),
    "negotiation/contract-agreement-message": (ContractAgreementMessage, Area.NEGOTIATION),
    "negotiation/contract-agreement-message-full": (ContractAgreementMessage, Area.NEGOTIATION),
    "negotiation/contract-agreement-verification-message": (
        ContractAgreementVerificationMessage, Area.NEGOTIATION),
    "negotiation/contract-negotiation-event-message": (
        ContractNegotiationEventMessage, Area.NEGOTIATION),
    "negotiation/contract-negotiation-termination-message": (
        ContractNegotiationTerminationMessage, Area.NEGOTIATION),
    "transfer/transfer-request-message": (TransferRequestMessage, Area.TRANSFER),
    "transfer/transfer-start-message": (TransferStartMessage, Area.TRANSFER),
    "transfer/transfer-suspension-message": (TransferSuspensionMessage, Area.TRANSFER),
    "transfer/transfer-completion-message": (TransferCompletionMessage, Area.TRANSFER),
    "transfer/transfer-termination-message": (TransferTerminationMessage, Area.TRANSFER),
}


def _example(name: str) -> Doc:
    doc: Doc = json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))
    return doc


def _prefixed(doc: Doc, prefix: str) -> Doc:
    """Top-level keys (and the ``@type`` value) written with ``prefix``."""
    out: Doc = {}
    for key, value in doc.items():
        if key == "@type":
            out[key] = prefix + value
        elif key.startswith("@"):
            out[key] = value
        else:
            out[prefix + key] = value
    return out


def _extended(doc: Doc) -> Doc:
    """An extra context (a URL and an inline term map) and fields we do not know."""
    return {
        **doc,
        "@context": [*doc["@context"], "https://w3id.org/edc/connector/management/v0.0.1",
                     {"edc": "https://w3id.org/edc/v0.0.1/ns/"}],
        "@id": "urn:uuid:0b1e7a4e-5c1d-4a53-9d1e-7b0f4f2b7e11",
        "edc:participantId": "did:web:peer.example.org",
        "https://example.org/vocab#note": {"@value": "ignored", "@language": "en"},
        "unknownField": [1, 2, 3],
    }


VARIANTS = {
    "as-published": lambda d: d,
    "dspace-prefixed": lambda d: _prefixed(d, "dspace:"),
    "absolute-iris": lambda d: _prefixed(d, DSP_NS),
    "extra-context-and-fields": _extended,
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("example", sorted(INBOUND))
def test_codec_accepts_official_example(example: str, variant: str) -> None:
    struct, area = INBOUND[example]
    original = _example(example)
    msg = codec.decode(VARIANTS[variant](original), struct, area=area)
    assert type(msg) is struct
    # Nothing of the example is lost: re-encoding gives back exactly its known fields.
    fields = {f.encode_name for f in msgspec.structs.fields(struct)}
    expected = {k: v for k, v in original.items() if k in fields or k == "@type"}
    got = codec.to_builtins(msg)
    assert got.pop("@context") == [DSP_CONTEXT]
    assert got == expected


def test_the_bytes_path_agrees() -> None:
    # DspRoutes passes raw bytes; the prefixed form must decode the same way from bytes.
    doc = _prefixed(_example("negotiation/contract-request-message_initial"), DSP_NS)
    from_bytes = codec.decode(json.dumps(doc).encode(), ContractRequestMessage,
                              area=Area.NEGOTIATION)
    assert from_bytes == codec.decode(doc, ContractRequestMessage, area=Area.NEGOTIATION)

