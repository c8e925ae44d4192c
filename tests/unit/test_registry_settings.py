"""registry.toml shares the connector's endpoint settings and their checks (config.Endpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import Endpoint
from connector.core.errors import ConfigError
from connector.registry.daemon import REGISTRY_FILE, init_registry, load_registry_settings


def test_registry_settings_are_an_endpoint_with_replication(tmp_path: Path) -> None:
    init_registry(tmp_path / "r", url="https://127.0.0.1:9443", name="hub",
                  peers=["https://127.0.0.1:9444/"])
    s = load_registry_settings(tmp_path / "r")
    assert isinstance(s, Endpoint)
    assert (s.name, s.did, s.public_url, s.port) == (
        "hub", "did:web:127.0.0.1%3A9443", "https://127.0.0.1:9443", 9443)
    assert s.peers == ("https://127.0.0.1:9444",) and s.token_ttl_s == 300
    assert s.signing_key.is_absolute() and s.database == s.root / "state/registry.db"


@pytest.mark.parametrize(("edit", "match"), [
    (("[signing]\n", "[signing]\ntoken_ttl_s = 7200\n"), "token_ttl_s"),
    (('name = "hub"\n', ""), r"\[registry\].*name"),
])
def test_registry_toml_errors_name_the_key(tmp_path: Path, edit: tuple[str, str],
                                           match: str) -> None:
    init_registry(tmp_path / "r", url="https://127.0.0.1:9443", name="hub")
    path = tmp_path / "r" / REGISTRY_FILE
    path.write_text(path.read_text().replace(*edit))
    with pytest.raises(ConfigError, match=match):
        load_registry_settings(tmp_path / "r")
