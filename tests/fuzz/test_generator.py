"""The fuzz generator's starting points are what it claims: documents valid under the
official DSP schemas (then mutated), and the same documents for the same seed."""

from __future__ import annotations

import random

import pytest

from tests.conformance.dsp_schemas import errors
from tests.fuzz.generate import Generator, body
from tests.fuzz.test_dsp_fuzz import ROUTES

KINDS = sorted({kind for _, _, kind in ROUTES if kind is not None})


@pytest.mark.parametrize("kind", KINDS)
def test_generated_messages_match_their_official_schema(kind: str) -> None:
    g = Generator(random.Random(kind), ["urn:uuid:a", "urn:uuid:b"], "http://127.0.0.1:1/cb")
    for _ in range(100):
        doc = g.instance(kind)
        assert errors(kind, doc) == [], doc


def test_the_same_seed_gives_the_same_bodies() -> None:
    def run(seed: int) -> list[tuple[bytes, list[str]]]:
        g = Generator(random.Random(seed), ["urn:uuid:a"], "http://127.0.0.1:1/cb")
        return [body(g, kind) for kind in KINDS for _ in range(5)]

    assert run(7) == run(7) != run(8)
