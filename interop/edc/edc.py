#!/usr/bin/env python3
"""Build, run and drive a real Eclipse EDC connector (0.14.1) for DSP 2025-1 interop tests.

Standard library only (Python 3.11+). Everything listens on / talks to 127.0.0.1.

    python3 interop/edc/edc.py build       # mvn package (offline first, then online)
    python3 interop/edc/edc.py selftest    # two EDCs: catalogue -> negotiation -> transfer -> data
    python3 interop/edc/edc.py run [ID BASE_PORT]   # one participant in the foreground

The selftest puts a logging proxy between the two EDCs and writes every DSP message it sees
to interop/edc/captures/ (see README.md).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
JAR = HERE / "target" / "edc-runtime.jar"
# The same runtime with DCP identity instead of iam-mock (dcp/pom.xml, README "DCP mode").
DCP_JAR = HERE / "dcp" / "target" / "edc-dcp-runtime.jar"
RUN = HERE / "target" / "run"
CAPTURES = HERE / "captures"
BASE_PROPS = HERE / "edc.properties"
JAVA = os.environ.get("EDC_JAVA", "java")
API_KEY = "password"
DSP_2025 = "dataspace-protocol-http:2025-1"
EDC_VOCAB = "https://w3id.org/edc/v0.0.1/ns/"
MGMT_CONTEXT = {"@vocab": EDC_VOCAB}
ODRL_CONTEXT = "http://www.w3.org/ns/odrl.jsonld"
READY_RE = re.compile(r"Runtime .* ready")
# Fault injection: seconds a proxy holds back the answer to a ContractAgreementVerificationMessage
# (EDC_INTEROP_DELAY_VERIFICATION). EDC then takes our FINALIZED event for early (409) until it
# has the answer: the race of docs/interop-notes.md §7, made wide enough to see every run.
DELAY_VERIFICATION = float(os.environ.get("EDC_INTEROP_DELAY_VERIFICATION") or 0)

_started: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[edc {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- build / run


def _newest_source(project: Path) -> float:
    sources = [project / "pom.xml", *(project / "src").rglob("*")]
    return max(p.stat().st_mtime for p in sources if p.is_file())


def build(force: bool = False, dcp: bool = False, jar: Path | None = None) -> Path:
    """mvn package: offline first (uses ~/.m2), online if that fails. Returns the jar path.

    ``jar`` names another project's output (``<project>/target/<name>.jar``), such as the
    EDC 0.15.1 runtime and IdentityHub under ``interop/edc-0.15/``."""
    jar = jar or (DCP_JAR if dcp else JAR)
    project = jar.parent.parent
    pom = project / "pom.xml"
    if jar.exists() and not force and jar.stat().st_mtime >= _newest_source(project):
        return jar
    for extra in (["-o"], []):
        cmd = ["mvn", "-B", "-q", *extra, "-f", str(pom), "package"]
        log("build: " + " ".join(cmd))
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode == 0 and jar.exists():
            return jar
        log(
            f"build {'offline ' if extra else ''}failed (rc={res.returncode}): "
            f"{res.stdout[-2000:]}{res.stderr[-2000:]}"
        )
    raise RuntimeError("mvn package failed")


def load_props(path: Path = BASE_PROPS) -> dict[str, str]:
    """Tiny .properties reader (key=value, # comments, no continuation lines)."""
    props: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip()
    return props


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def ensure_keys() -> tuple[Path, Path]:
    """EC P-256 key pair for the data plane's EDR tokens (openssl), kept in target/run/keys."""
    kdir = RUN / "keys"
    priv, pub = kdir / "private.pem", kdir / "public.pem"
    if not (priv.exists() and pub.exists()):
        kdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                str(priv),
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["openssl", "pkey", "-in", str(priv), "-pubout", "-out", str(pub)],
            check=True,
            capture_output=True,
        )
    return priv, pub


def participant_props(
    participant_id: str, base_port: int, callback_address: str | None = None
) -> dict[str, str]:
    """Full configuration for one participant: edc.properties with ids and ports replaced.

    Ports: base+1 default, +2 control, +3 management, +4 protocol (DSP), +5 public (data
    plane), +6 version.
    """
    props = load_props()
    ports = {"": 1, "control.": 2, "management.": 3, "protocol.": 4, "public.": 5, "version.": 6}
    for ctx, off in ports.items():
        props[f"web.http.{ctx}port"] = str(base_port + off)
    props["edc.participant.id"] = participant_id
    protocol = f"http://127.0.0.1:{base_port + 4}{props['web.http.protocol.path']}"
    props["edc.dsp.callback.address"] = callback_address or protocol
    props["edc.control.endpoint"] = (
        f"http://127.0.0.1:{base_port + 2}{props['web.http.control.path']}"
    )
    props["edc.dataplane.api.public.baseurl"] = (
        f"http://127.0.0.1:{base_port + 5}{props['web.http.public.path']}"
    )
    priv, pub = ensure_keys()
    props["edc.iam.publickeys.dp.path"] = str(pub)
    props["private-key"] = priv.read_text()
    return props


def management_url(props: dict[str, str]) -> str:
    return (
        f"http://127.0.0.1:{props['web.http.management.port']}{props['web.http.management.path']}"
    )


def protocol_url(props: dict[str, str]) -> str:
    return f"http://127.0.0.1:{props['web.http.protocol.port']}{props['web.http.protocol.path']}"


def start(props: dict[str, str], timeout: float = 180.0, dcp: bool = False,
          jar: Path | None = None) -> subprocess.Popen:
    """Start one EDC runtime; wait until it logs 'Runtime ... ready' and management answers.

    The process gets attributes: .log_path, .props, .mgmt (Mgmt client), .ready_seconds.
    """
    jar = build(dcp=dcp, jar=jar)
    pid_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", props["edc.participant.id"])
    RUN.mkdir(parents=True, exist_ok=True)
    cfg = RUN / f"{pid_name}.properties"
    cfg.write_text("".join(f"{k}={_escape(v)}\n" for k, v in props.items()))
    log_path = RUN / f"{pid_name}.log"
    logf = open(log_path, "w")  # noqa: SIM115 - handed to the child process, closed in stop()
    cmd = [JAVA, f"-Dedc.fs.config={cfg}", "-Djava.net.preferIPv4Stack=true", "-jar", str(jar)]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    _started.append(proc)
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.props = props  # type: ignore[attr-defined]
    proc.mgmt = Mgmt(management_url(props))  # type: ignore[attr-defined]
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"EDC {pid_name} exited rc={proc.returncode}; see {log_path}:\n"
                + log_path.read_text()[-4000:]
            )
        text = log_path.read_text(errors="replace")
        if "java.net.BindException" in text:  # Jetty stays up without its port: fail now
            stop(proc)
            raise RuntimeError(f"EDC {pid_name} could not bind a port; see {log_path}")
        if READY_RE.search(text):
            try:
                proc.mgmt.query(
                    "/v3/assets/request", {"@context": MGMT_CONTEXT, "@type": "QuerySpec"}
                )
                proc.ready_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
                return proc
            except OSError:
                pass
        time.sleep(0.2)
    stop(proc)
    raise TimeoutError(f"EDC {pid_name} not ready after {timeout}s; see {log_path}")


def rss_kib(proc: subprocess.Popen) -> int:
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def stop(proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """Stop one runtime (SIGTERM, then SIGKILL), or every runtime this module started."""
    procs = [proc] if proc is not None else list(_started)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if p in _started:
            _started.remove(p)


# --------------------------------------------------------------------------- management API v3


class Mgmt:
    """Minimal client for EDC's management API v3 (header X-Api-Key)."""

    def __init__(self, base: str, api_key: str = API_KEY):
        self.base = base.rstrip("/")
        self.api_key = api_key

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"X-Api-Key": self.api_key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(
                f"{method} {path} -> {e.code}: {e.read().decode(errors='replace')}"
            ) from None
        return json.loads(raw) if raw else None

    def query(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)

    # provider side
    def create_asset(
        self, asset_id: str, base_url: str, content_type: str = "application/x-ndjson"
    ) -> Any:
        return self.call(
            "POST",
            "/v3/assets",
            {
                "@context": MGMT_CONTEXT,
                "@id": asset_id,
                "properties": {"name": asset_id, "contenttype": content_type},
                "dataAddress": {
                    "@type": "DataAddress",
                    "type": "HttpData",
                    "baseUrl": base_url,
                    "proxyPath": "true",
                    "proxyQueryParams": "true",
                },
            },
        )

    def create_policy(self, policy_id: str, permissions: list | None = None) -> Any:
        return self.call(
            "POST",
            "/v3/policydefinitions",
            {
                "@context": MGMT_CONTEXT,
                "@id": policy_id,
                "policy": {
                    "@context": ODRL_CONTEXT,
                    "@type": "Set",
                    "permission": permissions or [],
                    "prohibition": [],
                    "obligation": [],
                },
            },
        )

    def create_contract_definition(
        self, cd_id: str, access_policy: str, contract_policy: str, asset_id: str | None = None
    ) -> Any:
        selector = (
            []
            if asset_id is None
            else [
                {
                    "@type": "Criterion",
                    "operandLeft": EDC_VOCAB + "id",
                    "operator": "=",
                    "operandRight": asset_id,
                }
            ]
        )
        return self.call(
            "POST",
            "/v3/contractdefinitions",
            {
                "@context": MGMT_CONTEXT,
                "@id": cd_id,
                "accessPolicyId": access_policy,
                "contractPolicyId": contract_policy,
                "assetsSelector": selector,
            },
        )

    # consumer side
    def request_catalog(
        self, counter_party_address: str, counter_party_id: str | None = None
    ) -> Any:
        body = {
            "@context": MGMT_CONTEXT,
            "@type": "CatalogRequest",
            "counterPartyAddress": counter_party_address,
            "protocol": DSP_2025,
            "querySpec": {"offset": 0, "limit": 50},
        }
        if counter_party_id:
            body["counterPartyId"] = counter_party_id
        return self.call("POST", "/v3/catalog/request", body)

    def start_negotiation(
        self, counter_party_address: str, offer: dict, provider_id: str, asset_id: str
    ) -> str:
        policy = {k: v for k, v in offer.items() if not k.startswith("@") or k == "@id"}
        policy.update(
            {
                "@context": ODRL_CONTEXT,
                "@type": "Offer",
                "assigner": provider_id,
                "target": asset_id,
            }
        )
        res = self.call(
            "POST",
            "/v3/contractnegotiations",
            {
                "@context": MGMT_CONTEXT,
                "@type": "ContractRequest",
                "counterPartyAddress": counter_party_address,
                "protocol": DSP_2025,
                "policy": policy,
            },
        )
        return res["@id"]

    def get_negotiation(self, neg_id: str) -> Any:
        return self.call("GET", f"/v3/contractnegotiations/{neg_id}")

    def start_transfer(
        self, counter_party_address: str, agreement_id: str, transfer_type: str = "HttpData-PULL"
    ) -> str:
        res = self.call(
            "POST",
            "/v3/transferprocesses",
            {
                "@context": MGMT_CONTEXT,
                "@type": "TransferRequest",
                "counterPartyAddress": counter_party_address,
                "protocol": DSP_2025,
                "contractId": agreement_id,
                "transferType": transfer_type,
            },
        )
        return res["@id"]

    def get_transfer(self, tp_id: str) -> Any:
        return self.call("GET", f"/v3/transferprocesses/{tp_id}")

    def terminate_transfer(self, tp_id: str, reason: str = "done") -> Any:
        return self.call(
            "POST",
            f"/v3/transferprocesses/{tp_id}/terminate",
            {"@context": MGMT_CONTEXT, "@type": "TerminateTransfer", "reason": reason},
        )

    def edr_data_address(self, tp_id: str) -> Any:
        return self.call("GET", f"/v3/edrs/{tp_id}/dataaddress")

    def wait_state(self, getter, obj_id: str, want: set[str], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = getter(obj_id)
            if last.get("state") in want:
                return last
            if last.get("state") == "TERMINATED":
                raise RuntimeError(f"{obj_id} TERMINATED: {json.dumps(last)}")
            time.sleep(0.2)
        raise TimeoutError(f"{obj_id} stuck in {last and last.get('state')}: {json.dumps(last)}")


def fetch_edr(data_address: dict, path: str = "") -> bytes:
    """GET the provider's data plane public endpoint with the EDR token (raw, no Bearer prefix)."""
    endpoint = data_address.get("endpoint") or data_address.get(EDC_VOCAB + "endpoint")
    token = data_address.get("authorization") or data_address.get(EDC_VOCAB + "authorization")
    req = urllib.request.Request(endpoint.rstrip("/") + path, headers={"Authorization": token})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


# ------------------------------------------------------------- logging proxy + data server


class LoggingProxy:
    """HTTP forwarder on 127.0.0.1:<port> -> target base URL, recording every exchange."""

    def __init__(self, name: str, port: int, target: str, sink: list):
        self.name, self.target, self.sink = name, target.rstrip("/"), sink
        self.delay_verification = DELAY_VERIFICATION
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection", "accept-encoding")
                }
                req = urllib.request.Request(
                    proxy.target + self.path,
                    data=body or None,
                    method=self.command,
                    headers=headers,
                )
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        status, rhead, rbody = resp.status, dict(resp.headers.items()), resp.read()
                except urllib.error.HTTPError as e:
                    status, rhead, rbody = e.code, dict(e.headers.items()), e.read()
                except OSError as e:
                    status, rhead, rbody = 502, {}, str(e).encode()
                proxy.sink.append(
                    {
                        "via": proxy.name,
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": _json_or_text(body),
                        "status": status,
                        "response_headers": rhead,
                        "response_body": _json_or_text(rbody),
                        "time": time.time(),
                    }
                )
                if proxy.delay_verification and self.path.endswith("/agreement/verification"):
                    time.sleep(proxy.delay_verification)  # see DELAY_VERIFICATION
                self.send_response(status)
                for k, v in rhead.items():
                    if k.lower() not in (
                        "transfer-encoding",
                        "connection",
                        "content-length",
                        "server",
                        "date",
                    ):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(rbody)))
                self.end_headers()
                self.wfile.write(rbody)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _json_or_text(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def serve_directory(directory: Path, port: int) -> http.server.ThreadingHTTPServer:
    """python http.server for the asset's backing data, on 127.0.0.1."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[assignment]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# ------------------------------------------------ probes: EDC as provider, us as caller


def iam_mock_token(client_id: str, audience: str = "any", region: str = "any") -> str:
    """The Authorization value EDC's iam-mock accepts: a JSON object serialised as a string."""
    return json.dumps({"region": region, "audience": audience, "clientId": client_id})


def dsp_call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    authorization: str | None = None,
    label: str | None = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    if label:
        headers["X-Probe"] = label  # only for naming the capture file; EDC ignores it
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, _json_or_text(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, _json_or_text(e.read())


DSP_CONTEXT = ["https://w3id.org/dspace/2025/1/context.jsonld"]


def probe_provider(
    base: str, consumer_id: str, provider_pid_cn: str, provider_pid_tp: str
) -> list[tuple[str, int]]:
    """Call EDC's DSP endpoints the way our connector would, with several Authorization forms.

    base is the provider's DSP base *without* /2025-1 (e.g. http://127.0.0.1:19383/protocol).
    Returns (label, status) pairs; the exchanges are captured by the proxy in front of `base`.
    """
    v = base + "/2025-1"
    ok = iam_mock_token("python-connector")
    cat = {"@context": DSP_CONTEXT, "@type": "CatalogRequestMessage"}
    cat_empty_filter = dict(cat, filter=[])
    probes = [
        ("version_noauth", base, "GET", "/.well-known/dspace-version", None, None),
        ("catalog_iammock-json", v, "POST", "/catalog/request", cat, ok),
        ("catalog_iammock-json_empty-filter", v, "POST", "/catalog/request", cat_empty_filter, ok),
        ("catalog_no-authorization", v, "POST", "/catalog/request", cat, None),
        ("catalog_bearer-prefixed-json", v, "POST", "/catalog/request", cat, "Bearer " + ok),
        ("catalog_opaque-token", v, "POST", "/catalog/request", cat, "not-json"),
        (
            "catalog_json-clientId-only",
            v,
            "POST",
            "/catalog/request",
            cat,
            json.dumps({"clientId": "x"}),
        ),
        (
            "catalog_faulty-clientId",
            v,
            "POST",
            "/catalog/request",
            cat,
            iam_mock_token("faultyClientId"),
        ),
        ("dataset_asset-1", v, "GET", "/catalog/datasets/asset-1", None, ok),
        (
            "negotiation_get_as-consumer",
            v,
            "GET",
            f"/negotiations/{provider_pid_cn}",
            None,
            iam_mock_token(consumer_id),
        ),
        (
            "negotiation_get_as-other-participant",
            v,
            "GET",
            f"/negotiations/{provider_pid_cn}",
            None,
            iam_mock_token("intruder"),
        ),
        (
            "transfer_get_as-consumer",
            v,
            "GET",
            f"/transfers/{provider_pid_tp}",
            None,
            iam_mock_token(consumer_id),
        ),
    ]
    results = []
    for label, b, method, path, body, auth in probes:
        status = dsp_call(b, method, path, body, auth, label=label)[0]
        results.append((label, status))
        log(f"probe {label}: HTTP {status}")
    return results


# --------------------------------------------------------------------------- captures


def _message_type(ex: dict) -> str:
    body = ex.get("body")
    if isinstance(body, dict) and isinstance(body.get("@type"), str):
        return body["@type"].split(":")[-1]
    return "none"


def neg_provider_pid(exchanges: list[dict]) -> str:
    return next(
        e["response_body"]["providerPid"]
        for e in exchanges
        if _message_type(e) == "ContractRequestMessage"
    )


def write_captures(exchanges: list[dict], directory: Path = CAPTURES) -> list[Path]:
    """One JSON file per DSP exchange, numbered in order, named after direction and message type."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    written = []
    for i, ex in enumerate(sorted(exchanges, key=lambda e: e["time"]), 1):
        mtype = _message_type(ex)
        if ex["via"].startswith("probe"):
            mtype = "probe_" + ex["headers"].get("X-Probe", "unnamed")
        elif mtype == "none":
            mtype = (
                ex["method"].lower()
                + "_"
                + re.sub(r"[^a-zA-Z0-9]+", "-", ex["path"]).strip("-")[-40:]
            )
        path = directory / f"{i:02d}_{ex['via']}_{mtype}.json"
        ex = {k: v for k, v in ex.items() if k != "time"}
        path.write_text(json.dumps(ex, indent=2, sort_keys=False) + "\n")
        written.append(path)
    return written


# --------------------------------------------------------------------------- selftest


def selftest(capture: bool = True) -> int:
    build()
    data_dir = RUN / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    records = [{"id": i, "name": f"record-{i}", "value": i * 1.5} for i in range(5)]
    (data_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    exchanges: list[dict] = []
    data_srv = proxy_to_provider = proxy_to_consumer = probe_proxy = None
    provider = consumer = None
    try:
        data_srv = serve_directory(data_dir, 19380)
        log("data server: http://127.0.0.1:19380/records.jsonl")
        # consumer -> provider DSP traffic goes through :19381,
        # provider -> consumer callbacks through :19382
        provider_props = participant_props("provider", 19190)
        consumer_props = participant_props(
            "consumer", 19290, callback_address="http://127.0.0.1:19382/protocol"
        )
        proxy_to_provider = LoggingProxy("to-provider", 19381, "http://127.0.0.1:19194", exchanges)
        proxy_to_consumer = LoggingProxy("to-consumer", 19382, "http://127.0.0.1:19294", exchanges)
        probe_proxy = LoggingProxy("probe-to-provider", 19383, "http://127.0.0.1:19194", exchanges)

        t0 = time.monotonic()
        provider = start(provider_props)
        log(
            f"provider ready in {provider.ready_seconds:.1f}s, "
            f"VmRSS {rss_kib(provider) // 1024} MiB"
        )
        consumer = start(consumer_props)
        log(
            f"consumer ready in {consumer.ready_seconds:.1f}s, "
            f"VmRSS {rss_kib(consumer) // 1024} MiB"
        )
        pm, cm = provider.mgmt, consumer.mgmt

        pm.create_asset("asset-1", "http://127.0.0.1:19380/records.jsonl")
        pm.create_policy("open-policy")
        pm.create_contract_definition("cd-1", "open-policy", "open-policy", "asset-1")
        log("provider seeded: asset-1 (HttpData -> records.jsonl), open-policy, cd-1")

        provider_dsp = proxy_to_provider.url + "/protocol/2025-1"
        catalog = cm.request_catalog(provider_dsp, "provider")
        datasets = catalog.get("dcat:dataset") or catalog.get("dataset")
        datasets = datasets if isinstance(datasets, list) else [datasets]
        dataset = next(d for d in datasets if d.get("@id") == "asset-1")
        offer = dataset.get("odrl:hasPolicy") or dataset.get("hasPolicy")
        offer = offer[0] if isinstance(offer, list) else offer
        log(f"catalogue: {len(datasets)} dataset(s); offer {offer['@id']}")

        neg_id = cm.start_negotiation(provider_dsp, offer, "provider", "asset-1")
        log(f"negotiation {neg_id} started")
        neg = cm.wait_state(cm.get_negotiation, neg_id, {"FINALIZED"})
        agreement = neg["contractAgreementId"]
        log(f"negotiation FINALIZED, agreement {agreement}")

        tp_id = cm.start_transfer(provider_dsp, agreement)
        log(f"transfer {tp_id} requested (HttpData-PULL)")
        tp = cm.wait_state(cm.get_transfer, tp_id, {"STARTED"})
        log(f"transfer {tp['state']}")
        edr = None
        deadline = time.monotonic() + 30
        while edr is None:
            try:
                edr = cm.edr_data_address(tp_id)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        log(f"EDR endpoint {edr.get('endpoint')}")
        raw = fetch_edr(edr)
        got = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        assert got == records, f"records differ: {got!r}"
        log(f"records received: {len(got)} (match the source)")

        provider_cn = neg_provider_pid(exchanges)
        provider_tp = next(
            e["response_body"]["providerPid"]
            for e in exchanges
            if _message_type(e) == "TransferRequestMessage"
        )
        probe_provider(probe_proxy.url + "/protocol", "consumer", provider_cn, provider_tp)

        cm.terminate_transfer(tp_id, "selftest finished")
        deadline = time.monotonic() + 30
        qs = {"@context": MGMT_CONTEXT, "@type": "QuerySpec"}
        while time.monotonic() < deadline:
            states = (
                cm.get_transfer(tp_id)["state"],
                [t["state"] for t in pm.query("/v3/transferprocesses/request", qs)],
            )
            done = {"TERMINATED", "DEPROVISIONED"}
            if states[0] in done and states[1] and all(st in done for st in states[1]):
                break
            time.sleep(0.2)
        log(f"transfer terminated by the consumer: consumer {states[0]}, provider {states[1]}")
        log(
            f"RSS after flow: provider {rss_kib(provider) // 1024} MiB, "
            f"consumer {rss_kib(consumer) // 1024} MiB"
        )
        log(f"flow (start of both runtimes -> records) took {time.monotonic() - t0:.1f}s")
        if capture:
            files = write_captures(exchanges)
            log(
                f"{len(files)} DSP exchanges captured under "
                f"{CAPTURES.relative_to(HERE.parent.parent)}/"
            )
            for f in files:
                print("   ", f.name)
        log("SELFTEST OK")
        return 0
    finally:
        stop()
        for srv in (proxy_to_provider, proxy_to_consumer, probe_proxy):
            if srv:
                srv.close()
        if data_srv:
            data_srv.shutdown()
            data_srv.server_close()


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "selftest"
    if cmd == "build":
        print(build(force=True))
        return 0
    if cmd == "selftest":
        return selftest()
    if cmd == "run":
        pid = argv[2] if len(argv) > 2 else "provider"
        base = int(argv[3]) if len(argv) > 3 else 19190
        proc = start(participant_props(pid, base))
        log(
            f"{pid} ready in {proc.ready_seconds:.1f}s; management {management_url(proc.props)}, "
            f"DSP {protocol_url(proc.props)}/2025-1; log {proc.log_path}; Ctrl-C stops"
        )
        try:
            proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
