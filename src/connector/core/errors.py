"""The connector's one error tree.

Every error the connector raises on purpose derives from ``ConnectorError``. Each class states
the HTTP status it maps to, on purpose, by whose mistake it is; for DSP errors it also knows
the error shape the spec prescribes, so the HTTP edge renders all of them in one place
(``adapters/http/errors.py``)::

    ConnectorError                                                     (500: never raised bare)
    ├── ConfigError          503  this connector is not set up for it: the message names the
    │                             file and key to fix (connector.toml, trust/, datasets/)
    ├── PolicyError          400  a policy document that cannot be parsed or evaluated
    ├── AuthError            401  missing, forged, expired, replayed or misaddressed token
    │   │                         (404 on DSP process endpoints: existence is not revealed)
    │   └── ModesDiffer      401  a caller whose signature verified speaks the other
    │                             [identity] mode (pinned trust vs DCP)
    ├── InvalidParameter     400  a management or data-plane parameter of the wrong type or
    │                             range (the message names the parameter)
    ├── ProtocolError        400  a DSP message we must refuse
    │   ├── MalformedMessage 400  not JSON, nested too deep, wrong @type, missing field
    │   ├── InvalidTransition 400 the state table has no cell for (sender, state, message)
    │   ├── UnknownProcess   404  unknown or foreign process id
    │   └── OfferRejected    400  the provider does not know or will not grant the offer
    ├── CatalogError         400  unsupported filter (404: unknown dataset)
    ├── ConflictError        409  a write colliding with an existing record (reused pid)
    ├── NotFound             404  management API: no such record, or the caller's file
    ├── TransferDenied       403  data plane: token unknown, expired, or the policy denies
    ├── AuditError           503  the audit entry of a step cannot be written: the step does
    │                             not happen (a full disk or read-only store)
    ├── PeerError            502  a peer answered with an error or could not be reached
    └── InternalError        500  a bug: what the middleware answers, with an error id, when
                                  anything outside this tree escapes a handler (never raised)

The rule behind the numbers: the caller's mistake is a 4xx, a missing or wrong setting of
ours is a 503 naming the key (the caller may retry once the operator fixed it), a peer's
failure is a 502. Anything else that escapes a handler is a bug: the middleware answers 500
with an error id and logs the traceback under the same id.

DSP 2025-1 §CN/§TP HTTPS bindings: an illegal transition is a 400 carrying a
``ContractNegotiationError`` / ``TransferError`` with both process ids; an unknown or
unauthorized process id is a 404, so that existence is not revealed.
"""

from __future__ import annotations

from enum import StrEnum


class Area(StrEnum):
    """Which DSP error shape a protocol error renders as."""

    CATALOG = "catalog"
    NEGOTIATION = "negotiation"
    TRANSFER = "transfer"


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""

    status: int = 500
    code: str = "internal"

    def __init_subclass__(cls, *, status: int | None = None, code: str | None = None) -> None:
        """Each class states its HTTP status and error code in its header, so the tree reads
        as the table above: ``class NotFound(ConnectorError, status=404, code="not-found")``.
        A subclass that names neither keeps its parent's."""
        super().__init_subclass__()
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ConnectorError, status=503, code="config"):
    """Configuration unreadable or invalid; the message names the file and key.

    Served as 503: the request may succeed once the operator sets the key."""


class PolicyError(ConnectorError, status=400, code="policy"):
    """A policy document that cannot be parsed or evaluated. Evaluation denies."""


class AuthError(ConnectorError, status=401, code="unauthorized"):
    """The caller's token is missing or invalid. DSP: 404 on process endpoints."""


class ModesDiffer(AuthError):
    """A caller signed its token with a key of its DID document but speaks the other
    [identity] mode. The signature verified, so ``issuer`` is who refused to speak our mode:
    a process with that counterparty can end saying so."""

    def __init__(self, message: str, *, issuer: str) -> None:
        super().__init__(message)
        self.issuer = issuer


class InvalidParameter(ConnectorError, status=400, code="invalid-parameter"):
    """A query or body parameter of the wrong type or range; the message names it."""


class ProtocolError(ConnectorError, status=400, code="bad-request"):
    """A DSP message the connector refuses. Carries both pids for the error body.

    ``area`` is required, so that a transfer error never renders as a negotiation error:
    the DSP error shape it takes (DSP 2025-1 §CN/§TP HTTPS binding), or None for a message
    that is not a DSP process message (it renders in the shape of the route it reached)."""

    def __init__(
        self,
        message: str,
        *,
        area: Area | None,
        consumer_pid: str | None = None,
        provider_pid: str | None = None,
    ) -> None:
        super().__init__(message)
        self.area = area
        self.consumer_pid = consumer_pid
        self.provider_pid = provider_pid


class MalformedMessage(ProtocolError, code="malformed"):
    """The body is not JSON, has the wrong @type or lacks a required field."""


class InvalidTransition(ProtocolError, code="invalid-transition"):
    """No cell of the state table allows this message now (DSP: 400)."""


class UnknownProcess(ProtocolError, status=404, code="not-found"):
    """Unknown, foreign or terminated-and-reused process id (DSP: 404)."""


class OfferRejected(ProtocolError, code="offer-rejected"):
    """The offer is unknown to the provider or its policy denies it."""


class CatalogError(ConnectorError, status=400, code="catalog"):
    """A catalog request the provider refuses (unknown dataset: 404)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ConflictError(ConnectorError, status=409, code="conflict"):
    """A write that collides with an existing record (a reused pid)."""


class NotFound(ConnectorError, status=404, code="not-found"):
    """Management API: no record with that id."""


class TransferDenied(ConnectorError, status=403, code="denied"):
    """Data plane refuses an access: token unknown or expired, or the policy denies."""


class AuditError(ConnectorError, status=503, code="audit"):
    """The audit trail cannot be written, so the step it would record is refused; or it
    cannot be read."""


class PeerError(ConnectorError, status=502, code="peer"):
    """A peer answered with an error status, or could not be reached."""

    def __init__(self, message: str, *, peer_status: int | None = None,
                 final: bool = False, peer_reason: str | None = None) -> None:
        super().__init__(message)
        self.peer_status = peer_status
        self.final = final  # not worth retrying: e.g. an address we refuse to connect to
        # The reason the peer gave in its error body (a DSP error's ``reason``), if any.
        self.peer_reason = peer_reason

    @property
    def retryable(self) -> bool:
        """Network errors, 5xx and 409 are retried; another 4xx answer is final (EDC does the
        same), and so is a request we refused to send. EDC answers 409 to a message that came
        before its own state caught up (a verification racing its agreement's dispatch)."""
        return not self.final and (self.peer_status is None or self.peer_status >= 500
                                   or self.peer_status == 409)


class InternalError(ConnectorError, status=500, code="internal"):
    """The answer to a bug, carrying the error id its logged traceback repeats. Created by
    the HTTP error middleware only; nothing raises it."""


class Problem:
    """One finding of ``connector policy check``: file, 1-based line, message."""

    __slots__ = ("file", "line", "message")

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"

    def __repr__(self) -> str:
        return f"Problem({self.file!r}, {self.line}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and (self.file, self.line, self.message) == (
            other.file, other.line, other.message)

    def __hash__(self) -> int:
        return hash((self.file, self.line, self.message))
