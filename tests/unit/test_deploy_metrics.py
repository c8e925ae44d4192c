"""The alert rules and the Grafana dashboard in deploy/ name only series the daemon exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from connector.adapters.http.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAME = re.compile(r"\b(?:connector|process)_[a-z_]+\b")
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def exported() -> set[str]:
    """Every sample name the exposition can hold (series appear once labels are used)."""
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES)
    return names


def expressions() -> dict[str, list[str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    dashboard = json.loads((DEPLOY / "grafana" / "connector.json").read_text())
    return {
        "alerts.yml": [r["expr"] for g in rules["groups"] for r in g["rules"]],
        "connector.json": [t["expr"] for p in dashboard["panels"] for t in p["targets"]],
    }


def test_alerts_and_dashboard_use_exported_series_only() -> None:
    names = exported()
    for where, exprs in expressions().items():
        used = {n for e in exprs for n in NAME.findall(e)}
        assert used, where
        assert used <= names, f"{where} names unknown series: {sorted(used - names)}"


def test_the_issue_s_alerts_are_all_there() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"ConnectorOutboxStuck", "ConnectorRefusedTokensRising",
            "ConnectorCertificateExpiring", "ConnectorPolicyDenialRate"} <= alerts
