"""deploy/compose.yaml and its files agree with each other, and the scripts do what they say.

`make deploy-check` runs the stack for real (deploy/check.py, step "compose"); these checks
are the fast part: deploy/compose/prepare.sh on a new participant folder, the ports each
replica gets against HAProxy's servers, Prometheus's targets and the health URLs, and the
podman shim for Debian's podman-compose.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from connector.config import Settings, load_settings
from connector.participant.init import init_folder

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
REPLICAS = ("replica1", "replica2")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("compose") / "participant"
    init_folder(folder, name="acme", url="https://connector.acme.example:8443")
    for _ in range(2):  # a second run changes nothing
        subprocess.run(["bash", str(DEPLOY / "compose" / "prepare.sh"), str(folder)],
                       check=True, capture_output=True)
    return folder


def _replica_settings(folder: Path, n: int) -> Settings:
    """The settings replica n runs with: replicas/n.toml mounted as connector.toml."""
    view = folder.parent / f"view-{n}"
    if not view.exists():
        view.mkdir()
        for entry in folder.iterdir():
            if entry.name != "connector.toml":
                (view / entry.name).symlink_to(entry)
        (view / "connector.toml").symlink_to(folder / "replicas" / f"{n}.toml")
    return load_settings(view)


def test_prepare_puts_the_state_in_postgres_with_private_keys(prepared: Path) -> None:
    settings = load_settings(prepared)
    assert settings.postgres_dsn_file == prepared / "keys" / "db.dsn"
    password = (prepared / "keys" / "postgres.password").read_text()
    assert (prepared / "keys" / "db.dsn").read_text() == (
        f"postgresql://connector:{password}@127.0.0.1:5432/connector\n")
    assert len((prepared / "keys" / "data-token.secret").read_bytes()) == 32
    for key in (prepared / "keys").iterdir():
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert settings.health.drain_s == 5
    text = (prepared / "connector.toml").read_text()
    assert text.count("postgres_dsn_file") == 1 and text.count("[health]") == 1  # idempotent


def test_each_replica_listens_on_its_own_ports_for_the_same_participant(
        prepared: Path) -> None:
    shared = load_settings(prepared)
    ports = set()
    for n in (1, 2):
        s = _replica_settings(prepared, n)
        assert s.did == shared.did and s.public_url == shared.public_url
        assert s.postgres_dsn_file is not None
        assert (s.host, s.port) == ("127.0.0.1", 8460 + n)
        assert s.management_port == 8470 + n
        assert s.metrics_listen == ("127.0.0.1", 9464 + n)
        ports |= {s.port, s.management_port}
    assert len(ports) == 4


def test_balancer_prometheus_and_health_urls_name_the_replicas_ports(prepared: Path) -> None:
    haproxy = (DEPLOY / "compose" / "haproxy.cfg").read_text()
    servers = re.findall(r"^\s*server (\S+) (\S+)", haproxy, re.M)
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    (targets,) = [c["targets"] for c in job["static_configs"]]
    public_port = load_settings(prepared).public_url.rsplit(":", 1)[1]
    assert re.search(rf"^\s*bind :{public_port}$", haproxy, re.M)  # the DID names HAProxy
    for n, name in enumerate(REPLICAS, start=1):
        s = _replica_settings(prepared, n)
        host, port = s.metrics_listen
        assert (name, f"{s.host}:{s.port}") in servers
        assert public_port not in (str(s.port), str(s.management_port), str(port))
        assert f"{host}:{port}" in targets
        service = COMPOSE["services"][name]
        assert service["environment"]["CONNECTOR_HEALTH_URL"] == (
            f"http://{host}:{port}/health/live")
        assert any(v.endswith(f"/replicas/{n}.toml:/srv/connector/participant/connector.toml:ro")
                   for v in service["volumes"])
    assert len(servers) == len(targets) == len(REPLICAS)


def test_every_service_shares_the_host_network_and_has_an_overridable_image() -> None:
    for name, service in COMPOSE["services"].items():
        assert service["network_mode"] == "host", name
        assert re.fullmatch(r"\$\{[A-Z]+_IMAGE:-[^}]+\}", service["image"]), name
    local = {path.name.split(".")[0] for path in (DEPLOY / "compose").glob("*.Containerfile")}
    assert local == {"postgres", "haproxy", "prometheus"}


def _shim(tmp_path: Path, *args: str) -> list[str]:
    """What podman receives through deploy/compose/podman-host-network.sh."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "podman"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    done = subprocess.run([str(DEPLOY / "compose" / "podman-host-network.sh"), *args],
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                          check=True, capture_output=True, text=True)
    return done.stdout.splitlines()


def test_shim_drops_the_extra_network_of_a_host_network_container(tmp_path: Path) -> None:
    host = ["run", "--name=x", "--network", "host", "-e", "A=b c", "--net", "p_default",
            "--network-alias", "x", "image", "--flag"]
    assert _shim(tmp_path, *host) == [
        "run", "--name=x", "--network", "host", "-e", "A=b c", "image", "--flag"]
    bridge = ["run", "--net", "p_default", "--network-alias", "x", "image"]
    assert _shim(tmp_path, *bridge) == bridge
