"""After a key rotation the running daemon publishes to its registries with the new key
(docs/key-rotation.md): once the registry has re-pinned it without the old key, a change of
the catalogue still reaches the registry."""

from __future__ import annotations

import json
import time
from pathlib import Path

from connector.participant.keys import rotate_signing_key
from connector.participant.trust import add_trusted_peer
from connector.registry.membership import join_registry
from tests.e2e.test_registry import make_registry
from tests.harness import create_space, running

DEADLINE_S = 60.0


def test_publication_follows_a_rotated_key(tmp_path: Path) -> None:
    provider, consumer = create_space(tmp_path)
    registry = make_registry(tmp_path, "registry")
    join_registry(provider.dir, registry.dir)
    join_registry(consumer.dir, registry.dir)
    registry.start()
    try:
        with running([provider, consumer]):
            rotate_signing_key(provider.dir)  # publish and activate key-2, live
            log = provider.dir / "state" / "daemon.log"
            deadline = time.monotonic() + DEADLINE_S
            while "from now on" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.2)
            # The registry re-pins the provider with key-2 only (key-1 retired there).
            pin = add_trusted_peer(registry.dir, provider.dir, attributes={}, tls_cert=None)
            data = json.loads(pin.read_text())
            assert data["attributes"] == {"membership": "active"}  # kept from the first pin
            data["keys"] = [k for k in data["keys"] if k["kid"].endswith("#key-2")]
            assert len(data["keys"]) == 1
            pin.write_text(json.dumps(data))
            # A new dataset: the provider publishes its catalogue again, signed with key-2.
            (provider.dir / "datasets" / "tides.toml").write_text(
                'id = "tides"\ntitle = "Tide gauge readings"\nkeywords = ["tides"]\n'
                'policies = ["members-only"]\n[source]\ntype = "jsonl"\n'
                'path = "data/example.jsonl"\n')
            found = consumer.cli("search", "tides")
            while "tides" not in found.stdout and time.monotonic() < deadline:
                time.sleep(0.5)
                found = consumer.cli("search", "tides")
            assert "tides" in found.stdout, (found.stdout, log.read_text()[-2000:])
    finally:
        registry.stop()
