"""``make interop``: our connector and a real Eclipse EDC 0.14.1, both directions, end to end.

Builds EDC (``edc.build()``), creates a participant folder for us in a temporary directory
(plain HTTP on loopback), starts ``interop/edc/peer.py`` (the test-only iam-mock profile) and
one EDC participant, then:

A. EDC consumer -> our provider, driven through EDC's management API: catalogue, negotiation
   to FINALIZED, HttpData-PULL transfer, EDR, records from our data plane;
B. our consumer -> EDC provider, driven through our management API: EDC seeded with an asset
   on a local HTTP server; catalogue, negotiation to FINALIZED, transfer, records pulled
   through EDC's data plane.

Each step prints PASS/FAIL and its time. Exit 0 only if both directions pass. Every process
started here is stopped in ``finally``. ``EDC_INTEROP_KEEP=1`` keeps the temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import edc  # noqa: E402  (interop/edc/edc.py, stdlib only)

from connector.config import load_settings  # noqa: E402
from connector.demo import free_port, free_port_pair  # noqa: E402
from connector.folder import init_folder  # noqa: E402

READY_TIMEOUT_S = 20.0
EDC_ID = "edc-participant"
OUR_DATASET = "example-weather"
EDC_ASSET = "edc-asset-1"
EDC_RECORDS = [{"id": i, "name": f"edc-record-{i}", "value": i * 2.5} for i in range(7)]


class Failed(Exception):
    pass


class Steps:
    """Prints ``[A3] title ... PASS (123 ms)``; keeps (label, title, ok, ms) for the summary."""

    def __init__(self) -> None:
        self.results: list[tuple[str, str, bool, float]] = []

    def run(self, label: str, title: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:
            ms = (time.perf_counter() - t0) * 1000
            self.results.append((label, title, False, ms))
            print(f"[{label}] {title}: FAIL ({ms:.0f} ms)\n      {type(exc).__name__}: {exc}",
                  flush=True)
            raise Failed(f"{label} {title}") from exc
        ms = (time.perf_counter() - t0) * 1000
        self.results.append((label, title, True, ms))
        print(f"[{label}] {title}: PASS ({ms:.0f} ms)", flush=True)
        return value

    def note(self, text: str) -> None:
        print(f"      {text}", flush=True)


# -- processes -----------------------------------------------------------------------------------


def free_base_port() -> int:
    """A base port b with b+1..b+6 free (EDC's six web contexts)."""
    for _ in range(100):
        base = free_port() - 1
        try:
            for off in range(1, 7):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of 6 ports for EDC")


def make_folder(root: Path) -> tuple[Path, str]:
    """Our participant folder, its public URL rewritten to plain HTTP (as in make tck)."""
    port = free_port_pair()
    folder = root / "ours"
    init_folder(folder, name="python-connector", url=f"https://127.0.0.1:{port}")
    toml = folder / "connector.toml"
    toml.write_text(toml.read_text().replace(f'url = "https://127.0.0.1:{port}"',
                                             f'url = "http://127.0.0.1:{port}"'))
    return folder, f"http://127.0.0.1:{port}"


def start_peer(folder: Path, edc_dsp: str, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(HERE / "peer.py"), str(folder),
                             "--edc", f"{EDC_ID}={edc_dsp}"],
                            stdout=subprocess.PIPE, stderr=log.open("wb"))
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if b"ready" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    stop_proc(proc)
    raise RuntimeError(f"our connector (peer.py) did not start; see {log}")


def stop_proc(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# -- HTTP helpers --------------------------------------------------------------------------------


def http(method: str, url: str, *, headers: dict[str, str] | None = None,
         body: Any = None, timeout: float = 60) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})} if data else headers or {}
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class OurMgmt:
    """Our management API (loopback, Bearer token)."""

    def __init__(self, folder: Path) -> None:
        s = load_settings(folder)
        self.base = s.management_url
        self.headers = {"Authorization": f"Bearer {s.management_token()}"}

    def call(self, method: str, path: str, body: Any = None, want: int = 200) -> Any:
        status, raw = http(method, self.base + path, headers=self.headers, body=body)
        if status != want:
            raise Failed(f"{method} {path} -> {status}: {raw[:500].decode(errors='replace')}")
        return raw if path.endswith("/data") else json.loads(raw)


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def records_of(raw: bytes) -> list[Any]:
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


# -- direction A: EDC consumer -> our provider -------------------------------------------------


def start_negotiation(cm: edc.Mgmt, address: str, offer: dict[str, Any], provider_id: str,
                      target: str) -> str:
    """EDC's ContractRequest with the offer's terms exactly as our catalogue gave them.

    ``edc.Mgmt.start_negotiation`` posts under ``{"@vocab": edc}``, which turns our plain
    leftOperand ``membership`` into ``edc:membership``; EDC then finds our agreement (plain
    ``membership``) "not equal to the one in the contract offer". ``"@vocab": null`` in the
    policy's own context keeps the term as EDC read it over DSP.
    """
    policy = {k: v for k, v in offer.items() if not k.startswith("@") or k == "@id"}
    policy.update({"@context": [edc.ODRL_CONTEXT, {"@vocab": None}], "@type": "Offer",
                   "assigner": provider_id, "target": target})
    body = {"@context": edc.MGMT_CONTEXT, "@type": "ContractRequest",
            "counterPartyAddress": address, "protocol": edc.DSP_2025, "policy": policy}
    return str(cm.call("POST", "/v3/contractnegotiations", body)["@id"])


def edc_consumes(steps: Steps, cm: edc.Mgmt, our_dsp: str, our_did: str, folder: Path) -> None:
    def catalogue() -> dict[str, Any]:
        doc = cm.request_catalog(our_dsp, our_did)
        datasets = as_list(doc.get("dcat:dataset") or doc.get("dataset"))
        dataset = next((d for d in datasets if d.get("@id") == OUR_DATASET), None)
        if dataset is None:
            raise Failed(f"{OUR_DATASET} not in EDC's view of our catalogue: {json.dumps(doc)}")
        offer = as_list(dataset.get("odrl:hasPolicy") or dataset.get("hasPolicy"))[0]
        steps.note(f"{len(datasets)} dataset(s); offer as EDC's management API shows it: "
                   f"{json.dumps(offer)}")
        return dict(offer)

    offer = steps.run("A1", "EDC requests our catalogue", catalogue)

    def negotiate() -> str:
        neg_id = start_negotiation(cm, our_dsp, offer, our_did, OUR_DATASET)
        neg = cm.wait_state(cm.get_negotiation, neg_id, {"FINALIZED"}, timeout=30)
        steps.note(f"EDC negotiation {neg_id} FINALIZED, agreement {neg['contractAgreementId']}")
        return str(neg["contractAgreementId"])

    agreement = steps.run("A2", "EDC negotiates our offer to FINALIZED", negotiate)

    def transfer() -> tuple[str, dict[str, Any]]:
        tp_id = cm.start_transfer(our_dsp, agreement)
        cm.wait_state(cm.get_transfer, tp_id, {"STARTED"}, timeout=30)
        deadline = time.monotonic() + 15
        while True:
            try:
                return tp_id, cm.edr_data_address(tp_id)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    tp_id, edr_address = steps.run("A3", "EDC transfer (HttpData-PULL) STARTED, EDR received",
                                   transfer)
    endpoint = edr_address.get("endpoint") or edr_address.get(edc.EDC_VOCAB + "endpoint")
    token = edr_address.get("authorization") or edr_address.get(edc.EDC_VOCAB + "authorization")
    steps.note(f"EDR endpoint {endpoint}, authType {edr_address.get('authType')!r}, "
               f"token {len(token or '')} chars")
    expected = records_of((folder / "data" / "example.jsonl").read_bytes())

    def pull() -> None:
        if not endpoint or not token:
            raise Failed(f"EDR without endpoint or token: {json.dumps(edr_address)}")
        raw_status, _ = http("GET", endpoint, headers={"Authorization": token})
        steps.note(f"raw token (EDC's convention, no 'Bearer '): HTTP {raw_status}")
        status, raw = http("GET", endpoint, headers={"Authorization": f"Bearer {token}"})
        steps.note(f"'Bearer <token>' (our data plane's form): HTTP {status}")
        if status != 200:
            raise Failed(f"our data plane answered {status}: {raw[:300]!r}")
        got = records_of(raw)
        if got != expected:
            raise Failed(f"records differ: got {len(got)}, expected {len(expected)}")
        steps.note(f"{len(got)} records, identical to data/example.jsonl")

    steps.run("A4", "EDC's EDR pulls the records from our data plane", pull)
    steps.run("A5", "EDC terminates the transfer",
              lambda: (cm.terminate_transfer(tp_id, "interop run finished"),
                       cm.wait_state(cm.get_transfer, tp_id, {"TERMINATED", "DEPROVISIONED"},
                                     timeout=30)))


# -- direction B: our consumer -> EDC provider -------------------------------------------------


def we_consume(steps: Steps, pm: edc.Mgmt, ours: OurMgmt, edc_dsp: str, data_url: str) -> None:
    def seed() -> None:
        pm.create_asset(EDC_ASSET, data_url)
        pm.create_policy("interop-open-policy")
        pm.create_contract_definition("interop-cd", "interop-open-policy",
                                      "interop-open-policy", EDC_ASSET)

    steps.run("B1", "seed EDC: asset on a local HTTP server, open policy, contract definition",
              seed)

    def catalogue() -> None:
        doc = ours.call("GET", "/api/catalog?provider=" + urllib.parse.quote(edc_dsp, safe=""))
        ids = [d.get("@id") for d in as_list(doc.get("dataset"))]
        if EDC_ASSET not in ids:
            raise Failed(f"{EDC_ASSET} not in EDC's catalogue for us: {ids}")
        steps.note(f"EDC's catalogue for us: datasets {ids}, participantId "
                   f"{doc.get('participantId')!r}")

    steps.run("B2", "our consumer requests EDC's catalogue", catalogue)

    def negotiate() -> str:
        record = ours.call("POST", "/api/negotiations?wait=30",
                           {"provider": edc_dsp, "datasetId": EDC_ASSET}, want=201)
        if record["state"] != "FINALIZED":
            raise Failed(f"negotiation {record['id']} is {record['state']}: "
                         f"{record.get('reason')}")
        steps.note(f"our negotiation {record['id']} FINALIZED, agreement {record['agreementId']}")
        return str(record["agreementId"])

    agreement = steps.run("B3", "our consumer negotiates EDC's offer to FINALIZED", negotiate)

    def transfer() -> str:
        record = ours.call("POST", "/api/transfers?wait=30", {"agreementId": agreement},
                           want=201)
        if record["state"] != "STARTED":
            raise Failed(f"transfer {record['id']} is {record['state']}: {record.get('reason')}")
        address = record.get("dataAddress") or {}
        steps.note(f"data address endpoint {address.get('endpoint')!r}")
        return str(record["id"])

    tp_id = steps.run("B4", "our transfer STARTED by EDC", transfer)

    def pull() -> None:
        got = records_of(ours.call("GET", f"/api/transfers/{tp_id}/data"))
        if got != EDC_RECORDS:
            raise Failed(f"records differ: got {got!r}")
        steps.note(f"{len(got)} records through EDC's data plane, identical to the source")

    steps.run("B5", "our consumer pulls the records through EDC's data plane", pull)

    def completed() -> None:
        # No /summary check first: EDC's public API would proxy that path to the source.
        record = ours.call("POST", f"/api/transfers/{tp_id}/complete")
        if record["state"] != "COMPLETED":
            raise Failed(f"our transfer is {record['state']}")
        deadline = time.monotonic() + 15
        qs = {"@context": edc.MGMT_CONTEXT, "@type": "QuerySpec"}
        while True:
            states = [t["state"] for t in pm.query("/v3/transferprocesses/request", qs)
                      if t.get("type") == "PROVIDER"]
            if "COMPLETED" in states or "DEPROVISIONED" in states:
                steps.note(f"EDC's provider transfers: {states}")
                return
            if time.monotonic() > deadline:
                raise Failed(f"EDC's provider transfer states: {states}")
            time.sleep(0.2)

    steps.run("B6", "our consumer completes the transfer; EDC records it", completed)


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="connector-edc-interop-"))
    keep = os.environ.get("EDC_INTEROP_KEEP") == "1"
    steps = Steps()
    peer = edc_proc = data_srv = None
    exchanges: list[dict[str, Any]] = []
    proxies: list[edc.LoggingProxy] = []
    ok = {"A": False, "B": False}
    t_all = time.perf_counter()
    try:
        steps.run("0", "build EDC 0.14.1 (mvn, cached)", edc.build)
        base = free_base_port()
        folder, url = make_folder(root)
        settings = load_settings(folder)
        # Logging proxies: EDC -> us (its requests as consumer) and us -> EDC (our requests as
        # consumer and our callbacks as provider); every exchange lands in <tmp>/captures/.
        edc_root = f"http://127.0.0.1:{base + 4}"
        to_ours = edc.LoggingProxy("edc-to-ours", free_port(), url, exchanges)
        to_edc = edc.LoggingProxy("ours-to-edc", free_port(), edc_root, exchanges)
        proxies += [to_ours, to_edc]
        props = edc.participant_props(EDC_ID, base,
                                      callback_address=to_edc.url + "/protocol")
        edc_dsp = to_edc.url + "/protocol/2025-1"
        our_dsp_via_proxy = to_ours.url + "/dsp/2025-1"
        peer = steps.run("0", "start our connector (peer.py, iam-mock profile, plain HTTP)",
                         lambda: start_peer(folder, edc_dsp, root / "peer.log"))
        steps.note(f"ours: {settings.dsp_base} as {settings.did} (log {root / 'peer.log'})")
        edc_proc = steps.run("0", f"start EDC participant {EDC_ID!r}",
                             lambda: edc.start(props))
        steps.note(f"EDC: {edc_dsp}, management {edc.management_url(props)}, ready in "
                   f"{edc_proc.ready_seconds:.1f} s, VmRSS {edc.rss_kib(edc_proc) // 1024} MiB "
                   f"(log {edc_proc.log_path})")
        data_dir = root / "edc-data"
        data_dir.mkdir()
        (data_dir / "records.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in EDC_RECORDS))
        data_port = free_port()
        data_srv = edc.serve_directory(data_dir, data_port)

        print("\n== A: EDC consumer -> our provider ==", flush=True)
        t0 = time.perf_counter()
        try:
            edc_consumes(steps, edc_proc.mgmt, our_dsp_via_proxy, settings.did, folder)
            ok["A"] = True
        except Failed as exc:
            print(f"   direction A stopped at {exc}", flush=True)
        print(f"   direction A: {'PASS' if ok['A'] else 'FAIL'} "
              f"({(time.perf_counter() - t0) * 1000:.0f} ms)", flush=True)

        print("\n== B: our consumer -> EDC provider ==", flush=True)
        t0 = time.perf_counter()
        try:
            we_consume(steps, edc_proc.mgmt, OurMgmt(folder), edc_dsp,
                       f"http://127.0.0.1:{data_port}/records.jsonl")
            ok["B"] = True
        except Failed as exc:
            print(f"   direction B stopped at {exc}", flush=True)
        print(f"   direction B: {'PASS' if ok['B'] else 'FAIL'} "
              f"({(time.perf_counter() - t0) * 1000:.0f} ms)", flush=True)
    except Failed:
        pass
    finally:
        stop_proc(peer)
        for proxy in proxies:
            proxy.close()
        if exchanges and keep:
            edc.write_captures(exchanges, root / "captures")
            print(f"{len(exchanges)} DSP exchanges captured under {root / 'captures'}")
        elif exchanges:
            print(f"{len(exchanges)} DSP exchanges seen (EDC_INTEROP_KEEP=1 writes them to "
                  "<tmp>/captures/)")
        if edc_proc is not None:
            edc.stop(edc_proc)
        edc.stop()
        if data_srv is not None:
            data_srv.shutdown()
            data_srv.server_close()
        if keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    passed = all(ok.values())
    print(f"\ninterop {'PASS' if passed else 'FAIL'}: EDC->us {'PASS' if ok['A'] else 'FAIL'}, "
          f"us->EDC {'PASS' if ok['B'] else 'FAIL'} "
          f"(total {time.perf_counter() - t_all:.1f} s)", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
