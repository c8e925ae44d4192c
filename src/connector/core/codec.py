"""Wire JSON(-LD) <-> message values: strict on what we emit, lenient on what we accept.

Output: ``@context`` is always an array with the DSP context first (DSP 2025-1 §2, and the
``context-schema.json`` the TCK validates against); ``None`` fields are omitted, so the schema's
``oneOf`` between ``callbackAddress`` and a pid never sees both.

Input: extra contexts and unknown fields are ignored; keys and ``@type`` values written as
``dspace:X`` or as absolute DSP IRIs are read as ``X`` (EDC and other peers send both forms).
JSON from outside (bodies, token segments) is refused when nested deeper than
``MAX_JSON_DEPTH`` before any decoder sees it: decoders recurse per level and would fail with
a ``RecursionError`` (a 500) a few thousand levels down, and so would any code walking the
value afterwards.
"""

from __future__ import annotations

import re
from array import array
from itertools import accumulate
from typing import Any, TypeVar

import msgspec

from connector.core.errors import Area, MalformedMessage
from connector.core.messages import DSP_CONTEXT, DSP_NS, AnyMessage, Message

M = TypeVar("M", bound=Message)

_PREFIXES = ("dspace:", DSP_NS)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
# The deepest messages peers send nest 10 levels (EDC's catalogue request with its JSON-LD
# filter, tests/interop/captures); 64 leaves room and keeps every recursive walk of a value
# far from Python's recursion limit (1,000 frames).
MAX_JSON_DEPTH = 64
# A JSON string, escapes included (RFC 8259 §7); brackets inside strings do not nest.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 / -1 as signed bytes


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of the JSON text ``raw`` nest (0 for a scalar).

    Linear and in C (a regex, a translate, an accumulate). For text that is not JSON (an
    unterminated string) the figure is an upper bound, which is all a guard needs.
    """
    return max(accumulate(array("b", _brackets(raw))), default=0)


def _brackets(raw: bytes) -> bytes:
    """The brackets outside strings, each as +1 (open) or -1 (close) in a signed byte."""
    return _STRING.sub(b"", raw).translate(_STEP, _NOT_BRACKET)


def within_depth(raw: bytes) -> bytes:
    """``raw`` itself, or ValueError when it nests deeper than ``MAX_JSON_DEPTH``."""
    # Fast path, a few microseconds: a body with at most MAX_JSON_DEPTH opening brackets,
    # inside strings or not, cannot nest deeper. Most DSP messages have a few dozen.
    if raw.translate(_STEP, _NOT_BRACKET).count(1) <= MAX_JSON_DEPTH:
        return raw
    if _brackets(raw).count(1) <= MAX_JSON_DEPTH:  # few outside strings: shallow enough
        return raw
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} allowed")
    return raw


# U+0000 as JSON writes it (RFC 8259 §7): ``\u0000`` preceded by an even number of
# backslashes (each pair is one escaped backslash, not the start of an escape).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def without_nul(raw: bytes) -> bytes:
    """``raw`` itself, or ValueError when one of its strings holds U+0000: no identifier or
    text of ours needs it, and PostgreSQL's ``text`` cannot hold it."""
    if b"\\u0000" in raw and _NUL_ESCAPE.search(raw):  # the search only when it may match
        raise ValueError("a string holds U+0000 (NUL), which no value may contain")
    return raw


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
    """Parse a JSON object, raising MalformedMessage (never a bare ValueError).

    The depth is bounded first (``MAX_JSON_DEPTH``); a RecursionError from the decoder is
    caught too, in case a bracket count and the decoder ever disagree."""
    try:
        doc = _decoder.decode(within_depth(without_nul(body)))
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"body is not valid JSON: {exc}", area=area) from exc
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"body refused: {exc}", area=area) from exc
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
