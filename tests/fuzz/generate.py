"""DSP messages generated from the official JSON Schemas, then mutated. Deterministic per seed.

``instance(kind, rng)`` walks a schema of ``tests/conformance/dsp/schemas`` (draft 2019-09:
``$ref`` across files, ``allOf`` merged, one branch of ``oneOf``/``anyOf``, ``const``, ``enum``,
``contains``, ``minItems``) and builds a document that matches it, with strings drawn from
realistic values (pids, DIDs, URLs) and from hostile ones (control characters, lone
surrogates, right-to-left marks). ``MUTATIONS`` then break it the ways a careless or hostile
peer would: missing and retyped fields, huge and deep values, wrong ``@context`` and
``@type``, pids of other processes, bytes that are not JSON at all.

Only a seeded ``random.Random`` decides anything, so a failing run replays from its seed.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

from tests.conformance.dsp_schemas import DSP_PREFIX, SCHEMAS

CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
Schema = dict[str, Any]
# Past this depth of the schema walk, optional members are left out (the ODRL rule and
# constraint definitions recurse).
OPTIONAL_DEPTH = 6

HOSTILE = ["", " ", "\x00", "a\nFORGED 2026-01-01 ERROR owned", "\x1b[31mred\x1b[0m",
           "\u202eevil\u202c", "\ud83d\ude00" * 3, "\ufeffbom", "é" * 300, "../../etc/passwd",
           "%0A%0D", "' OR 1=1 --", "${jndi:ldap://x}", "{{7*7}}", "<script>x</script>",
           "urn:uuid:" + "9" * 5000, "\u2028\u2029", "null", "0", "-1", "1e400", "true"]

# Values for the schemas' two ``pattern`` strings (an xsd:dateTime; a catalogue endpoint).
PATTERNED = ["2026-12-05T21:00:00Z", "https://127.0.0.1:1/dsp/2025-1/catalog"]


def _load(uri: str) -> Schema:
    path = SCHEMAS / uri.removeprefix(DSP_PREFIX)
    doc: Schema = json.loads(path.read_text(encoding="utf-8").replace(
        "#definitions/", "#/definitions/"))
    return doc


_FILES: dict[str, Schema] = {}


def _file(uri: str) -> Schema:
    if uri not in _FILES:
        _FILES[uri] = _load(uri)
    return _FILES[uri]


def _deref(schema: Schema, base: str) -> tuple[Schema, str]:
    """Follow ``$ref`` (same file or another file of the set) until a schema without one."""
    while "$ref" in schema:
        ref: str = schema["$ref"]
        target, _, pointer = ref.partition("#")
        base = target or base
        node: Any = _file(base)
        for part in filter(None, pointer.split("/")):
            node = node[part]
        schema = node
    return schema, base


def schema_uri(kind: str) -> str:
    """``negotiation/contract-request-message`` -> its absolute ``$id``."""
    return f"{DSP_PREFIX}{kind}-schema.json"


class Generator:
    """Documents that match a DSP schema, drawing every choice from ``rng``."""

    def __init__(self, rng: random.Random, pids: list[str], callback: str) -> None:
        self.rng = rng
        self.pids = pids  # real process ids of the daemon under test, and made-up ones
        # (consumerPid, providerPid) of the process a message is aimed at, when it is one
        # of the daemon's: the body then names it as its peer would.
        self.aimed: tuple[str, str] | None = None
        self.callback = callback

    def instance(self, kind: str) -> Any:
        uri = schema_uri(kind)
        return self.value(_file(uri), uri, 0)

    def value(self, schema: Schema, base: str, depth: int) -> Any:
        schema, base = _deref(schema, base)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = self.rng.choice(kind)
        branches = schema.get("oneOf") or schema.get("anyOf")
        if kind is None and branches and not ({"properties", "allOf"} & set(schema)):
            return self.value(self.rng.choice(branches), base, depth + 1)
        if kind == "object" or (kind is None and {"properties", "allOf", "required"}
                                & set(schema)):
            return self.object(schema, base, depth)
        if kind == "array":
            return self.array(schema, base, depth)
        if kind == "integer":
            return self.rng.choice([0, 1, 7, 2**31, -1])
        if kind == "number":
            return self.rng.choice([0, 1.5, -3, 1e300])
        if kind == "boolean":
            return self.rng.random() < 0.5
        if "pattern" in schema:
            return next((c for c in PATTERNED if re.fullmatch(schema["pattern"], c)), "")
        return self.string()

    def _members(self, schema: Schema, base: str, props: dict[str, tuple[Schema, str]],
                 required: set[str], excluded: set[str]) -> None:
        """Merge the properties and required names of ``schema``, its ``allOf`` parts and one
        branch of each ``oneOf``/``anyOf``; a ``oneOf``'s other branches' names are excluded
        (exactly one must match)."""
        schema, base = _deref(schema, base)
        for name, sub in schema.get("properties", {}).items():
            props.setdefault(name, (sub, base))
        required.update(schema.get("required", []))
        for part in schema.get("allOf", []):
            self._members(part, base, props, required, excluded)
        for key in ("oneOf", "anyOf"):
            if key in schema:
                chosen = self.rng.choice(schema[key])
                self._members(chosen, base, props, required, excluded)
                if key == "oneOf":
                    excluded.update(n for other in schema[key] if other is not chosen
                                    for n in _deref(other, base)[0].get("required", []))

    def object(self, schema: Schema, base: str, depth: int) -> dict[str, Any]:
        props: dict[str, tuple[Schema, str]] = {}
        required: set[str] = set()
        excluded: set[str] = set()
        self._members(schema, base, props, required, excluded)
        doc: dict[str, Any] = {}
        for name in sorted(props):
            if name in required or (name not in excluded and depth < OPTIONAL_DEPTH
                                    and self.rng.random() < 0.5):
                doc[name] = self.field(name, *props[name], depth + 1)
        for name in sorted(required - set(doc)):
            doc[name] = self.string()
        return doc

    def field(self, name: str, schema: Schema, base: str, depth: int) -> Any:
        """Pids from the pool and our callback most of the time: that reaches the state
        machines instead of stopping at 'unknown process'."""
        if name in ("consumerPid", "providerPid") and self.aimed and self.rng.random() < 0.9:
            return self.aimed[name == "providerPid"]
        if name in ("consumerPid", "providerPid", "agreementId") and self.rng.random() < 0.8:
            return self.rng.choice(self.pids)
        if name == "callbackAddress" and self.rng.random() < 0.7:
            return self.callback
        return self.value(schema, base, depth)

    def array(self, schema: Schema, base: str, depth: int) -> list[Any]:
        low = int(schema.get("minItems", 0))
        count = low + self.rng.randint(0, 2 if depth < OPTIONAL_DEPTH else 0)
        items = schema.get("items", {})
        out = [self.value(items, base, depth + 1) for _ in range(count)]
        for part in (schema, *(_deref(a, base)[0] for a in schema.get("allOf", []))):
            contains, _ = _deref(part.get("contains", {}), base)
            if "const" in contains and contains["const"] not in out:
                out.insert(self.rng.randint(0, len(out)), contains["const"])
        return out

    def string(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(self.pids)
        if r < 0.7:
            return self.rng.choice(["use", "did:web:127.0.0.1%3A1", "https://127.0.0.1:1/x",
                                    "urn:offer:example-weather:members-only",
                                    "example-weather", "membership", "eq", "active"])
        return self.rng.choice(HOSTILE)

    def any_json(self, depth: int = 0) -> Any:
        """A random JSON value of any type (for retyped fields)."""
        pick = self.rng.randrange(8 if depth < 3 else 6)
        if pick == 6:
            return [self.any_json(depth + 1) for _ in range(self.rng.randint(0, 3))]
        if pick == 7:
            return {self.string()[:20]: self.any_json(depth + 1)
                    for _ in range(self.rng.randint(0, 3))}
        return [None, True, -(2**63) - 1, 10**30, 0.5, self.string()][pick]


# -- mutations: each takes the document and returns a document or raw bytes ------------------------


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a member or item of ``doc``."""
    out = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*prefix, key))
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.append((*prefix, i))
            out.extend(_paths(value, (*prefix, i)))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    """Set the member at ``path``; nothing if an earlier mutation replaced a parent."""
    try:
        for part in path[:-1]:
            doc = doc[part]
        if isinstance(doc, (dict, list)):
            doc[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass


def _at_random_path(g: Generator, doc: Any, make: Callable[[], Any]) -> Any:
    paths = _paths(doc)
    if not paths:
        return make()
    _set(doc, g.rng.choice(paths), make())
    return doc


def drop_member(g: Generator, doc: Any) -> Any:
    paths = _paths(doc)
    if paths:
        path = g.rng.choice(paths)
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        del parent[path[-1]]  # paths are fresh: the first mutation of a document
    return doc


def retype(g: Generator, doc: Any) -> Any:
    return _at_random_path(g, doc, g.any_json)


def huge_string(g: Generator, doc: Any) -> Any:
    size = g.rng.choice([10_000, 200_000, 1_100_000])  # the last one is past the body limit
    return _at_random_path(g, doc, lambda: g.rng.choice("xé😀\x00") * size)


def huge_array(g: Generator, doc: Any) -> Any:
    size = g.rng.choice([1_000, 50_000])
    return _at_random_path(g, doc, lambda: [g.rng.choice(g.pids)] * size)


def many_members(g: Generator, doc: Any) -> Any:
    if isinstance(doc, dict):
        doc.update({f"k{i}": i for i in range(g.rng.choice([100, 20_000]))})
    return doc


def deep(g: Generator, doc: Any) -> Any:
    """A value nested 40 to 3,000 levels (written into the text by ``body``: json.dumps
    itself would overflow the stack)."""
    depth = g.rng.choice([40, 64, 65, 200, 3_000])
    opener = "".join(g.rng.choice('[{') for _ in range(depth))
    return _at_random_path(g, doc, lambda: f"{DEEP_MARK}{opener}")


DEEP_MARK = "@@deep@@"


def _deep_text(opener: str) -> str:
    closer = "".join("]" if c == "[" else "}" for c in reversed(opener))
    return opener.replace("{", '{"a":') + '"x"' + closer


def _write_deep(text: str) -> str:
    start = text.find(f'"{DEEP_MARK}')
    while start != -1:
        end = text.index('"', start + 1)
        text = text[:start] + _deep_text(text[start + 1 + len(DEEP_MARK):end]) + text[end + 1:]
        start = text.find(f'"{DEEP_MARK}')
    return text


def hostile_strings(g: Generator, doc: Any) -> Any:
    for path in _paths(doc):
        if g.rng.random() < 0.3:
            _set(doc, path, g.rng.choice(HOSTILE))
    return doc


def wrong_context(g: Generator, doc: Any) -> Any:
    if isinstance(doc, dict):
        choice = g.rng.randrange(6)
        if choice == 0:
            doc.pop("@context", None)
        else:
            doc["@context"] = [CONTEXT[:-1], "https://evil.example/ctx", {"@vocab": "x"},
                               CONTEXT, 42][choice - 1]
    return doc


def wrong_type(g: Generator, doc: Any) -> Any:
    if isinstance(doc, dict):
        doc["@type"] = g.rng.choice([
            "ContractRequestMessage", "ContractAgreementMessage", "TransferStartMessage",
            "TransferCompletionMessage", "ContractNegotiationEventMessage", "CatalogRequestMessage",
            "dspace:ContractOfferMessage", DSP_PREFIX + "TransferRequestMessage", "Offer",
            ["ContractRequestMessage"], None, 5, ""])
    return doc


def swap_pids(g: Generator, doc: Any) -> Any:
    if isinstance(doc, dict):
        for key in ("consumerPid", "providerPid"):
            if g.rng.random() < 0.7:
                doc[key] = g.rng.choice(g.pids)
    return doc


def big_numbers(g: Generator, doc: Any) -> Any:
    return _at_random_path(g, doc, lambda: g.rng.choice([10**400, -(10**400), 2**64, 1e308]))


MUTATIONS: list[Callable[[Generator, Any], Any]] = [
    drop_member, retype, huge_string, huge_array, many_members, deep, hostile_strings,
    wrong_context, wrong_type, swap_pids, big_numbers]

NOT_JSON = [b"", b"{", b'{"@type": "ContractRequestMessage"', b"\xff\xfe\x00{}", b"null",
            b"[]", b"42", b'"text"', b"\xef\xbb\xbf{}", b'{"a": NaN}', b'{"a": 1,}',
            b'{"\\ud800": "\\udfff"}', b"{" * 100_000, b'{"a": "\x00\x01"}',
            b'{"@context": [], "@type": "ContractRequestMessage"}' + b" " * 10]


def body(g: Generator, kind: str) -> tuple[bytes, list[str]]:
    """A request body for a message of ``kind``, and the names of what was done to it."""
    if g.rng.random() < 0.08:
        return g.rng.choice(NOT_JSON), ["not-json"]
    doc = g.instance(kind)
    done = []
    if g.rng.random() < 0.75:
        for mutation in g.rng.sample(MUTATIONS, g.rng.randint(1, 3)):
            doc = mutation(g, doc)
            done.append(mutation.__name__)
    text = _write_deep(json.dumps(doc, ensure_ascii=g.rng.random() < 0.5))
    return text.encode("utf-8", "surrogatepass"), done
