"""The pages under docs/ say what the code does: their policy examples pass the check and
the YAML compiles to the JSON beside it; every setting that needs a restart is listed."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from connector.config import Settings
from connector.core.policy.check import check_policy_document, check_policy_file
from connector.core.policy.compact import compile_yaml
from connector.daemon import LIVE_SETTINGS, SETTING_NAMES

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _blocks(page: str, language: str) -> list[str]:
    text = (DOCS / page).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def test_the_policy_examples_pass_the_check_and_agree() -> None:
    document, consent_json = _blocks("policies.md", "json")
    example, grammar, consent_yaml = _blocks("policies.md", "yaml")
    assert check_policy_file(consent_yaml, "consent.yaml") == []
    assert json.loads(consent_json) in compile_yaml(consent_yaml, "c.yaml")["permission"][0][
        "constraint"]
    assert check_policy_document(document, "example.json") == []
    assert check_policy_file(example, "example.yaml") == []
    assert check_policy_file(grammar, "grammar.yaml") == []
    compiled = compile_yaml(example, "example.yaml")
    assert compiled["permission"] == json.loads(document)["permission"]


def test_the_settings_page_names_every_setting() -> None:
    text = (DOCS / "settings.md").read_text()
    live, restart = text.split("## Need a restart", 1)
    for field, name in SETTING_NAMES.items():
        assert f"`{name}`" in (live if field in LIVE_SETTINGS else restart), name
    for field in dataclasses.fields(Settings):
        assert field.name in SETTING_NAMES or field.name in ("root", "extra"), field.name


def test_every_page_is_linked_from_the_readme() -> None:
    readme = (DOCS.parent / "README.md").read_text()
    for page in ("onboarding.md", "policies.md", "settings.md", "key-rotation.md",
                 "troubleshooting.md"):
        assert f"docs/{page}" in readme, page
