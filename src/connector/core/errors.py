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
    │                             (404 on DSP process endpoints: existence is not revealed)
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

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ConnectorError):
    """Configuration unreadable or invalid; the message names the file and key.

    Served as 503: the request may succeed once the operator sets the key."""

    status = 503
    code = "config"


class PolicyError(ConnectorError):
    """A policy document that cannot be parsed or evaluated. Evaluation denies."""

    status = 400
    code = "policy"


class AuthError(ConnectorError):
    """The caller's token is missing or invalid. DSP: 404 on process endpoints."""

    status = 401
    code = "unauthorized"


class InvalidParameter(ConnectorError):
    """A query or body parameter of the wrong type or range; the message names it."""

    status = 400
    code = "invalid-parameter"


class ProtocolError(ConnectorError):
    """A DSP message the connector refuses. Carries both pids for the error body.

    ``area`` is required, so that a transfer error never renders as a negotiation error:
    the DSP error shape it takes (DSP 2025-1 §CN/§TP HTTPS binding), or None for a message
    that is not a DSP process message (it renders in the shape of the route it reached)."""

    status = 400
    code = "bad-request"

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


class MalformedMessage(ProtocolError):
    """The body is not JSON, has the wrong @type or lacks a required field."""

    code = "malformed"


class InvalidTransition(ProtocolError):
    """No cell of the state table allows this message now (DSP: 400)."""

    code = "invalid-transition"


class UnknownProcess(ProtocolError):
    """Unknown, foreign or terminated-and-reused process id (DSP: 404)."""

    status = 404
    code = "not-found"


class OfferRejected(ProtocolError):
    """The offer is unknown to the provider or its policy denies it."""

    code = "offer-rejected"


class CatalogError(ConnectorError):
    """A catalog request the provider refuses (unknown dataset: 404)."""

    status = 400
    code = "catalog"

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ConflictError(ConnectorError):
    """A write that collides with an existing record (a reused pid)."""

    status = 409
    code = "conflict"


class NotFound(ConnectorError):
    """Management API: no record with that id."""

    status = 404
    code = "not-found"


class TransferDenied(ConnectorError):
    """Data plane refuses an access: token unknown or expired, or the policy denies."""

    status = 403
    code = "denied"


class AuditError(ConnectorError):
    """The audit trail cannot be written, so the step it would record is refused; or it
    cannot be read."""

    status = 503
    code = "audit"


class PeerError(ConnectorError):
    """A peer answered with an error status, or could not be reached."""

    status = 502
    code = "peer"

    def __init__(self, message: str, *, peer_status: int | None = None,
                 final: bool = False) -> None:
        super().__init__(message)
        self.peer_status = peer_status
        self.final = final  # not worth retrying: e.g. an address we refuse to connect to

    @property
    def retryable(self) -> bool:
        """Network errors, 5xx and 409 are retried; another 4xx answer is final (EDC does the
        same), and so is a request we refused to send. EDC answers 409 to a message that came
        before its own state caught up (a verification racing its agreement's dispatch)."""
        return not self.final and (self.peer_status is None or self.peer_status >= 500
                                   or self.peer_status == 409)


class InternalError(ConnectorError):
    """The answer to a bug, carrying the error id its logged traceback repeats. Created by
    the HTTP error middleware only; nothing raises it."""

    status = 500
    code = "internal"


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
