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

import argparse
import json
import os
import secrets
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import edc  # noqa: E402  (interop/edc/edc.py, stdlib only)

sys.path.insert(0, str(HERE.parent / "edc-0.15"))
import ih  # noqa: E402  (interop/edc-0.15/ih.py: IdentityHub 0.15.1, stdlib only)

from connector.config import load_settings  # noqa: E402
from connector.participant.credentials import import_credential  # noqa: E402

sys.path.insert(0, str(HERE.parent / "common"))
from loopback_dcp import loopback_folder  # noqa: E402
from procs import free_port, start_until_ready, stop_proc  # noqa: E402

EDC_ID = "edc-participant"
MODES = ("iam-mock", "dcp")
STATUS_CACHE_S = 1  # ours ([identity] status_cache_s) and EDC's, in DCP mode
# What EDC asks for and grants (InteropDcpExtension's default scopes): EDC's own alias.
EDC_SCOPE_ALIAS = "org.eclipse.edc.vc.type"
EDC_DCP_SCOPES = f"{EDC_SCOPE_ALIAS}:MembershipCredential:read"
OUR_DATASET = "example-weather"
EDC_ASSET = "edc-asset-1"
EDC_RECORDS = [{"id": i, "name": f"edc-record-{i}", "value": i * 2.5} for i in range(7)]


@dataclass(frozen=True)
class Scenario:
    """What the two sides offer each other. The default is ``make interop``'s: the example
    dataset ``connector init`` writes, and seven records on EDC's side. ``examples/mobility-edc``
    brings its own (``furnish`` writes its datasets, policies and data into our folder)."""

    our_dataset: str = OUR_DATASET
    our_data: str = "example.jsonl"  # under our folder's data/
    edc_asset: str = EDC_ASSET
    edc_records: tuple[dict[str, Any], ...] = tuple(EDC_RECORDS)
    furnish: Callable[[Path], None] | None = None


DEFAULT = Scenario()


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


def reserve_base_port() -> tuple[int, list[socket.socket]]:
    """A base port b with b+1..b+6 free (EDC's six web contexts), held by bound sockets.

    Close the sockets just before EDC starts: until then no other port handed out here (our
    connector's, the wallet's, the proxies') can land in EDC's block.
    """
    for _ in range(100):
        base = free_port() - 1
        held: list[socket.socket] = []
        try:
            for off in range(1, 7):
                s = socket.socket()
                held.append(s)
                s.bind(("0.0.0.0", base + off))  # EDC's Jetty listens on every interface
            return base, held
        except OSError:
            for s in held:
                s.close()
    raise RuntimeError("no free block of 6 ports for EDC")


def make_folder(root: Path, authority: str | None = None,
                scope_alias: str | None = None) -> tuple[Path, str]:
    """Our participant folder on plain HTTP (as in make tck); DCP mode if ``authority``.

    ``scope_alias``: the alias our verifier asks with. IdentityHub grants and checks scopes as
    exact strings, so in a space of EDCs with IdentityHub it must be EDC's own."""
    folder = root / "ours"
    alias = f'scope_alias = "{scope_alias}"\n' if scope_alias else ""
    url = loopback_folder(folder, "python-connector",
                          dcp_issuers=[authority] if authority else [],
                          identity=f"status_cache_s = {STATUS_CACHE_S}\n{alias}")
    return folder, url


def start_peer(folder: Path, edc_id: str, edc_dsp: str, log: Path,
               wallet: str | None = None, credential_service: str | None = None
               ) -> subprocess.Popen[bytes]:
    dcp = ["--dcp", wallet] if wallet else []
    if credential_service:
        dcp += ["--credential-service", credential_service]
    return start_until_ready([sys.executable, str(HERE / "peer.py"), str(folder),
                              "--edc", f"{edc_id}={edc_dsp}", *dcp],
                             log, "our connector (peer.py)")


def start_wallet(root: Path, port: int, edc_dsp: str, secret: str, member: str,
                 credential: Path, log: Path,
                 edc_did: str | None = None) -> subprocess.Popen[bytes]:
    """wallet.py; with ``edc_did`` (IdentityHub is EDC's wallet) only the authority is used,
    and EDC's credential is written to ``<root>/edc-membership.jwt``."""
    external = (["--edc-did", edc_did, "--edc-credential", str(root / "edc-membership.jwt")]
                if edc_did else [])
    return start_until_ready([sys.executable, str(HERE / "wallet.py"), str(root / "wallet"),
                              "--port", str(port), "--edc-dsp", edc_dsp, "--sts-secret", secret,
                              "--member", member, "--member-credential", str(credential),
                              *external],
                             log, "the EDC wallet (wallet.py)")


def start_identityhub(steps: Steps, root: Path, edc_did: str, edc_dsp: str,
                      ih_props: dict[str, str], super_key: str) -> tuple[Any, dict[str, Any]]:
    """IdentityHub 0.15.1 as EDC's wallet: EDC's participant context (DID document with a
    CredentialService entry, P-256 key generated in IdentityHub, STS account) and its
    MembershipCredential from the authority, stored through the Identity API."""
    proc = ih.start(ih_props, root / "identityhub")
    api = ih.IdentityApi(ih_props, super_key)
    account = api.create_participant(
        edc_did, [{"type": "ProtocolEndpoint", "serviceEndpoint": edc_dsp, "id": "dsp"}])
    api.store_credential(edc_did, (root / "edc-membership.jwt").read_text().strip())
    held = [c["verifiableCredential"]["credential"]["type"] for c in api.credentials(edc_did)]
    steps.note(f"IdentityHub ready in {proc.ready_seconds:.1f} s; {edc_did} created (STS "
               f"client {account['clientId']}), credentials held: {held}")
    return proc, account


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


def evidence_bundle(folder: Path, agreement: str, name: str) -> str:
    """``connector audit export`` of an agreement made with EDC, then ``verify-bundle`` on the
    file alone; notes which of EDC's messages are unbound (its tokens carry no body digest)."""
    out = folder / "state" / f"evidence-{name}.json"
    for args in (("export", agreement, "--out", str(out), "--dir", str(folder)),
                 ("verify-bundle", str(out))):
        done = subprocess.run([sys.executable, "-m", "connector.cli", "audit", *args],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise Failed(f"audit {args[0]}: {done.stdout}{done.stderr}")
    return "\n      ".join(line.strip() for line in done.stdout.strip().splitlines())


def edc_consumes(steps: Steps, cm: edc.Mgmt, our_dsp: str, our_did: str, folder: Path,
                 sc: Scenario = DEFAULT) -> None:
    def catalogue() -> dict[str, Any]:
        doc = cm.request_catalog(our_dsp, our_did)
        datasets = as_list(doc.get("dcat:dataset") or doc.get("dataset"))
        dataset = next((d for d in datasets if d.get("@id") == sc.our_dataset), None)
        if dataset is None:
            raise Failed(f"{sc.our_dataset} not in EDC's view of our catalogue: "
                         f"{json.dumps(doc)}")
        offer = as_list(dataset.get("odrl:hasPolicy") or dataset.get("hasPolicy"))[0]
        steps.note(f"{len(datasets)} dataset(s); offer as EDC's management API shows it: "
                   f"{json.dumps(offer)}")
        return dict(offer)

    offer = steps.run("A1", "EDC requests our catalogue", catalogue)

    def negotiate() -> tuple[str, str]:
        # EDC's management API as its users call it (under {"@vocab": edc}): our plain
        # ``membership`` reaches us as ``edc:membership``, and our agreement echoes it.
        neg_id = cm.start_negotiation(our_dsp, offer, our_did, sc.our_dataset)
        neg = cm.wait_state(cm.get_negotiation, neg_id, {"FINALIZED"}, timeout=30)
        local = str(neg["contractAgreementId"])
        # EDC 0.15 stores the agreement under an id of its own; ``agreementId`` is ours (the
        # Agreement's @id on the wire). EDC 0.14 has one id for both.
        stored = cm.call("GET", f"/v3/contractagreements/{local}") or {}
        wire = str(stored.get("agreementId") or local)
        steps.note(f"EDC negotiation {neg_id} FINALIZED, agreement {wire}"
                   + (f" (EDC's own id {local})" if wire != local else ""))
        return local, wire

    agreement, wire_agreement = steps.run("A2", "EDC negotiates our offer to FINALIZED",
                                          negotiate)
    steps.note(steps.run("A2b", "our evidence bundle of that agreement verifies offline",
                         lambda: evidence_bundle(folder, wire_agreement, "A")))

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
    expected = records_of((folder / "data" / sc.our_data).read_bytes())

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
        steps.note(f"{len(got)} records, identical to data/{sc.our_data}")

    steps.run("A4", "EDC's EDR pulls the records from our data plane", pull)
    steps.run("A5", "EDC terminates the transfer",
              lambda: (cm.terminate_transfer(tp_id, "interop run finished"),
                       cm.wait_state(cm.get_transfer, tp_id, {"TERMINATED", "DEPROVISIONED"},
                                     timeout=30)))


# -- direction B: our consumer -> EDC provider -------------------------------------------------


def we_consume(steps: Steps, pm: edc.Mgmt, ours: OurMgmt, edc_dsp: str, data_url: str,
               folder: Path, sc: Scenario = DEFAULT) -> None:
    def seed() -> None:
        pm.create_asset(sc.edc_asset, data_url)
        pm.create_policy("interop-open-policy")
        pm.create_contract_definition("interop-cd", "interop-open-policy",
                                      "interop-open-policy", sc.edc_asset)

    steps.run("B1", "seed EDC: asset on a local HTTP server, open policy, contract definition",
              seed)

    def catalogue() -> None:
        doc = ours.call("GET", "/api/catalog?provider=" + urllib.parse.quote(edc_dsp, safe=""))
        ids = [d.get("@id") for d in as_list(doc.get("dataset"))]
        if sc.edc_asset not in ids:
            raise Failed(f"{sc.edc_asset} not in EDC's catalogue for us: {ids}")
        steps.note(f"EDC's catalogue for us: datasets {ids}, participantId "
                   f"{doc.get('participantId')!r}")

    steps.run("B2", "our consumer requests EDC's catalogue", catalogue)

    def negotiate() -> str:
        record = ours.call("POST", "/api/negotiations?wait=30",
                           {"provider": edc_dsp, "datasetId": sc.edc_asset}, want=201)
        if record["state"] != "FINALIZED":
            raise Failed(f"negotiation {record['id']} is {record['state']}: "
                         f"{record.get('reason')}")
        steps.note(f"our negotiation {record['id']} FINALIZED, agreement {record['agreementId']}")
        return str(record["agreementId"])

    agreement = steps.run("B3", "our consumer negotiates EDC's offer to FINALIZED", negotiate)
    steps.note(steps.run("B3b", "our evidence bundle of that agreement verifies offline",
                         lambda: evidence_bundle(folder, agreement, "B")))

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
        if got != list(sc.edc_records):
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


def dcp_props(props: dict[str, str], wallet: str, edc_did: str, authority: str,
              secret: str) -> None:
    """EDC's DCP settings: its DID, the wallet's STS, did:web over http, the trusted issuer."""
    props.update({
        "edc.participant.id": edc_did,
        "edc.iam.issuer.id": edc_did,
        "edc.iam.sts.oauth.token.url": wallet + "/edc/sts/token",
        "edc.iam.sts.oauth.client.id": edc_did,
        "edc.iam.sts.oauth.client.secret.alias": "sts-client-secret",
        "interop.vault.sts-client-secret": secret,
        "interop.dcp.scopes": EDC_DCP_SCOPES,
        "edc.iam.did.web.use.https": "false",
        "edc.iam.trusted-issuer.authority.id": authority,
        # EDC parses the status-list credential as JSON (it sends "Accept: */*" by default)
        "edc.iam.credential.revocation.mimetype": "application/vc+ld+json",
        # status lists cached for 1 s (default 15 min), so that step C2 sees a revocation
        "edc.iam.credential.revocation.cache.validity": "1000",
    })


def revocations(steps: Steps, cm: edc.Mgmt, ours: OurMgmt, wallet: str, our_dsp: str,
                our_did: str, edc_dsp: str, edc_id: str, logs: Path) -> None:
    """C: the authority revokes a member; the other side refuses it once its status cache ends."""
    def revoke(did: str) -> None:
        status, raw = http("POST", wallet + "/authority/revoke", body={"subject": did})
        if status != 200 or not json.loads(raw)["revoked"]:
            raise Failed(f"the wallet did not revoke {did}: {status} {raw[:200]!r}")
        time.sleep(STATUS_CACHE_S + 0.5)

    def edc_refused() -> None:
        revoke(edc_id)
        try:
            cm.request_catalog(our_dsp, our_did)
        except RuntimeError as exc:
            if "credential revoked" not in (logs / "peer.log").read_text():
                raise Failed("refused, but our log gives no revocation reason") from exc
            steps.note(f"EDC's management API: {str(exc)[:160]}")
            return
        raise Failed("our provider still answered EDC's catalogue request")

    steps.run("C1", "authority revokes EDC's membership; our provider refuses EDC", edc_refused)

    def json_lists_served() -> int:
        return (logs / "wallet.log").read_text().count("served as application/vc+ld+json")

    def we_are_refused() -> None:
        revoke(our_did)
        before = json_lists_served()
        try:
            ours.call("GET", "/api/catalog?provider=" + urllib.parse.quote(edc_dsp, safe=""))
        except Failed as exc:
            # EDC's answer says only "Unauthorized"; that it re-read the list is in the wallet log
            if json_lists_served() <= before:
                raise Failed("EDC refused without fetching the status list again") from exc
            steps.note(f"our management API: {str(exc)[:200]}")
            return
        raise Failed("EDC still answered our catalogue request")

    steps.run("C2", "authority revokes our membership; EDC refuses us", we_are_refused)


def edc_evidence(edc_proc: Any, root: Path) -> None:
    """After a failed direction: EDC's SEVERE and WARNING lines (each says which message it
    failed to send or refused, and why), and a copy of its log next to the captures. A
    failed run keeps its temporary directory."""
    log_path = Path(edc_proc.log_path)
    shutil.copy(log_path, root / "edc.log")
    lines = [line for line in log_path.read_text(errors="replace").splitlines()
             if "SEVERE" in line or ("WARNING" in line and "Negotiation" in line)
             or ("WARNING" in line and "TransferProcess" in line)]
    for line in lines[-20:]:
        print(f"      EDC: {line[:400]}", flush=True)


def run_mode(mode: str, root: Path, steps: Steps, version: str = "0.14",
             sc: Scenario = DEFAULT) -> dict[str, bool]:
    """One EDC participant and our connector in ``mode``; both directions. Stops everything.

    ``version`` "0.15": EDC 0.15.1 with IdentityHub 0.15.1 as its wallet (DCP mode only)."""
    dcp = mode == "dcp"
    v015 = version == "0.15"
    peer = edc_proc = data_srv = wallet_proc = ih_proc = None
    held: list[socket.socket] = []
    exchanges: list[dict[str, Any]] = []
    proxies: list[edc.LoggingProxy] = []
    ok = {"A": False, "B": False} | ({"C": False} if dcp else {})
    root.mkdir(parents=True)
    try:
        if v015:
            steps.run("0", "build EDC 0.15.1 and IdentityHub 0.15.1 (mvn, cached)",
                      lambda: (edc.build(jar=ih.EDC_JAR), edc.build(jar=ih.JAR)))
        else:
            steps.run("0", f"build EDC 0.14.1 ({mode}; mvn, cached)", lambda: edc.build(dcp=dcp))
        ih_base, ih_held = reserve_base_port() if v015 else (0, [])
        held.extend(ih_held)
        ih_props = ih.props(ih_base, ih.super_user_key(secrets.token_urlsafe(24)))
        base, edc_held = reserve_base_port()
        held.extend(edc_held)
        edc_root = f"http://127.0.0.1:{base + 4}"
        to_edc = edc.LoggingProxy("ours-to-edc", free_port(), edc_root, exchanges)
        proxies.append(to_edc)
        edc_dsp = to_edc.url + "/protocol/2025-1"
        wallet = edc_id = authority = None
        if dcp:
            wallet_port = free_port()
            wallet = f"http://127.0.0.1:{wallet_port}"
            edc_id = (ih.did_for(ih_props, "edc") if v015
                      else f"did:web:127.0.0.1%3A{wallet_port}:edc")
            authority = f"did:web:127.0.0.1%3A{wallet_port}:authority"
        folder, url = make_folder(root, authority, EDC_SCOPE_ALIAS if v015 else None)
        if sc.furnish is not None:
            sc.furnish(folder)
        settings = load_settings(folder)
        secret = secrets.token_urlsafe(16)
        if dcp:
            assert wallet is not None
            credential = root / "our-membership.jwt"
            wallet_proc = steps.run(
                "0", "start the EDC participant's wallet (DID, STS, Credential Service) and "
                "the authority",
                lambda: start_wallet(root, wallet_port, edc_dsp, secret, settings.did,
                                     credential, root / "wallet.log",
                                     edc_did=edc_id if v015 else None))
            import_credential(folder, credential)
            steps.note(f"EDC is {edc_id}; authority {authority}; our MembershipCredential "
                       "imported into credentials/")
        edc_id = edc_id or EDC_ID
        # Logging proxies: EDC -> us (its requests as consumer) and us -> EDC (our requests as
        # consumer and our callbacks as provider); every exchange lands in <tmp>/captures/.
        to_ours = edc.LoggingProxy("edc-to-ours", free_port(), url, exchanges)
        proxies.append(to_ours)
        props = edc.participant_props(edc_id, base, callback_address=to_edc.url + "/protocol")
        if dcp:
            assert wallet is not None and authority is not None
            dcp_props(props, wallet, edc_id, authority, secret)
        if v015:
            for sock in ih_held:
                sock.close()
            ih_proc, account = steps.run(
                "0", "start IdentityHub 0.15.1 (EDC's wallet); create EDC's participant "
                "context and store its MembershipCredential through the Identity API",
                lambda: start_identityhub(steps, root, edc_id, edc_dsp, ih_props,
                                          ih_props["interop.ih.superuser.key"]))
            props.update({
                "edc.iam.sts.oauth.token.url": ih.url(ih_props, "sts") + "/token",
                "edc.iam.sts.oauth.client.id": account["clientId"],
                "interop.vault.sts-client-secret": account["clientSecret"],
            })
        our_dsp_via_proxy = to_ours.url + "/dsp/2025-1"
        peer = steps.run("0", f"start our connector (peer.py, {mode} profile, plain HTTP)",
                         lambda: start_peer(folder, edc_id, edc_dsp, root / "peer.log", wallet,
                                            ih.origin(ih_props, "credentials") if v015
                                            else None))
        steps.note(f"ours: {settings.dsp_base} as {settings.did} (log {root / 'peer.log'})")
        for sock in held:
            sock.close()
        edc_proc = steps.run("0", f"start EDC participant {edc_id!r}",
                             lambda: edc.start(props, dcp=dcp,
                                               jar=ih.EDC_JAR if v015 else None))
        steps.note(f"EDC: {edc_dsp}, management {edc.management_url(props)}, ready in "
                   f"{edc_proc.ready_seconds:.1f} s, VmRSS {edc.rss_kib(edc_proc) // 1024} MiB "
                   f"(log {edc_proc.log_path})")
        data_dir = root / "edc-data"
        data_dir.mkdir()
        (data_dir / "records.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in sc.edc_records))
        data_port = free_port()
        data_srv = edc.serve_directory(data_dir, data_port)

        print(f"\n== {mode} A: EDC consumer -> our provider ==", flush=True)
        t0 = time.perf_counter()
        try:
            edc_consumes(steps, edc_proc.mgmt, our_dsp_via_proxy, settings.did, folder, sc)
            ok["A"] = True
        except Failed as exc:
            print(f"   direction A stopped at {exc}", flush=True)
            edc_evidence(edc_proc, root)
        print(f"   {mode} direction A: {'PASS' if ok['A'] else 'FAIL'} "
              f"({(time.perf_counter() - t0) * 1000:.0f} ms)", flush=True)

        print(f"\n== {mode} B: our consumer -> EDC provider ==", flush=True)
        t0 = time.perf_counter()
        try:
            we_consume(steps, edc_proc.mgmt, OurMgmt(folder), edc_dsp,
                       f"http://127.0.0.1:{data_port}/records.jsonl", folder, sc)
            ok["B"] = True
        except Failed as exc:
            print(f"   direction B stopped at {exc}", flush=True)
            edc_evidence(edc_proc, root)
        print(f"   {mode} direction B: {'PASS' if ok['B'] else 'FAIL'} "
              f"({(time.perf_counter() - t0) * 1000:.0f} ms)", flush=True)
        if dcp:
            assert wallet is not None
            print(f"\n== {mode} C: revocation, both ways ==", flush=True)
            try:
                revocations(steps, edc_proc.mgmt, OurMgmt(folder), wallet, our_dsp_via_proxy,
                            settings.did, edc_dsp, edc_id, root)
                ok["C"] = True
            except Failed as exc:
                print(f"   revocation stopped at {exc}", flush=True)
    except Failed:
        pass
    finally:
        for sock in held:
            sock.close()
        stop_proc(peer)
        stop_proc(wallet_proc)
        if ih_proc is not None:
            edc.stop(ih_proc)
        for proxy in proxies:
            proxy.close()
        if exchanges:
            edc.write_captures(exchanges, root / "captures")
            print(f"{len(exchanges)} DSP exchanges captured (kept with EDC_INTEROP_KEEP=1)")
        if edc_proc is not None:
            edc.stop(edc_proc)
        edc.stop()
        if data_srv is not None:
            data_srv.shutdown()
            data_srv.server_close()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="make interop: our connector and EDC 0.14.1")
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--edc-version", choices=("0.14", "0.15"), default="0.14",
                        help="0.15: EDC 0.15.1 with IdentityHub 0.15.1 as its wallet (DCP only)")
    args = parser.parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)
    if args.edc_version == "0.15":
        modes = ("dcp",)
    root = Path(tempfile.mkdtemp(prefix="connector-edc-interop-"))
    keep = os.environ.get("EDC_INTEROP_KEEP") == "1"
    steps = Steps()
    results: dict[str, dict[str, bool]] = {}
    t_all = time.perf_counter()
    try:
        for mode in modes:
            print(f"\n######## identity: {mode} ########", flush=True)
            results[mode] = run_mode(mode, root / mode, steps, args.edc_version)
    finally:
        keep = keep or len(results) < len(modes) or not all(
            all(r.values()) for r in results.values())
        if keep:
            print(f"kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    passed = all(all(r.values()) for r in results.values()) and len(results) == len(modes)
    names = {"A": "EDC->us", "B": "us->EDC", "C": "revocation"}
    summary = "; ".join(f"{mode}: " + ", ".join(f"{names[k]} {'PASS' if v else 'FAIL'}"
                                                for k, v in r.items())
                        for mode, r in results.items())
    print(f"\ninterop {'PASS' if passed else 'FAIL'}: {summary} "
          f"(total {time.perf_counter() - t_all:.1f} s)", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
