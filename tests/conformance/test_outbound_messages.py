"""Every DSP 2025-1 document our connector emits validates against the official schema.

Each document is built through the connector's own code paths (the message structs, the
negotiation/transfer helpers, the codec, the catalogue builders, the error renderer and the
version route), never written out by hand, so a change in ``src/`` that breaks the wire
format fails here. Schemas: ``tests/conformance/dsp`` (tag 2025-1-err1).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request

from connector.adapters.http.client import codec_catalog_request
from connector.adapters.http.dsp import DspDeps, DspRoutes
from connector.adapters.http.errors import dsp_error_body
from connector.core import codec
from connector.core import negotiation as cn
from connector.core import transfer as tp
from connector.core.catalog import (
    DatasetEntry,
    Offer,
    catalog_doc,
    dataset_doc,
    offer_id,
    with_context,
)
from connector.core.errors import Area, InvalidTransition, MalformedMessage, UnknownProcess
from connector.core.messages import (
    ContractAgreementMessage,
    ContractOfferMessage,
    ContractRequestMessage,
)
from connector.core.negotiation import Negotiation, NegotiationState, Role
from connector.core.transfer import Transfer, TransferEvent, TransferState
from tests.conformance.dsp_schemas import validate

POLICIES = Path(__file__).resolve().parents[2] / "policies"
TEMPLATES = sorted(p.stem for p in POLICIES.glob("*.json"))

PROVIDER = "did:web:provider.example.org"
CONSUMER = "did:web:consumer.example.org%3A8443"
PROVIDER_DSP = "https://provider.example.org/dsp/2025-1"
CONSUMER_DSP = "https://consumer.example.org:8443/dsp/2025-1"
CPID = "urn:uuid:32541fe6-c580-409e-85a8-8a9a32fbe833"
PPID = "urn:uuid:a343fcbf-99fc-4ce8-8e9b-148c97605aab"
DATASET = "urn:dataset:weather-2024"
FORMAT = "HttpData-PULL"

Doc = dict[str, Any]


def template(name: str) -> Doc:
    doc: Doc = json.loads((POLICIES / f"{name}.json").read_text(encoding="utf-8"))
    return doc


def offer(name: str, dataset: str = DATASET) -> Offer:
    return Offer(id=offer_id(dataset, name), dataset_id=dataset, policy_name=name,
                 policy=template(name))


def entry(dataset: str, offers: tuple[Offer, ...]) -> DatasetEntry:
    return DatasetEntry(id=dataset, title="Weather 2024", description="Hourly readings",
                        keywords=("weather", "open"), format=FORMAT, offers=offers)


def negotiation(role: Role, state: NegotiationState, name: str = "open-use") -> Negotiation:
    own = PPID if role is Role.PROVIDER else CPID
    return Negotiation(
        id=own, role=role, state=state, consumer_pid=CPID, provider_pid=PPID,
        dataset_id=DATASET, offer=offer(name).body(with_target=True),
        counterparty_address=CONSUMER_DSP if role is Role.PROVIDER else PROVIDER_DSP,
        counterparty_id=CONSUMER if role is Role.PROVIDER else PROVIDER)


def transfer(role: Role, state: TransferState, *, provider_pid: str | None = PPID) -> Transfer:
    own = PPID if role is Role.PROVIDER else CPID
    return Transfer(
        id=own, role=role, state=state, consumer_pid=CPID, provider_pid=provider_pid,
        agreement_id="urn:agreement:1", format=FORMAT,
        counterparty_address=CONSUMER_DSP if role is Role.PROVIDER else PROVIDER_DSP,
        dataset_id=DATASET)


# --- negotiation messages whose offer/agreement comes from a policy template ---------------


def request_initial(name: str) -> Doc:
    # As NegotiationService.start: the catalogue offer with the dataset as target.
    return codec.to_builtins(ContractRequestMessage(
        consumer_pid=CPID, offer=offer(name).body(with_target=True),
        callback_address=CONSUMER_DSP))


def request_counter(name: str) -> Doc:
    return codec.to_builtins(ContractRequestMessage(
        consumer_pid=CPID, provider_pid=PPID, offer=offer(name).body(with_target=True)))


def offer_initial(name: str) -> Doc:
    return codec.to_builtins(ContractOfferMessage(
        provider_pid=PPID, offer=offer(name).body(with_target=True),
        callback_address=PROVIDER_DSP))


def offer_reply(name: str) -> Doc:
    return codec.to_builtins(ContractOfferMessage(
        provider_pid=PPID, consumer_pid=CPID, offer=offer(name).body(with_target=True)))


def agreement(name: str) -> Doc:
    # As NegotiationService._provider_decide.
    body = cn.build_agreement(
        offer(name).body(with_target=True), agreement_id="urn:agreement:1", dataset_id=DATASET,
        assigner=PROVIDER, assignee=CONSUMER, timestamp="2025-06-01T12:00:00Z")
    return codec.to_builtins(ContractAgreementMessage(
        consumer_pid=CPID, provider_pid=PPID, agreement=body))


POLICY_MESSAGES: dict[str, tuple[str, Callable[[str], Doc]]] = {
    "contract-request-initial": ("negotiation/contract-request-message", request_initial),
    "contract-request-counter": ("negotiation/contract-request-message", request_counter),
    "contract-offer-initial": ("negotiation/contract-offer-message", offer_initial),
    "contract-offer-reply": ("negotiation/contract-offer-message", offer_reply),
    "contract-agreement": ("negotiation/contract-agreement-message", agreement),
}


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("message", sorted(POLICY_MESSAGES))
def test_negotiation_message_with_policy_template(message: str, name: str) -> None:
    kind, build = POLICY_MESSAGES[message]
    validate(kind, build(name))


# --- the other protocol messages ------------------------------------------------------------


def _termination() -> Doc:
    _, msg = cn.terminate(negotiation(Role.PROVIDER, NegotiationState.REQUESTED), Role.PROVIDER,
                          "the consumer is not a member", "policy-denied", 0.0)
    return codec.to_builtins(msg)


def _suspension(code: str | None) -> Doc:
    return codec.to_builtins(tp.message_for(
        transfer(Role.CONSUMER, TransferState.STARTED), TransferEvent.SUSPEND,
        reason="paused by operator", code=code))


MESSAGES: dict[str, tuple[str, Callable[[], Doc]]] = {
    "contract-agreement-verification": (
        "negotiation/contract-agreement-verification-message",
        lambda: codec.to_builtins(cn.verification(
            negotiation(Role.CONSUMER, NegotiationState.AGREED)))),
    "contract-negotiation-event-accepted": (
        "negotiation/contract-negotiation-event-message",
        lambda: codec.to_builtins(cn.event(
            negotiation(Role.CONSUMER, NegotiationState.OFFERED), "ACCEPTED"))),
    "contract-negotiation-event-finalized": (
        "negotiation/contract-negotiation-event-message",
        lambda: codec.to_builtins(cn.event(
            negotiation(Role.PROVIDER, NegotiationState.VERIFIED), "FINALIZED"))),
    "contract-negotiation-termination": (
        "negotiation/contract-negotiation-termination-message", _termination),
    **{
        f"contract-negotiation-ack-{state.value.lower()}": (
            "negotiation/contract-negotiation",
            lambda state=state: codec.to_builtins(negotiation(Role.PROVIDER, state).ack()))
        for state in NegotiationState
    },
    "transfer-request": (
        "transfer/transfer-request-message",
        lambda: codec.to_builtins(tp.request_message(
            transfer(Role.CONSUMER, TransferState.REQUESTED, provider_pid=None), CONSUMER_DSP))),
    "transfer-request-push": (
        "transfer/transfer-request-message",
        lambda: codec.to_builtins(tp.request_message(
            msgspec.structs.replace(transfer(Role.CONSUMER, TransferState.REQUESTED,
                                             provider_pid=None), format=tp.PUSH_FORMAT),
            CONSUMER_DSP,
            tp.push_address("https://consumer.example.org:8443/push/" + CPID, "TOKEN-HIJ")))),
    "transfer-start-push": (
        "transfer/transfer-start-message",
        lambda: codec.to_builtins(tp.message_for(
            transfer(Role.PROVIDER, TransferState.REQUESTED), TransferEvent.START))),
    "transfer-start-pull": (
        "transfer/transfer-start-message",
        lambda: codec.to_builtins(tp.message_for(
            transfer(Role.PROVIDER, TransferState.REQUESTED), TransferEvent.START,
            data_address=tp.pull_address("https://provider.example.org/data/weather",
                                         "TOKEN-ABCDEFG")))),
    "transfer-start-resume": (
        "transfer/transfer-start-message",
        lambda: codec.to_builtins(tp.message_for(
            transfer(Role.CONSUMER, TransferState.SUSPENDED), TransferEvent.START))),
    "transfer-suspension": ("transfer/transfer-suspension-message", lambda: _suspension(None)),
    "transfer-suspension-with-code": (
        "transfer/transfer-suspension-message", lambda: _suspension("maintenance")),
    "transfer-completion": (
        "transfer/transfer-completion-message",
        lambda: codec.to_builtins(tp.message_for(
            transfer(Role.CONSUMER, TransferState.STARTED), TransferEvent.COMPLETE))),
    "transfer-termination": (
        "transfer/transfer-termination-message",
        lambda: codec.to_builtins(tp.message_for(
            transfer(Role.CONSUMER, TransferState.STARTED), TransferEvent.TERMINATE,
            reason="no longer needed", code="terminated-by-operator"))),
    **{
        f"transfer-process-ack-{state.value.lower()}": (
            "transfer/transfer-process",
            lambda state=state: codec.to_builtins(transfer(Role.PROVIDER, state).ack()))
        for state in TransferState
    },
    "catalog-request": (
        "catalog/catalog-request-message",
        lambda: codec.to_builtins(codec_catalog_request())),
}


@pytest.mark.parametrize("message", sorted(MESSAGES))
def test_protocol_message(message: str) -> None:
    kind, build = MESSAGES[message]
    validate(kind, build())


def test_encode_equals_to_builtins() -> None:
    # The tests validate to_builtins(); the wire bytes are encode(), which must be the same.
    msg = ContractRequestMessage(consumer_pid=CPID, offer=offer("open-use").body(with_target=True),
                                 callback_address=CONSUMER_DSP)
    assert json.loads(codec.encode(msg)) == codec.to_builtins(msg)


# --- catalogue documents ----------------------------------------------------------------------


def _catalog(entries: list[tuple[DatasetEntry, list[Offer]]]) -> Doc:
    # As service.catalog.Catalog.catalog, then codec.encode_json on the wire.
    doc = catalog_doc(entries, participant_id=PROVIDER, dsp_base=PROVIDER_DSP,
                      catalog_id=f"{PROVIDER}#catalog")
    out: Doc = json.loads(codec.encode_json(doc))
    return out


@pytest.mark.parametrize("name", TEMPLATES)
def test_catalog_with_policy_template(name: str) -> None:
    ds = f"urn:dataset:{name}"
    o = offer(name, ds)
    validate("catalog/catalog", _catalog([(entry(ds, (o,)), [o])]))


def test_catalog_with_every_template() -> None:
    all_offers = tuple(offer(n) for n in TEMPLATES)
    validate("catalog/catalog", _catalog([(entry(DATASET, all_offers), list(all_offers))]))


def test_catalog_hides_a_dataset_without_visible_offers() -> None:
    shown = offer("open-use")
    hidden = entry("urn:dataset:hidden", (offer("open-use", "urn:dataset:hidden"),))
    validate("catalog/catalog", _catalog([(entry(DATASET, (shown,)), [shown]), (hidden, [])]))


def test_empty_catalog() -> None:
    # What a caller who may see no offer at all (or a provider with no datasets) receives.
    validate("catalog/catalog", _catalog([]))


@pytest.mark.parametrize("name", TEMPLATES)
def test_dataset_with_policy_template(name: str) -> None:
    # As DspRoutes.dataset: dataset_doc wrapped with the top-level @context.
    o = offer(name)
    doc = with_context(dataset_doc(entry(DATASET, (o,)), [o], PROVIDER, PROVIDER_DSP))
    validate("catalog/dataset", json.loads(codec.encode_json(doc)))


def test_dataset_with_every_template() -> None:
    offers = [offer(n) for n in TEMPLATES]
    doc = with_context(dataset_doc(entry(DATASET, tuple(offers)), offers, PROVIDER, PROVIDER_DSP))
    validate("catalog/dataset", json.loads(codec.encode_json(doc)))


# --- error bodies -------------------------------------------------------------------------------

ERRORS = {
    "negotiation-both-pids": (Area.NEGOTIATION, {"consumer_pid": CPID, "provider_pid": PPID}),
    "negotiation-no-pids": (Area.NEGOTIATION, {}),
    "negotiation-consumer-pid-only": (Area.NEGOTIATION, {"consumer_pid": CPID}),
    "transfer-both-pids": (Area.TRANSFER, {"consumer_pid": CPID, "provider_pid": PPID}),
    "transfer-no-pids": (Area.TRANSFER, {}),
    "catalog": (Area.CATALOG, {}),
}
ERROR_SCHEMAS = {Area.NEGOTIATION: "negotiation/contract-negotiation-error",
                 Area.TRANSFER: "transfer/transfer-error", Area.CATALOG: "catalog/catalog-error"}


@pytest.mark.parametrize("case", sorted(ERRORS))
@pytest.mark.parametrize("error", [MalformedMessage, InvalidTransition, UnknownProcess])
def test_error_body(case: str, error: type[MalformedMessage]) -> None:
    area, pids = ERRORS[case]
    body = dsp_error_body(area, error.code, "something went wrong", **pids)
    validate(ERROR_SCHEMAS[area], json.loads(body))


# --- version document ---------------------------------------------------------------------------


async def test_version_response() -> None:
    # The real route handler, called with a mocked request; it reads nothing from its deps.
    routes = DspRoutes(cast(DspDeps, None))
    response = await routes.version(make_mocked_request("GET", "/.well-known/dspace-version"))
    assert response.status == 200
    assert isinstance(response.body, bytes)
    validate("common/protocol-version", json.loads(response.body))
