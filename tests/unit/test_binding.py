"""The one binding table (``core.binding``): what the routes, the services and the outbox read."""

from __future__ import annotations

from aiohttp import web

from connector.adapters.http.dsp import DspDeps, DspRoutes
from connector.core import negotiation as cn
from connector.core import transfer as tp
from connector.core.binding import (
    BINDINGS,
    DSP_PATH,
    PROCESS_PATHS,
    created_by,
    path_for,
    process_path,
)
from connector.core.errors import Area
from connector.core.messages import (
    ContractOfferMessage,
    ContractRequestMessage,
    TransferRequestMessage,
)
from connector.core.negotiation import NegotiationState
from connector.core.process import Role
from connector.core.transfer import Transfer, TransferEvent, TransferState

PIDS = {"consumer_pid": "urn:c", "provider_pid": "urn:p"}


def test_the_paths_of_dsp_2025_1() -> None:
    assert DSP_PATH == "/dsp/2025-1"
    assert {(b.message.__name__, b.path) for b in BINDINGS} == {
        ("CatalogRequestMessage", "/catalog/request"),
        ("ContractRequestMessage", "/negotiations/request"),
        ("ContractOfferMessage", "/negotiations/offers"),
        ("ContractRequestMessage", "/negotiations/{pid}/request"),
        ("ContractOfferMessage", "/negotiations/{pid}/offers"),
        ("ContractAgreementMessage", "/negotiations/{pid}/agreement"),
        ("ContractAgreementVerificationMessage", "/negotiations/{pid}/agreement/verification"),
        ("ContractNegotiationEventMessage", "/negotiations/{pid}/events"),
        ("ContractNegotiationTerminationMessage", "/negotiations/{pid}/termination"),
        ("TransferRequestMessage", "/transfers/request"),
        ("TransferStartMessage", "/transfers/{pid}/start"),
        ("TransferCompletionMessage", "/transfers/{pid}/completion"),
        ("TransferSuspensionMessage", "/transfers/{pid}/suspension"),
        ("TransferTerminationMessage", "/transfers/{pid}/termination"),
    }


def test_a_message_goes_to_the_recipients_pid() -> None:
    offer = {"@id": "o"}
    assert path_for(ContractRequestMessage(consumer_pid="urn:c", offer=offer),
                    Role.PROVIDER) == "/negotiations/request"
    assert path_for(ContractRequestMessage(offer=offer, **PIDS),
                    Role.PROVIDER) == "/negotiations/urn:p/request"
    assert path_for(ContractOfferMessage(provider_pid="urn:p", offer=offer),
                    Role.CONSUMER) == "/negotiations/offers"
    record = cn.Negotiation(id="urn:p", role=Role.PROVIDER, state=NegotiationState.VERIFIED,
                            dataset_id="ds", offer=offer, counterparty_address="x", **PIDS)
    assert path_for(cn.event(record, "FINALIZED"), Role.CONSUMER) == "/negotiations/urn:c/events"
    assert path_for(cn.event(record, "ACCEPTED"), Role.PROVIDER) == "/negotiations/urn:p/events"
    assert path_for(cn.verification(record),
                    Role.PROVIDER) == "/negotiations/urn:p/agreement/verification"
    transfer = Transfer(id="urn:p", role=Role.PROVIDER, state=TransferState.REQUESTED,
                        agreement_id="a", format="f", counterparty_address="x", **PIDS)
    for event, verb in ((TransferEvent.START, "start"), (TransferEvent.COMPLETE, "completion"),
                        (TransferEvent.SUSPEND, "suspension"),
                        (TransferEvent.TERMINATE, "termination")):
        msg = tp.message_for(transfer, event)
        assert path_for(msg, Role.CONSUMER) == f"/transfers/urn:c/{verb}"
        assert path_for(msg, Role.PROVIDER) == f"/transfers/urn:p/{verb}"
    request = TransferRequestMessage(consumer_pid="urn:c", agreement_id="a", format="f",
                                     callback_address="https://c")
    assert path_for(request, Role.PROVIDER) == "/transfers/request"


def test_acks_are_routed_by_the_table() -> None:
    assert created_by("https://p/dsp/2025-1/negotiations/request") is Area.NEGOTIATION
    assert created_by("https://p/dsp/2025-1/negotiations/offers") is Area.NEGOTIATION
    assert created_by("https://p/dsp/2025-1/transfers/request") is Area.TRANSFER
    assert created_by("https://p/dsp/2025-1/negotiations/urn:p/request") is None
    assert created_by("https://p/dsp/2025-1/catalog/request") is None
    assert process_path(Area.TRANSFER, "urn:p") == "/transfers/urn:p"


def test_the_routes_are_the_table() -> None:
    app = web.Application()
    DspRoutes(DspDeps(verifier=None, catalog=None, negotiations=None,  # type: ignore[arg-type]
                      transfers=None, did_document={})).register(app)
    posts = {r.resource.canonical for r in app.router.routes()
             if r.method == "POST" and r.resource is not None}
    assert {DSP_PATH + b.path for b in BINDINGS} <= posts
    gets = {r.resource.canonical for r in app.router.routes()
            if r.method == "GET" and r.resource is not None}
    assert {DSP_PATH + p for p in PROCESS_PATHS.values()} <= gets
