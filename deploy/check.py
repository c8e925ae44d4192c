"""``make deploy-check``: the deployment artefacts, checked for real on this machine.

1. ``make image`` (deploy/image.sh): podman, runc and debootstrap installed when absent, the
   Debian base built when absent, the image built.
2. A provider and a consumer, each in its own container of that image (``--network=host``,
   everything on 127.0.0.1, ``--read-only`` root file system, the participant folder as a
   volume): both become ready, then the consumer's own ``connector`` command, run inside its
   container, reads the provider's catalogue, negotiates and pulls the records; the image's
   HEALTHCHECK passes; SIGTERM stops both cleanly (exit code 0).
3. The compose file (deploy/compose.yaml) run with Debian's ``podman-compose``: one participant
   as two replicas behind HAProxy on one PostgreSQL, Prometheus scraping both (the PostgreSQL,
   HAProxy and Prometheus images built from the Debian base, deploy/compose/images.sh). Ready
   through the balancer; a consumer (a daemon on the host) negotiates and pulls; pulls on new
   connections reach both replicas, and Prometheus's API shows the records each one served;
   one replica is killed and the next negotiation and pull still succeed; the stack comes down.
4. The Helm chart: ``helm lint``, ``helm template`` (helm installed with ``go install`` when
   absent), and every rendered manifest validated offline against the Kubernetes schemas
   (``kubernetes-validate``).
5. The Prometheus alert rules (``promtool check rules``, and ``promtool test rules`` on the
   series that should fire each one), the compose file's Prometheus configuration
   (``promtool check config``), the compose file and the Grafana dashboard parse; Debian's
   prometheus package is installed when absent.

Each step prints its duration; any failure exits non-zero naming the step.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from connector.client import Management
from connector.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test harness: participants and free ports
from tests.e2e.prometheus import Prometheus  # noqa: E402
from tests.harness import (  # noqa: E402
    Participant,
    create_space,
    free_port,
    start,
    stop,
)

IMAGE = os.environ.get("IMAGE", "localhost/connector:dev")
# helm v3, the newest release the Go module proxy serves that its maintainers approved.
HELM_MODULE = "helm.sh/helm/v3/cmd/helm@v3.21.4"
# Kubernetes version the rendered manifests are validated against (kubernetes-validate ships
# its schemas; 1.30 is the oldest release still in common managed offerings).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
UID = 10001  # the image's user (deploy/Containerfile)
IN_CONTAINER = "/srv/connector/participant"
READY_TIMEOUT_S = 90.0
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy" / "podman" / "containers.conf"),
       "DEBIAN_FRONTEND": "noninteractive"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: Sequence[str], *, timeout: float = 900, check: bool = True,
        capture: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), env=env or ENV, text=True, timeout=timeout,
                          capture_output=capture)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n"
                         f"{(done.stdout or '')[-3000:]}{(done.stderr or '')[-3000:]}")
    return done


@contextmanager
def step(title: str) -> Iterator[None]:
    t0 = time.monotonic()
    log(f"== {title}")
    try:
        yield
    except BaseException:
        log(f"== {title}: FAILED after {time.monotonic() - t0:.1f} s")
        raise
    log(f"== {title}: ok ({time.monotonic() - t0:.1f} s)")


def apt_install(*packages: str) -> None:
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    if run(install, check=False).returncode != 0:
        run(["apt-get", "update", "-qq"])
        run(install)


# -- 2. two containers -------------------------------------------------------------------------


def participants(root: Path) -> list[tuple[Participant, str]]:
    """Provider and consumer folders (as ``make demo`` makes them) with metrics ports."""
    out = []
    for participant in create_space(root):
        target = f"127.0.0.1:{free_port()}"
        with (participant.dir / "connector.toml").open("a") as f:
            f.write(f'\n[metrics]\nlisten = "{target}"\n')
        out.append((participant, target))
    return out


def wait_ready(name: str, target: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{target}/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        state = run(["podman", "inspect", "--format", "{{.State.Status}}", name], check=False)
        if state.stdout.strip() not in ("running", "created", ""):
            logs = run(["podman", "logs", name], check=False)
            raise SystemExit(f"{name} stopped: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")
        time.sleep(0.5)
    raise SystemExit(f"{name} not ready within {READY_TIMEOUT_S} s")


def rss_mib(target: str) -> float:
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("process_resident_memory_bytes "):
                return float(line.split()[1]) / 2**20
    raise SystemExit("no process_resident_memory_bytes in the metrics")


def exec_cli(name: str, *args: str) -> str:
    done = run(["podman", "exec", name, "connector", *args, "--dir", IN_CONTAINER],
               timeout=120)
    return done.stdout.strip()


def containers() -> None:
    root = Path(tempfile.mkdtemp(prefix="connector-deploy-"))
    names = []
    try:
        (provider, p_target), (consumer, c_target) = participants(root)
        for participant, target in ((provider, p_target), (consumer, c_target)):
            name = f"connector-check-{participant.name}-{os.getpid()}"
            folder = participant.dir
            run(["chown", "-R", f"{UID}:{UID}", str(folder)])
            run(["podman", "run", "-d", "--name", name, "--network=host", "--read-only",
                 "--cap-drop=all", "--security-opt=no-new-privileges",
                 "-v", f"{folder}:{IN_CONTAINER}",
                 "-v", f"{folder / 'state'}:{IN_CONTAINER}/state",
                 "-e", f"CONNECTOR_HEALTH_URL=http://{target}/health/live", IMAGE])
            names.append(name)
        for name, target in zip(names, (p_target, c_target), strict=True):
            wait_ready(name, target)
            log(f"   {name} ready, RSS {rss_mib(target):.1f} MiB")
        consumer_name = names[1]
        url = provider.url
        catalog = exec_cli(consumer_name, "catalog", url)
        assert "example-weather" in catalog, catalog
        agreement = exec_cli(consumer_name, "negotiate", url, "example-weather").split()[-1]
        log(f"   negotiated agreement {agreement}")
        out = exec_cli(consumer_name, "transfer", agreement, "--out",
                       f"{IN_CONTAINER}/state/received.jsonl")
        log(f"   {out}")
        received = consumer.dir / "state" / "received.jsonl"
        if len(received.read_text().splitlines()) != 10:
            raise SystemExit(f"expected 10 records in {received}")
        for name, target in zip(names, (p_target, c_target), strict=True):
            log(f"   {name}: RSS {rss_mib(target):.1f} MiB after the transfer")
            run(["podman", "healthcheck", "run", name])
        for name in names:
            run(["podman", "stop", "--time", "30", name])
            code = run(["podman", "inspect", "--format", "{{.State.ExitCode}}", name])
            if code.stdout.strip() != "0":
                logs = run(["podman", "logs", name], check=False)
                raise SystemExit(f"{name} exited {code.stdout.strip()}:\n{logs.stderr[-2000:]}")
    finally:
        for name in names:
            run(["podman", "rm", "-f", name], check=False)
        shutil.rmtree(root, ignore_errors=True)


# -- 3. compose: one participant, two replicas behind HAProxy, PostgreSQL, Prometheus ------------

COMPOSE = ROOT / "deploy" / "compose.yaml"
# What deploy/compose.yaml listens on (its header): all must be free before it starts.
COMPOSE_PORTS = {8443: "HAProxy", 8461: "replica1 DSP", 8462: "replica2 DSP",
                 8471: "replica1 management", 8472: "replica2 management",
                 9465: "replica1 metrics", 9466: "replica2 metrics", 5432: "PostgreSQL",
                 9090: "Prometheus"}
REPLICAS = {"replica1": "127.0.0.1:9465", "replica2": "127.0.0.1:9466"}  # service: metrics
PUBLIC_URL = "https://127.0.0.1:8443"  # the balancer; the provider's DID names it
PROMETHEUS_URL = "http://127.0.0.1:9090"
SERVED = 'sum by (instance) (connector_dataplane_records_total{direction="served"})'
PULLS = 4  # pulls on new connections: HAProxy's round robin gives each replica two
RECORDS = 10  # in the example dataset of `connector init`
STACK_TIMEOUT_S = 180.0  # PostgreSQL's first start, then the replicas (a loaded 2-core machine)


def bindable(port: int) -> bool:
    """Nothing listens on ``port``, on any address (connections of a previous run closing
    in TIME_WAIT do not count: servers bind with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


COMPOSE_IMAGES = ("POSTGRES_IMAGE", "HAPROXY_IMAGE", "PROMETHEUS_IMAGE")


def compose_images() -> dict[str, str]:
    """The environment naming the PostgreSQL, HAProxy and Prometheus images: as given (all
    three set, e.g. to the official images where a registry is reachable), else built from
    the Debian base."""
    given = {name: os.environ[name] for name in COMPOSE_IMAGES if os.environ.get(name)}
    if len(given) == len(COMPOSE_IMAGES):
        return given
    out = run(["bash", str(ROOT / "deploy" / "compose" / "images.sh")], timeout=1800).stdout
    names = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines()
                 if line.startswith("export "))
    if set(names) != set(COMPOSE_IMAGES):
        raise SystemExit(f"deploy/compose/images.sh printed {out!r}")
    return names


def answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return bool(resp.status == 200)
    except OSError:  # refused, reset, 503 (HTTPError), timeout
        return False


def cli(participant: Participant, *args: str) -> str:
    done = participant.cli(*args)
    if done.returncode != 0:
        raise SystemExit(f"connector {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout.strip()


def negotiate_and_pull(consumer: Participant, out: Path) -> str:
    """Catalogue, negotiation and pull through the balancer; the agreement id."""
    if "example-weather" not in cli(consumer, "catalog", PUBLIC_URL):
        raise SystemExit("the catalogue through the balancer lacks example-weather")
    agreement = cli(consumer, "negotiate", PUBLIC_URL, "example-weather").split()[-1]
    cli(consumer, "transfer", agreement, "--out", str(out))
    if len(out.read_text().splitlines()) != RECORDS:
        raise SystemExit(f"expected {RECORDS} records in {out}")
    return agreement


async def data_address(consumer: Participant, agreement: str) -> tuple[str, str]:
    """A new transfer of ``agreement``: its endpoint (the balancer) and bearer token."""
    api = Management(load_settings(consumer.dir))
    try:
        record = await api.call("POST", "/api/transfers?wait=30", {"agreementId": agreement})
    finally:
        await api.close()
    address = record.get("dataAddress") or {}
    token = next((p["value"] for p in address.get("endpointProperties", [])
                  if p["name"] == "authorization"), None)
    if not token or not str(address.get("endpoint", "")).startswith(PUBLIC_URL):
        raise SystemExit(f"transfer {record.get('id')}: no pull address through the balancer")
    return str(address["endpoint"]), str(token)


def pull_on_new_connections(endpoint: str, token: str, context: ssl.SSLContext) -> None:
    """PULLS pulls, each on a connection of its own (urllib does not keep connections)."""
    for _ in range(PULLS):
        request = urllib.request.Request(endpoint, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            lines = resp.read().splitlines()
        if len(lines) != RECORDS:
            raise SystemExit(f"a pull through the balancer gave {len(lines)} records")


def served_by_replica(prometheus: Prometheus) -> dict[str, float]:
    """Records each replica served, as Prometheus scraped them (by instance)."""
    try:
        result = prometheus.query(SERVED)
    except OSError:  # Prometheus not up yet
        return {}
    served = {}
    for sample in result:
        metric, value = sample["metric"], sample["value"]
        assert isinstance(metric, dict) and isinstance(value, list)
        served[str(metric["instance"])] = float(value[1])
    return served


def negotiations_answered(metrics: str) -> float:
    """Negotiations a replica took part in as provider, read from its metrics listener."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith("connector_negotiations_started_total{")
               and 'role="provider"' in line)


def wait_for(what: str, condition: Callable[[], bool], on_timeout: Callable[[], str],
             timeout: float = STACK_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout:.0f} s\n{on_timeout()}")
        time.sleep(0.5)


def compose_stack() -> None:
    if shutil.which("podman-compose") is None:
        apt_install("podman-compose")
    busy = [f"{port} ({what})" for port, what in COMPOSE_PORTS.items() if not bindable(port)]
    if busy:
        raise SystemExit(f"deploy/compose.yaml needs these ports, in use: {', '.join(busy)}")
    t0 = time.monotonic()
    images = compose_images()
    log(f"   PostgreSQL, HAProxy and Prometheus images ({time.monotonic() - t0:.1f} s)")
    root = Path(tempfile.mkdtemp(prefix="connector-compose-"))
    project = f"connector-check-{os.getpid()}"
    # Debian 12's podman-compose 1.0.3 needs this shim for network_mode: host (its header).
    shim = ROOT / "deploy" / "compose" / "podman-host-network.sh"
    compose = ["podman-compose", "--podman-path", str(shim), "-p", project, "-f", str(COMPOSE)]
    provider, consumer = create_space(root, provider_url=PUBLIC_URL)
    run(["bash", str(ROOT / "deploy" / "compose" / "prepare.sh"), str(provider.dir)])
    env = {**ENV, **images, "CONNECTOR_IMAGE": IMAGE, "PARTICIPANT_DIR": str(provider.dir)}
    context = ssl.create_default_context(cafile=str(provider.dir / "tls" / "cert.pem"))

    def logs() -> str:
        tails = []
        for service in ("postgres", *REPLICAS, "haproxy", "prometheus"):
            done = run(["podman", "logs", "--tail", "15", f"{project}_{service}_1"], check=False)
            tails.append(f"-- {service}:\n{done.stdout}{done.stderr}")
        return "\n".join(tails)

    try:
        run([*compose, "up", "-d"], env=env)
        wait_for("ready through the balancer",
                 lambda: answers(f"{PUBLIC_URL}/health/ready", context)
                 and all(answers(f"http://{m}/health/ready") for m in REPLICAS.values()), logs)
        log(f"   both replicas ready through HAProxy ({time.monotonic() - t0:.1f} s)")
        start(consumer)
        agreement = negotiate_and_pull(consumer, root / "received-1.jsonl")
        log(f"   catalogue, negotiation and pull through the balancer ({agreement}, "
            f"{time.monotonic() - t0:.1f} s)")
        endpoint, token = asyncio.run(data_address(consumer, agreement))
        pull_on_new_connections(endpoint, token, context)
        prometheus = Prometheus(PROMETHEUS_URL)
        wanted = set(REPLICAS.values())
        wait_for("Prometheus: records served by each replica",
                 lambda: wanted <= {i for i, n in served_by_replica(prometheus).items()
                                    if n >= RECORDS},
                 lambda: f"{SERVED} = {served_by_replica(prometheus)}\n{logs()}")
        log(f"   Prometheus: records served by replica {served_by_replica(prometheus)} "
            f"({time.monotonic() - t0:.1f} s)")
        log("   RSS after the pulls: " + ", ".join(
            f"{name} {rss_mib(metrics):.1f} MiB" for name, metrics in REPLICAS.items()))
        # The replica that answered the negotiation holds the consumer's kept-alive
        # connection: killing that one makes the consumer fail over, not just HAProxy.
        victim = max(REPLICAS, key=lambda name: negotiations_answered(REPLICAS[name]))
        killed = f"{project}_{victim}_1"
        run(["podman", "kill", "--signal", "KILL", killed])
        t1 = time.monotonic()
        negotiate_and_pull(consumer, root / "received-2.jsonl")
        state = run(["podman", "inspect", "--format", "{{.State.Status}}", killed]).stdout
        if answers(f"http://{REPLICAS[victim]}/health/live"):
            raise SystemExit(f"{killed} answered again before the check ended ({state})")
        log(f"   {victim} killed ({state.strip()}): the next negotiation and pull succeed "
            f"({time.monotonic() - t1:.1f} s)")
        stop(consumer)  # its kept-alive connection would hold HAProxy's soft stop
        t1 = time.monotonic()
        run([*compose, "down", "-v", "-t", "20"], env=env)
        log(f"   down ({time.monotonic() - t1:.1f} s)")
    finally:
        stop(consumer)
        leftovers = run(["podman", "ps", "-aq", "--filter",
                         f"label=io.podman.compose.project={project}"], check=False)
        for container in leftovers.stdout.split():
            run(["podman", "rm", "-f", container], check=False)
        for kind in ("volume", "network"):  # podman-compose 1.0.3 makes a network even so
            made = run(["podman", kind, "ls", "-q", "--filter",
                        f"label=io.podman.compose.project={project}"], check=False)
            for name in made.stdout.split():
                run(["podman", kind, "rm", "-f", name], check=False)
        shutil.rmtree(root, ignore_errors=True)


# -- 4. Helm -----------------------------------------------------------------------------------


def helm() -> str:
    """helm from PATH, else the one ``go install`` put in GOPATH/bin (built when absent)."""
    found = shutil.which("helm")
    if found:
        return found
    if shutil.which("go") is None and Path("/usr/local/go/bin/go").exists():
        ENV["PATH"] = f"/usr/local/go/bin:{ENV['PATH']}"
    gobin = Path(run(["go", "env", "GOPATH"]).stdout.strip()) / "bin"
    if not (gobin / "helm").exists():
        log(f"   go install {HELM_MODULE} (a few minutes the first time)")
        run(["go", "install", HELM_MODULE], timeout=1800)
    return str(gobin / "helm")


def rendered(helm_bin: str, chart: Path, values: Sequence[Path]) -> list[dict[str, object]]:
    args = [helm_bin, "template", "check", str(chart)]
    for v in values:
        args += ["-f", str(v)]
    docs = [d for d in yaml.safe_load_all(run(args).stdout) if d]
    if not docs:
        raise SystemExit("helm template rendered nothing")
    return docs


def validate(docs: Sequence[dict[str, object]]) -> None:
    import kubernetes_validate

    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise SystemExit(f"{doc.get('kind')} {doc.get('metadata')}: invalid for "
                                 f"Kubernetes {version}: {exc.message}") from None


def replicated(docs: Sequence[dict[str, Any]]) -> None:
    """The render of ci/replicas-values.yaml: two pods sharing PostgreSQL, rolled, probed on
    the health endpoints, kept by a budget that selects them, no SQLite volume."""
    by_kind = {str(d["kind"]): d for d in docs}
    deployment = by_kind["Deployment"]["spec"]
    pod = deployment["template"]
    (container,) = pod["spec"]["containers"]
    probes = {name: container[name]["httpGet"]["path"]
              for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    budget = by_kind["PodDisruptionBudget"]["spec"]
    keys = next(v for v in pod["spec"]["volumes"] if v["name"] == "keys")
    state_dsn = [item["path"] for source in keys["projected"]["sources"]
                 for item in source["secret"].get("items", [])]
    problems = [
        what for what, ok in (
            ("replicas: 2", deployment["replicas"] == 2),
            ("a rolling update", deployment["strategy"]["type"] == "RollingUpdate"),
            ("probes on /health/live and /health/ready", probes == {
                "startupProbe": "/health/live", "livenessProbe": "/health/live",
                "readinessProbe": "/health/ready"}),
            ("a budget keeping 1 of 2", budget.get("minAvailable") == 1),
            ("a budget selecting the pods", budget["selector"]["matchLabels"].items()
             <= pod["metadata"]["labels"].items()),
            ("keys/state.dsn from the DSN Secret", state_dsn == ["state.dsn"]),
            ("no PersistentVolumeClaim", "PersistentVolumeClaim" not in by_kind),
        ) if not ok]
    if problems:
        raise SystemExit(f"helm template -f ci/replicas-values.yaml: expected {problems}")


# Renders the chart must refuse, and the words its message must contain.
REFUSED = (
    (("--set", "replicaCount=2"), "needs the connector's state in PostgreSQL"),
    (("-f", "ci/replicas-values.yaml", "--set", "participant.files.connector\\.toml=x"),
     'postgres_dsn_file = "keys/state.dsn"'),
    (("-f", "ci/replicas-values.yaml", "--set", "participant.keys.data-token\\.secret=null"),
     "must share keys/data-token.secret"),
    (("-f", "ci/replicas-values.yaml", "--set", "podDisruptionBudget.minAvailable=2"),
     "would block every voluntary eviction"),
)


def chart() -> None:
    helm_bin = helm()
    chart_dir = ROOT / "deploy" / "helm" / "connector"
    kinds = set()
    for values in ([], [chart_dir / "ci" / "keys-values.yaml"],
                   [chart_dir / "ci" / "replicas-values.yaml"]):
        run([helm_bin, "lint", "--strict", str(chart_dir), *[a for v in values
                                                              for a in ("-f", str(v))]])
        docs = rendered(helm_bin, chart_dir, values)
        validate(docs)
        kinds.update(str(d["kind"]) for d in docs)
    needed = {"Deployment", "Service", "Secret", "PodDisruptionBudget", "NetworkPolicy"}
    if not needed <= kinds:
        raise SystemExit(f"the chart renders {sorted(kinds)}, missing {needed - kinds}")
    log(f"   rendered and valid: {', '.join(sorted(kinds))}")
    replicated(rendered(helm_bin, chart_dir, [chart_dir / "ci" / "replicas-values.yaml"]))
    log("   replicaCount=2: rolled, probed, budgeted, state in PostgreSQL")
    for args, words in REFUSED:
        paths = [str(chart_dir / a) if a.startswith("ci/") else a for a in args]
        done = run([helm_bin, "template", "check", str(chart_dir), *paths], check=False)
        if done.returncode == 0 or words not in done.stderr:
            raise SystemExit(f"helm template {' '.join(args)}: expected a refusal saying "
                             f"{words!r}, got ({done.returncode}) {done.stderr[-500:]}")
    log(f"   {len(REFUSED)} unsafe renders refused, each saying why")


# -- 5. Prometheus rules -----------------------------------------------------------------------


def rules() -> None:
    if shutil.which("promtool") is None:
        apt_install("prometheus")
    run(["promtool", "check", "rules", str(ROOT / "deploy" / "prometheus" / "alerts.yml")])
    run(["promtool", "test", "rules", str(ROOT / "deploy" / "prometheus" / "alerts-test.yml")])
    run(["promtool", "check", "config", "--syntax-only",
         str(ROOT / "deploy" / "prometheus" / "prometheus.yml")])
    json.loads((ROOT / "deploy" / "grafana" / "connector.json").read_text())
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    if set(compose["services"]) != {"postgres", *REPLICAS, "haproxy", "prometheus"}:
        raise SystemExit(f"compose.yaml services: {sorted(compose['services'])}")


def make_image() -> None:
    run(["bash", str(ROOT / "deploy" / "image.sh")], capture=False)


STEPS: dict[str, tuple[str, Callable[[], None]]] = {
    "image": ("image (make image)", make_image),
    "containers": ("provider and consumer containers: catalogue, negotiation, pull",
                   containers),
    "compose": ("compose: two replicas behind HAProxy, PostgreSQL, Prometheus",
                compose_stack),
    "chart": ("Helm chart: lint, template, Kubernetes schemas", chart),
    "rules": ("Prometheus alert rules and configuration", rules),
}


def main(names: Sequence[str]) -> int:
    """Every step in order, or only those named (``deploy/check.py compose chart``)."""
    unknown = set(names) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown step(s) {sorted(unknown)}; choose from {', '.join(STEPS)}")
    t0 = time.monotonic()
    for name, (title, action) in STEPS.items():
        if not names or name in names:
            with step(title):
                action()
    log(f"deploy-check ok in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
