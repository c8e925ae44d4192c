"""A minimal Turtle reader for the SolidLab ODRL test-suite files (test-only).

The suite's policies, requests and states use a small part of Turtle 1.1: ``@prefix``,
triples with ``;`` and ``,``, ``a``, IRIs, prefixed names and string literals with an
optional ``^^datatype`` or ``@lang``. That is all this reads; anything else (blank nodes,
collections, long strings, numbers) raises ``ValueError`` naming the token, so a new upstream
file that needs more fails loudly instead of being misread.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"

_TOKEN = re.compile(r'''
    (?P<ws>\s+|\#[^\n]*)
  | (?P<prefix>@prefix)
  | (?P<iri><[^>\s]*>)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
    (?:\^\^(?P<dtype><[^>\s]*>|[A-Za-z][\w-]*:[\w-]*)|@(?P<lang>[\w-]+))?
  | (?P<pname>[A-Za-z][\w-]*:(?:[\w-]+(?:\.[\w-]+)*)?|:[\w-]*)
  | (?P<a>a(?=\s))
  | (?P<punct>[;,.])
''', re.VERBOSE)


@dataclass(frozen=True, slots=True)
class Literal:
    """A string literal and its datatype IRI (``xsd:string`` when none is written)."""

    value: str
    datatype: str = "http://www.w3.org/2001/XMLSchema#string"


Term = str | Literal
Graph = dict[str, dict[str, list[Term]]]


def read_turtle(text: str) -> Graph:
    """``subject -> predicate -> [objects]`` in document order; IRIs expanded."""
    graph: Graph = defaultdict(lambda: defaultdict(list))
    prefixes: dict[str, str] = {}
    tokens = _tokens(text)
    for subject, predicate, obj in _triples(tokens, prefixes):
        graph[subject][predicate].append(obj)
    return graph


def _tokens(text: str) -> list[tuple[str, Term]]:
    """Tokens; a literal's datatype stays as written until its prefix is known."""
    out: list[tuple[str, Term]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ValueError(f"unsupported Turtle at offset {pos}: {text[pos:pos + 30]!r}")
        pos = m.end()
        kind = m.lastgroup if m.lastgroup not in ("dtype", "lang") else "string"
        if kind == "ws":
            continue
        if m.group("string") is not None:
            value = m.group("string")[1:-1].encode().decode("unicode_escape")
            dtype = m.group("dtype")
            out.append(("term", Literal(value, dtype) if dtype else Literal(value)))
        elif kind in ("iri", "pname", "a"):
            out.append(("ref", m.group(kind)))
        else:
            out.append((str(kind), m.group(kind)))
    return out


def _expand(ref: str, prefixes: dict[str, str]) -> str:
    if ref == "a":
        return RDF_TYPE
    if ref.startswith("<"):
        return ref[1:-1]
    prefix, _, local = ref.partition(":")
    if prefix not in prefixes:
        raise ValueError(f"undeclared prefix {prefix!r}")
    return prefixes[prefix] + local


def _triples(tokens: list[tuple[str, Term]],
             prefixes: dict[str, str]) -> list[tuple[str, str, Term]]:
    triples: list[tuple[str, str, Term]] = []
    i = 0
    while i < len(tokens):
        if tokens[i][0] == "prefix":
            name, iri = str(tokens[i + 1][1]), str(tokens[i + 2][1])
            prefixes[name.rstrip(":")] = iri[1:-1]
            i += 4  # @prefix name: <iri> .
            continue
        subject = _ref(tokens[i], prefixes)
        i += 1
        while True:
            predicate = _ref(tokens[i], prefixes)
            i += 1
            while True:
                value = tokens[i][1]
                obj = _literal(value, prefixes) if isinstance(value, Literal) else _ref(
                    tokens[i], prefixes)
                triples.append((subject, predicate, obj))
                i += 1
                if tokens[i][1] != ",":
                    break
                i += 1
            separator = tokens[i][1]
            i += 1
            if separator == "." or (separator == ";" and tokens[i][1] == "."):
                i += separator == ";"
                break
            if separator != ";":
                raise ValueError(f"expected ';' or '.', got {separator!r}")
    return triples


def _literal(literal: Literal, prefixes: dict[str, str]) -> Literal:
    if literal.datatype.startswith("http"):
        return literal
    return Literal(literal.value, _expand(literal.datatype, prefixes))


def _ref(token: tuple[str, Term], prefixes: dict[str, str]) -> str:
    kind, value = token
    if kind != "ref":
        raise ValueError(f"expected an IRI, got {value!r}")
    return _expand(str(value), prefixes)
