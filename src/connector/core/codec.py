"""Wire JSON(-LD) <-> message values: strict on what we emit, lenient on what we accept.

Output: ``@context`` is always an array with the DSP context first (DSP 2025-1 §2, and the
``context-schema.json`` the TCK validates against); ``None`` fields are omitted, so the schema's
``oneOf`` between ``callbackAddress`` and a pid never sees both.

Input: extra contexts and unknown fields are ignored; keys and ``@type`` values written as
``dspace:X`` or as absolute DSP IRIs are read as ``X`` (EDC and other peers send both forms).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from connector.core.errors import Area, MalformedMessage
from connector.core.messages import DSP_CONTEXT, DSP_NS, AnyMessage, Message

M = TypeVar("M", bound=Message)

_PREFIXES = ("dspace:", DSP_NS)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _local(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _normalise(doc: dict[str, Any]) -> dict[str, Any]:
    """Strip DSP prefixes from top-level keys, from @type and from enumerated values."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        key = _local(key)
        if isinstance(value, dict) and "@id" in value and len(value) == 1 and key != "offer":
            value = value["@id"]  # {"@id": "..."} node references for pids (expanded forms)
        if key in ("@type", "state", "eventType") and isinstance(value, str):
            value = _local(value)
        out[key] = value
    return out


def to_builtins(msg: Message) -> dict[str, Any]:
    """The JSON object for ``msg``, ``@context`` first and ``@type`` second."""
    body = msgspec.to_builtins(msg)
    assert isinstance(body, dict)
    return {"@context": [DSP_CONTEXT], **body}


def encode(msg: Message) -> bytes:
    """Serialise a message for the wire."""
    return _encoder.encode(to_builtins(msg))


def encode_json(doc: Any) -> bytes:
    """Serialise any JSON value (catalogues, error bodies)."""
    return _encoder.encode(doc)


def decode_json(body: bytes, *, area: Area = Area.NEGOTIATION) -> dict[str, Any]:
    """Parse a JSON object, raising MalformedMessage (never a bare ValueError)."""
    try:
        doc = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"body is not valid JSON: {exc}", area=area) from exc
    if not isinstance(doc, dict):
        raise MalformedMessage("body must be a JSON object", area=area)
    return doc


def decode(body: bytes | dict[str, Any], expected: type[M], *, area: Area) -> M:
    """Decode ``body`` as exactly the message type ``expected``.

    Raises MalformedMessage naming the wrong ``@type`` or the missing/mistyped field.
    """
    doc = _normalise(decode_json(body, area=area) if isinstance(body, bytes) else body)
    kind = doc.get("@type")
    want = expected.__struct_config__.tag
    if kind != want:
        raise MalformedMessage(f"expected @type {want}, got {kind!r}", area=area,
                               **_pids(doc))
    try:
        return msgspec.convert(doc, expected, strict=False)
    except msgspec.ValidationError as exc:
        raise MalformedMessage(f"invalid {want}: {exc}", area=area, **_pids(doc)) from exc


def decode_any(body: bytes, *, area: Area) -> AnyMessage:
    """Decode any known DSP message by its ``@type``."""
    doc = _normalise(decode_json(body, area=area))
    try:
        message: AnyMessage = msgspec.convert(doc, AnyMessage, strict=False)
        return message
    except msgspec.ValidationError as exc:
        raise MalformedMessage(f"invalid message: {exc}", area=area, **_pids(doc)) from exc


def _pids(doc: dict[str, Any]) -> dict[str, str | None]:
    """Both pids from a raw document, when they are strings, for the error body."""
    c, p = doc.get("consumerPid"), doc.get("providerPid")
    return {
        "consumer_pid": c if isinstance(c, str) else None,
        "provider_pid": p if isinstance(p, str) else None,
    }
