"""``make deploy-check``: the deployment artefacts, checked for real on this machine.

1. ``make image`` (deploy/image.sh): podman, runc and debootstrap installed when absent, the
   Debian base built when absent, the image built.
2. A provider and a consumer, each in its own container of that image (``--network=host``,
   everything on 127.0.0.1, ``--read-only`` root file system, the participant folder as a
   volume): both become ready, then the consumer's own ``connector`` command, run inside its
   container, reads the provider's catalogue, negotiates and pulls the records; the image's
   HEALTHCHECK passes; SIGTERM stops both cleanly (exit code 0).
3. The Helm chart: ``helm lint``, ``helm template`` (helm installed with ``go install`` when
   absent), and every rendered manifest validated offline against the Kubernetes schemas
   (``kubernetes-validate``).
4. The Prometheus alert rules (``promtool check rules``, and ``promtool test rules`` on the
   series that should fire each one), the compose file's Prometheus configuration
   (``promtool check config``), the compose file and the Grafana dashboard parse; Debian's
   prometheus package is installed when absent.

Each step prints its duration; any failure exits non-zero naming the step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test harness: participants and free ports
from tests.harness import Participant, create_space, free_port  # noqa: E402

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
        capture: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), env=ENV, text=True, timeout=timeout,
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


# -- 3. Helm -----------------------------------------------------------------------------------


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


def chart() -> None:
    helm_bin = helm()
    chart_dir = ROOT / "deploy" / "helm" / "connector"
    run([helm_bin, "lint", "--strict", str(chart_dir)])
    kinds = set()
    for values in ([], [chart_dir / "ci" / "keys-values.yaml"]):
        run([helm_bin, "lint", "--strict", str(chart_dir), *[a for v in values
                                                              for a in ("-f", str(v))]])
        docs = rendered(helm_bin, chart_dir, values)
        validate(docs)
        kinds.update(str(d["kind"]) for d in docs)
    needed = {"Deployment", "Service", "Secret", "PodDisruptionBudget", "NetworkPolicy"}
    if not needed <= kinds:
        raise SystemExit(f"the chart renders {sorted(kinds)}, missing {needed - kinds}")
    log(f"   rendered and valid: {', '.join(sorted(kinds))}")


# -- 4. Prometheus rules -----------------------------------------------------------------------


def rules() -> None:
    if shutil.which("promtool") is None:
        apt_install("prometheus")
    run(["promtool", "check", "rules", str(ROOT / "deploy" / "prometheus" / "alerts.yml")])
    run(["promtool", "test", "rules", str(ROOT / "deploy" / "prometheus" / "alerts-test.yml")])
    run(["promtool", "check", "config", "--syntax-only",
         str(ROOT / "deploy" / "prometheus" / "prometheus.yml")])
    json.loads((ROOT / "deploy" / "grafana" / "connector.json").read_text())
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    if set(compose["services"]) != {"connector", "postgres", "prometheus"}:
        raise SystemExit(f"compose.yaml services: {sorted(compose['services'])}")


def main() -> int:
    t0 = time.monotonic()
    with step("image (make image)"):
        run(["bash", str(ROOT / "deploy" / "image.sh")], capture=False)
    with step("provider and consumer containers: catalogue, negotiation, pull"):
        containers()
    with step("Helm chart: lint, template, Kubernetes schemas"):
        chart()
    with step("Prometheus alert rules and configuration"):
        rules()
    log(f"deploy-check ok in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
