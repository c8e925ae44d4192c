"""The test-only TCK profile: a connector the DSP TCK can drive. Never for production.

It lives outside the installed package on purpose: nothing in ``connector`` reads or imports
it, so no ``connector.toml`` can switch it on. ``interop/tck/run.py`` starts it as
``python interop/tck/profile.py DIR --authorization VALUE`` against a folder made for the run.

What it adds to a normal daemon (interop/tck/README.md §5 is the per-test specification):
- the TCK identifies itself only by a static ``Authorization`` value: that value, and nothing
  else, is accepted as the participant ``TCK_PARTICIPANT``;
- seeded datasets (CAT0101, CAT0102, ACN0101…ACN0304 with offers ``CD123:<id>:456``) and
  finalised agreements (ATP… as provider, ATPC… as consumer);
- the two initiation webhooks under ``/tck/``;
- scripted reactions per dataset or agreement id instead of the automatic ones;
- plain HTTP on loopback (the TCK's client trusts no self-signed certificate).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from connector.config import load_settings
from connector.core.catalog import DatasetEntry, Offer
from connector.core.errors import AuthError, ConnectorError
from connector.core.negotiation import Negotiation, NegotiationEvent, NegotiationState, Role
from connector.core.transfer import Transfer, TransferEvent
from connector.daemon import Daemon, FolderState
from connector.service.auth import Verifier
from connector.service.catalog import Catalog, Claims
from connector.service.store import Agreement
from connector.signals import until_signalled

log = logging.getLogger("connector.tck")
TCK = "TCK_PARTICIPANT"
OPEN = {"permission": [{"action": "use"}]}
FORMAT = "HttpData-PULL"

N, T = NegotiationEvent, TransferEvent
NEW = "NEW"  # the trigger of a process we just created
Script = Sequence[tuple[float, Any]]  # (delay in seconds, event), run in order

# CN, connector as provider: triggers are the creation (NEW) and states inbound messages produce.
PROVIDER_CN: dict[str, dict[str, Script]] = {
    "ACN0101": {NEW: [(0.05, N.OFFER)]},
    "ACN0102": {NEW: [(0.05, N.OFFER)], "REQUESTED": [(0.05, N.TERMINATE)]},
    "ACN0103": {NEW: [(0.05, N.OFFER)], "ACCEPTED": [(0.05, N.AGREE)],
                "VERIFIED": [(0.05, N.FINALIZE)]},
    "ACN0104": {NEW: [(0.05, N.AGREE)], "VERIFIED": [(0.05, N.FINALIZE)]},
    "ACN0201": {NEW: [(0.05, N.TERMINATE)]},
    "ACN0202": {},
    "ACN0203": {NEW: [(0.05, N.AGREE)]},
    "ACN0204": {NEW: [(0.05, N.OFFER)]},
    "ACN0205": {NEW: [(0.05, N.OFFER), (0.3, N.TERMINATE)]},
    "ACN0206": {NEW: [(0.05, N.OFFER)], "ACCEPTED": [(0.05, N.TERMINATE)]},
    "ACN0207": {NEW: [(0.05, N.AGREE)], "VERIFIED": [(0.05, N.TERMINATE)]},
    "ACN0301": {NEW: [(0.05, N.AGREE)], "VERIFIED": [(0.05, N.FINALIZE)]},
    "ACN0302": {NEW: [(0.05, N.OFFER)]},
    "ACN0303": {NEW: [(0.05, N.OFFER)]},
    "ACN0304": {NEW: [(0.05, N.OFFER)]},
}
# CN_C, connector as consumer.
CONSUMER_CN: dict[str, dict[str, Script]] = {
    "ACNC0101": {"OFFERED": [(0.05, N.ACCEPT)], "AGREED": [(0.05, N.VERIFY)]},
    "ACNC0102": {"OFFERED": [(0.05, N.REQUEST)]},
    "ACNC0103": {"OFFERED": [(0.05, N.TERMINATE)]},
    "ACNC0104": {"AGREED": [(0.05, N.VERIFY)]},
    "ACNC0202": {NEW: [(0.2, N.TERMINATE)]},
    "ACNC0203": {"AGREED": [(0.05, N.TERMINATE)]},
    "ACNC0205": {"OFFERED": [(0.05, N.ACCEPT)]},
    "ACNC0206": {"AGREED": [(0.05, N.VERIFY)]},
    "ACNC0304": {"OFFERED": [(0.05, N.ACCEPT)]},
    "ACNC0305": {"OFFERED": [(0.05, N.ACCEPT)]},
    "ACNC0306": {"OFFERED": [(0.05, N.ACCEPT)]},
}
# TP, connector as provider, by agreement id.
_S = 0.3  # spacing of a provider's successive messages (the TCK registers each step's handler)
PROVIDER_TP: dict[str, dict[str, Script]] = {
    "ATP0101": {NEW: [(0.05, T.START), (_S, T.TERMINATE)]},
    "ATP0102": {NEW: [(0.05, T.START), (_S, T.COMPLETE)]},
    "ATP0103": {NEW: [(0.05, T.START), (_S, T.SUSPEND), (_S, T.TERMINATE)]},
    "ATP0104": {NEW: [(0.05, T.START), (_S, T.SUSPEND), (_S, T.START), (_S, T.COMPLETE)]},
    "ATP0105": {NEW: [(0.05, T.TERMINATE)]},
    **{f"ATP020{i}": {NEW: [(0.05, T.START)]} for i in (1, 2, 3, 4)},
    **{f"ATP030{i}": {NEW: [(0.05, T.START)]} for i in (3, 4, 5, 6)},
}
# TP_C, connector as consumer, by agreement id.
CONSUMER_TP: dict[str, dict[str, Script]] = {
    "ATPC0201": {"STARTED": [(0.05, T.TERMINATE)]},
    "ATPC0202": {"STARTED": [(0.05, T.COMPLETE)]},
    "ATPC0203": {"STARTED": [(0.05, T.SUSPEND), (_S, T.TERMINATE)]},
    "ATPC0205": {NEW: [(0.2, T.TERMINATE)]},
}

CATALOG_IDS = ("CAT0101", "CAT0102")
PROVIDER_AGREEMENTS = [f"ATP0{g}0{i}" for g, n in ((1, 5), (2, 5), (3, 6)) for i in range(1, n + 1)]
CONSUMER_AGREEMENTS = [a.replace("ATP", "ATPC") for a in PROVIDER_AGREEMENTS]


def seeded_catalog(did: str, dsp_base: str) -> Catalog:
    """CAT0101, CAT0102 and the ACN datasets, each with one open offer."""
    entries = []
    for ds in (*CATALOG_IDS, *PROVIDER_CN):
        offer_id = f"CD123:{ds}:456" if ds.startswith("ACN") else f"offer-{ds}"
        offer = Offer(id=offer_id, dataset_id=ds, policy_name="open", policy=OPEN)
        entries.append(DatasetEntry(id=ds, title=f"TCK dataset {ds}", description="",
                                    keywords=("tck",), format=FORMAT, offers=(offer,)))
    return Catalog(entries, participant_id=did, dsp_base=dsp_base, clock=time.time)


class StaticTokenVerifier(Verifier):
    """Accepts exactly the TCK's configured Authorization value, as TCK_PARTICIPANT."""

    def __init__(self, authorization: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._authorization = authorization.encode()

    def verify(self, authorization: str | None) -> Claims:
        if authorization is None or not hmac.compare_digest(authorization.encode(),
                                                            self._authorization):
            raise AuthError("not the TCK's authorization")
        return Claims(participant_id=TCK, attributes={})


class TckDaemon(Daemon):
    def __init__(self, root: Path, authorization: str) -> None:
        # Plain HTTP on loopback: the TCK's client trusts no self-signed certificate. Not
        # automatic: the TCK drives every step itself.
        super().__init__(load_settings(root), tls=False, automatic=False,
                         extra_routes=self._add_webhooks)
        s = self.settings
        self.verifier = StaticTokenVerifier(authorization, did=s.did, peers={},
                                            leeway_s=s.clock_leeway_s, clock=time.time)
        self.folder = FolderState(peers={}, datasets={},
                                  catalog=seeded_catalog(s.did, s.dsp_base))
        self._tasks_running: set[asyncio.Task[None]] = set()

    async def _reload_loop(self) -> None:
        return None  # the seeded catalogue is fixed for the run

    async def start(self) -> None:
        await super().start()
        self.negotiations.listeners.append(self._on_negotiation)
        self.transfers.listeners.append(self._on_transfer)
        await self._seed_agreements()

    def _add_webhooks(self, app: web.Application) -> None:
        app.router.add_post("/tck/negotiations/requests", self._negotiation_webhook)
        app.router.add_post("/tck/transfers/requests", self._transfer_webhook)

    async def _seed_agreements(self) -> None:
        now = time.time()
        for ids, role in ((PROVIDER_AGREEMENTS, Role.PROVIDER),
                          (CONSUMER_AGREEMENTS, Role.CONSUMER)):
            for agreement_id in ids:
                me, them = self.settings.did, TCK
                assigner, assignee = (me, them) if role is Role.PROVIDER else (them, me)
                nid = f"urn:tck:negotiation:{agreement_id}"
                body = {"@id": agreement_id, "@type": "Agreement", "target": "CAT0101",
                        "assigner": assigner, "assignee": assignee, **OPEN}
                record = Negotiation(
                    id=nid, role=role, state=NegotiationState.FINALIZED, consumer_pid=nid,
                    provider_pid=nid, dataset_id="CAT0101", offer=body,
                    counterparty_address="http://unused", counterparty_id=TCK, agreement=body,
                    created_at=now, updated_at=now)
                agreement = Agreement(id=agreement_id, negotiation_id=nid, role=role.value,
                                      dataset_id="CAT0101", assigner=assigner,
                                      assignee=assignee, created_at=now, body=body)
                await self.store.save_negotiation(record, agreement=agreement, expect_new=True)

    # -- webhooks -------------------------------------------------------------------------------

    async def _negotiation_webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        offer = {"@id": body["offerId"], "@type": "Offer", "assigner": TCK, **OPEN}
        record = await self.negotiations.start(
            provider_base=body["connectorAddress"], provider_id=TCK,
            dataset_id=body["datasetId"], offer=offer)
        return web.json_response({"consumerPid": record.consumer_pid})

    async def _transfer_webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        record = await self.transfers.start(body["agreementId"],
                                            provider_base=body["connectorAddress"],
                                            provider_id=TCK, format=body.get("format", FORMAT))
        return web.json_response({"consumerPid": record.consumer_pid})

    # -- scripted reactions -----------------------------------------------------------------------

    def _run(self, script: Script, act: Callable[[Any], Any]) -> None:
        async def go() -> None:
            for delay, event in script:
                await asyncio.sleep(delay)
                try:
                    await act(event)
                except ConnectorError as exc:
                    log.warning("scripted %s refused: %s", event, exc.message)
                    return
        task = asyncio.create_task(go())
        self._tasks_running.add(task)
        task.add_done_callback(self._tasks_running.discard)

    def _on_negotiation(self, record: Negotiation, new: bool) -> None:
        table = PROVIDER_CN if record.role is Role.PROVIDER else CONSUMER_CN
        script = table.get(record.dataset_id, {}).get(NEW if new else record.state.value)
        if script:
            self._run(script, lambda e: self.negotiations.act(record.id, e))

    def _on_transfer(self, record: Transfer, new: bool) -> None:
        table = PROVIDER_TP if record.role is Role.PROVIDER else CONSUMER_TP
        script = table.get(record.agreement_id, {}).get(NEW if new else record.state.value)
        if script:
            self._run(script, lambda e: self.transfers.act(record.id, e))


async def serve(root: Path, authorization: str) -> None:
    daemon = TckDaemon(root, authorization)
    await daemon.start()
    await until_signalled(f"tck profile ready: {daemon.settings.public_url}")
    await daemon.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--authorization", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.dir, args.authorization))
    return 0


if __name__ == "__main__":
    sys.exit(main())

