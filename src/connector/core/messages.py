"""DSP 2025-1 messages as frozen msgspec Structs.

Field names follow the compact JSON-LD form the DSP context defines (``consumerPid``,
``callbackAddress`` …); ``@type`` is the struct tag, so one decode picks the right struct.
ODRL offers and agreements stay plain JSON objects here: the policy package owns their model.
Unknown fields are ignored on input (the TCK adds ``@id``, EDC adds its own context terms).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

# DSP 2025-1 §2: every message except the version response carries @context as an array
# that contains this URL.
DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
DSP_NS = "https://w3id.org/dspace/2025/1/"
ODRL_NS = "http://www.w3.org/ns/odrl/2/"
# EDC names data-address properties with its own vocabulary (edc:endpoint, edc:authorization).
EDC_NS = "https://w3id.org/edc/v0.0.1/ns/"

Json = dict[str, Any]

# Identifiers a peer gives us that we store and index (pids, agreement and token ids): at
# most this many characters. PostgreSQL refuses an index entry over about 2.7 kB (a third of
# a B-tree page), and 512 characters of UTF-8 (2,048 bytes at most) beside a DID stay under
# it; the ids in use (URNs of UUIDs) have 45.
MAX_ID_LENGTH = 512
Pid = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]


class Message(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="@type", rename="camel", omit_defaults=True
):
    """Base of every DSP message; ``@context`` is filled on encode by the codec."""


class BothPids(Message, frozen=True, kw_only=True):
    """A message on an existing process: it names it by both sides' ids (DSP 2025-1 §CN 2,
    §TP 2)."""

    consumer_pid: Pid
    provider_pid: Pid


class WithReason(BothPids, frozen=True, kw_only=True):
    """A message that ends or reports on a process, with an optional code and reasons."""

    code: str | None = None
    reason: list[Any] | None = None


# --- contract negotiation (DSP 2025-1 §CN 2) ---------------------------------------------


class ContractRequestMessage(Message, frozen=True, kw_only=True, tag=True):
    consumer_pid: Pid
    offer: Json
    provider_pid: Pid | None = None  # counter-request on an existing negotiation
    callback_address: str | None = None  # initial request only (schema oneOf)


class ContractOfferMessage(Message, frozen=True, kw_only=True, tag=True):
    provider_pid: Pid
    offer: Json
    consumer_pid: Pid | None = None  # reply on an existing negotiation
    callback_address: str | None = None  # provider-initiated only (schema oneOf)


class ContractAgreementMessage(BothPids, frozen=True, kw_only=True, tag=True):
    agreement: Json


class ContractAgreementVerificationMessage(BothPids, frozen=True, kw_only=True, tag=True):
    """DSP 2025-1 §CN 2: the consumer confirms the agreement."""


class ContractNegotiationEventMessage(BothPids, frozen=True, kw_only=True, tag=True):
    event_type: str  # "ACCEPTED" (consumer) or "FINALIZED" (provider)


class ContractNegotiationTerminationMessage(WithReason, frozen=True, kw_only=True, tag=True):
    """DSP 2025-1 §CN 2: either side ends the negotiation."""


class ContractNegotiation(BothPids, frozen=True, kw_only=True, tag=True):
    state: str


class ContractNegotiationError(WithReason, frozen=True, kw_only=True, tag=True):
    """DSP 2025-1 §CN 2: the error a negotiation endpoint answers with."""


# --- transfer process (DSP 2025-1 §TP 2) --------------------------------------------------


class EndpointProperty(msgspec.Struct, frozen=True, kw_only=True, tag_field="@type", tag=True):
    name: str
    value: str


class DataAddress(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="@type", tag=True, rename="camel",
    omit_defaults=True,
):
    endpoint_type: str
    endpoint: str | None = None
    endpoint_properties: list[EndpointProperty] = []

    def property(self, name: str) -> str | None:
        """The value of the endpoint property ``name``, also when named in EDC's vocabulary
        (``https://w3id.org/edc/v0.0.1/ns/<name>`` or ``edc:<name>``)."""
        names = (name, EDC_NS + name, "edc:" + name)
        return next((p.value for p in self.endpoint_properties if p.name in names), None)

    def url(self) -> str | None:
        """Where to pull from: ``endpoint``, or EDC's ``edc:endpoint`` property."""
        return self.endpoint or self.property("endpoint")

    def authorization_header(self) -> str:
        """The Authorization value for the pull. DSP's ``authType: bearer`` convention gets
        ``Bearer <token>``; EDC's data plane wants its token raw (it refuses the prefix)."""
        token = self.property("authorization") or ""
        plain = any(p.name == "authorization" for p in self.endpoint_properties)
        return f"Bearer {token}" if plain else token


class TransferRequestMessage(Message, frozen=True, kw_only=True, tag=True):
    consumer_pid: Pid
    agreement_id: Pid
    format: str
    callback_address: str
    data_address: DataAddress | None = None  # push only


class TransferStartMessage(BothPids, frozen=True, kw_only=True, tag=True):
    data_address: DataAddress | None = None


class TransferSuspensionMessage(WithReason, frozen=True, kw_only=True, tag=True):
    """DSP 2025-1 §TP 2: either side pauses the transfer."""


class TransferCompletionMessage(BothPids, frozen=True, kw_only=True, tag=True):
    """DSP 2025-1 §TP 2: either side says the transfer is done."""


class TransferTerminationMessage(WithReason, frozen=True, kw_only=True, tag=True):
    """DSP 2025-1 §TP 2: either side ends the transfer."""


class TransferProcess(BothPids, frozen=True, kw_only=True, tag=True):
    state: str


class TransferError(WithReason, frozen=True, kw_only=True, tag=True):
    """DSP 2025-1 §TP 2: the error a transfer endpoint answers with."""


# --- catalog (DSP 2025-1 §CAT 2) ----------------------------------------------------------


class CatalogRequestMessage(Message, frozen=True, kw_only=True, tag=True):
    filter: list[Any] | None = None


class CatalogError(Message, frozen=True, kw_only=True, tag=True):
    code: str | None = None
    reason: list[Any] | None = None


NegotiationMessage = (
    ContractRequestMessage
    | ContractOfferMessage
    | ContractAgreementMessage
    | ContractAgreementVerificationMessage
    | ContractNegotiationEventMessage
    | ContractNegotiationTerminationMessage
)
TransferMessage = (
    TransferRequestMessage
    | TransferStartMessage
    | TransferSuspensionMessage
    | TransferCompletionMessage
    | TransferTerminationMessage
)
AnyMessage = (
    NegotiationMessage
    | TransferMessage
    | ContractNegotiation
    | ContractNegotiationError
    | TransferProcess
    | TransferError
    | CatalogRequestMessage
    | CatalogError
)
