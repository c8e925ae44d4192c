"""Policies are files in git: an edit takes effect without a restart; agreements stay as made."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from connector.client import Management
from connector.config import load_settings
from tests.harness import create_space, running


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.asyncio
async def test_policy_edit_applies_to_new_negotiations_only(tmp_path: Path) -> None:
    provider, consumer = create_space(tmp_path)
    _git(provider.dir, "init", "-q")
    _git(provider.dir, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    _git(provider.dir, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1")
    first_commit = _git(provider.dir, "rev-parse", "HEAD")
    with running([provider, consumer]):
        api = Management(load_settings(consumer.dir))
        papi = Management(load_settings(provider.dir))
        try:
            before = await api.call("POST", "/api/negotiations?wait=10",
                                    {"provider": provider.url, "datasetId": "example-weather"})
            assert before["state"] == "FINALIZED"
            # Edit the policy: members must now also be "gold". No restart.
            path = provider.dir / "policies" / "members-only.json"
            policy = json.loads(path.read_text())
            policy["permission"][0]["constraint"][0]["rightOperand"] = "gold"
            path.write_text(json.dumps(policy))
            for _ in range(50):  # the daemon polls the folder once a second
                await asyncio.sleep(0.2)
                doc = await api.call("GET", f"/api/catalog?provider={provider.url}")
                if "dataset" not in doc:
                    break
            assert "dataset" not in doc  # the consumer is no gold member: the offer is hidden
            agreements = {a["id"]: a for a in await papi.call("GET", "/api/agreements")}
            old = agreements[before["agreementId"]]
            assert old["body"]["permission"][0]["constraint"][0]["rightOperand"] == "active"
            assert old["policyCommit"] == first_commit  # made under the committed v1 file
            # The agreement made before the edit still opens the data.
            transfer = await api.call("POST", "/api/transfers?wait=10",
                                      {"agreementId": before["agreementId"]})
            assert transfer["state"] == "STARTED"
            summary = await api.call("GET", f"/api/transfers/{transfer['id']}/summary")
            assert summary["records"] == 10
        finally:
            await api.close()
            await papi.close()
