"""The console's paged reads (``Store.page_*``), the same on both engines.

An engine says how to read one page of record bodies (``_page``: filtered, counted and ordered in
SQL, in its own dialect); the decoding and the rules (agreements have no state) live here once.
"""

from __future__ import annotations

from typing import Any

import msgspec

from connector.core.negotiation import Negotiation
from connector.core.transfer import Transfer
from connector.service.store import Agreement, ListQuery


class PagedReads:
    _neg_dec = msgspec.json.Decoder(Negotiation)
    _tr_dec = msgspec.json.Decoder(Transfer)
    _ag_dec = msgspec.json.Decoder(Agreement)

    async def _page(self, table: str, subject: str, order: str, query: ListQuery
                    ) -> tuple[int, list[Any]]:
        """(matching rows, the bodies of one page) of ``table``, newest ``order`` first."""
        raise NotImplementedError

    async def page_negotiations(self, query: ListQuery) -> tuple[int, list[Negotiation]]:
        total, bodies = await self._page("negotiations", "dataset_id", "updated_at", query)
        return total, [self._neg_dec.decode(b) for b in bodies]

    async def page_transfers(self, query: ListQuery) -> tuple[int, list[Transfer]]:
        total, bodies = await self._page("transfers", "agreement_id", "updated_at", query)
        return total, [self._tr_dec.decode(b) for b in bodies]

    async def page_agreements(self, query: ListQuery) -> tuple[int, list[Agreement]]:
        # Agreements have no state: a state filter matches none of them.
        if query.state:
            return 0, []
        total, bodies = await self._page("agreements", "dataset_id", "created_at", query)
        return total, [self._ag_dec.decode(b) for b in bodies]
