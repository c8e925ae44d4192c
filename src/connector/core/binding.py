"""The DSP 2025-1 HTTPS binding in one table: message type -> path.

DSP 2025-1 §CN and §TP "HTTPS binding" give every message one path under the versioned DSP
base (``DSP_PATH``, advertised in ``/.well-known/dspace-version``, §Common 4.3). A message
on an existing process goes to ``/negotiations/:pid/...`` or ``/transfers/:pid/...`` with
the *recipient's* pid (the provider's endpoints take the providerPid, the consumer's
callbacks the consumerPid); a message that creates a process has a path without a pid.

The inbound routes (``adapters/http/dsp.py``), the outbound URLs (the services, through
``path_for``) and the outbox's acknowledgements of process-creating messages
(``created_by``) all read this one table.
"""

from __future__ import annotations

from typing import NamedTuple

from connector.core.errors import Area
from connector.core.messages import (
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
from connector.core.process import Role

# The versioned DSP base under a connector's root URL (DSP 2025-1 §Common 4.3).
DSP_PATH = "/dsp/2025-1"
PID = "{pid}"


class Binding(NamedTuple):
    """Where one message type is POSTed. ``initial``: it creates the process (no pid)."""

    message: type[Message]
    area: Area
    path: str
    initial: bool = False


BINDINGS: tuple[Binding, ...] = (
    Binding(CatalogRequestMessage, Area.CATALOG, "/catalog/request", initial=True),
    # DSP 2025-1 §CN HTTPS binding
    Binding(ContractRequestMessage, Area.NEGOTIATION, "/negotiations/request", initial=True),
    Binding(ContractOfferMessage, Area.NEGOTIATION, "/negotiations/offers", initial=True),
    Binding(ContractRequestMessage, Area.NEGOTIATION, f"/negotiations/{PID}/request"),
    Binding(ContractOfferMessage, Area.NEGOTIATION, f"/negotiations/{PID}/offers"),
    Binding(ContractAgreementMessage, Area.NEGOTIATION, f"/negotiations/{PID}/agreement"),
    Binding(ContractAgreementVerificationMessage, Area.NEGOTIATION,
            f"/negotiations/{PID}/agreement/verification"),
    Binding(ContractNegotiationEventMessage, Area.NEGOTIATION, f"/negotiations/{PID}/events"),
    Binding(ContractNegotiationTerminationMessage, Area.NEGOTIATION,
            f"/negotiations/{PID}/termination"),
    # DSP 2025-1 §TP HTTPS binding
    Binding(TransferRequestMessage, Area.TRANSFER, "/transfers/request", initial=True),
    Binding(TransferStartMessage, Area.TRANSFER, f"/transfers/{PID}/start"),
    Binding(TransferCompletionMessage, Area.TRANSFER, f"/transfers/{PID}/completion"),
    Binding(TransferSuspensionMessage, Area.TRANSFER, f"/transfers/{PID}/suspension"),
    Binding(TransferTerminationMessage, Area.TRANSFER, f"/transfers/{PID}/termination"),
)

# GET on a process returns its ContractNegotiation / TransferProcess (§CN, §TP HTTPS binding).
PROCESS_PATHS: dict[Area, str] = {
    Area.NEGOTIATION: f"/negotiations/{PID}",
    Area.TRANSFER: f"/transfers/{PID}",
}
DATASET_PATH = "/catalog/datasets/{id}"


def recipient_pid(msg: Message, recipient: Role) -> str | None:
    """The pid that names the process at the recipient (None: the message creates it)."""
    pid = getattr(msg, "provider_pid" if recipient is Role.PROVIDER else "consumer_pid", None)
    return pid if isinstance(pid, str) and pid else None


def path_for(msg: Message, recipient: Role) -> str:
    """The path, under the recipient's DSP base, that ``msg`` is POSTed to."""
    pid = recipient_pid(msg, recipient)
    for binding in BINDINGS:
        if type(msg) is binding.message and binding.initial is (pid is None):
            return binding.path.replace(PID, pid or "")
    raise ValueError(f"no DSP path for {type(msg).__name__} to the {recipient.value}")


def process_path(area: Area, pid: str) -> str:
    """The path of a process at the party that names it ``pid``."""
    return PROCESS_PATHS[area].replace(PID, pid)


def created_by(url: str) -> Area | None:
    """The area of the process a POST to ``url`` creates (its answer carries the peer's pid,
    DSP 2025-1 §CN 3.2 / §TP 3.2); None for a message on an existing process."""
    for binding in BINDINGS:
        if binding.initial and binding.area is not Area.CATALOG and url.endswith(binding.path):
            return binding.area
    return None

