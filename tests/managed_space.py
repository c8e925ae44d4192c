"""A provider, a consumer and a registry daemon (HTTPS on loopback) for the contract and the
console tests, with one finished negotiation and one started transfer, so the lists the API
answers are not empty. The fixture ``managed_space`` is registered in tests/conftest.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from connector.client import Management
from connector.config import load_settings
from connector.registry.membership import join_registry
from tests.e2e.conftest import add_big_dataset
from tests.e2e.test_registry import Registry, make_registry
from tests.harness import Participant, create_space, start, stop


@dataclass
class ManagedSpace:
    provider: Participant
    consumer: Participant
    registry: Registry
    transfer_id: str
    agreement_id: str
    negotiation_id: str
    offer_id: str

    def management(self, who: Participant) -> tuple[str, dict[str, str]]:
        """The management API's base URL and the headers carrying its token."""
        settings = load_settings(who.dir)
        return settings.management_url, {
            "Authorization": f"Bearer {settings.management_token()}"}


async def _negotiate_and_start(space: tuple[Participant, Participant]
                               ) -> tuple[str, str, str, str]:
    provider, consumer = space
    api = Management(load_settings(consumer.dir))
    try:
        record = await api.call("POST", "/api/negotiations?wait=30",
                                {"provider": provider.url, "datasetId": "example-weather"})
        assert record["state"] == "FINALIZED", record
        transfer = await api.call("POST", "/api/transfers?wait=30",
                                  {"agreementId": record["agreementId"]})
        assert transfer["state"] == "STARTED", transfer
        return transfer["id"], record["agreementId"], record["id"], record["offer"]["@id"]
    finally:
        await api.close()


def managed_space(root: Path, *, place: Callable[[Path], None] | None = None
                  ) -> Iterator[ManagedSpace]:
    """The space under ``root`` (its daemons' state where ``place`` puts it, see
    ``create_space``), running until the generator is closed."""
    provider, consumer = create_space(root, place=place)
    add_big_dataset(provider.dir)  # long enough a pull to watch it go
    registry = make_registry(root, "registry")
    join_registry(provider.dir, registry.dir)
    join_registry(consumer.dir, registry.dir)
    registry.start()
    try:
        start(provider)
        start(consumer)
        ids = asyncio.run(_negotiate_and_start((provider, consumer)))
        yield ManagedSpace(provider, consumer, registry, *ids)
    finally:
        stop(consumer)
        stop(provider)
        registry.stop()
