"""The store's pages for the console (``Store.page_*``, ``state_counts``) on both engines (a
real SQLite file, a real PostgreSQL database): filtered and counted in SQL, newest first, the
same records as the full lists."""

from __future__ import annotations

from connector.core.negotiation import Negotiation, NegotiationState, Role
from connector.core.transfer import Transfer, TransferState
from connector.service.store import Agreement, ListQuery
from tests.stores import Opener


def _negotiation(i: int) -> Negotiation:
    return Negotiation(
        id=f"n{i:03d}", role=Role.CONSUMER if i % 2 else Role.PROVIDER,
        state=NegotiationState.FINALIZED if i % 3 else NegotiationState.TERMINATED,
        consumer_pid=f"n{i:03d}", provider_pid=None, dataset_id=f"d{i % 4}", offer={},
        counterparty_address="https://p", counterparty_id=f"did:p{i}", created_at=i,
        updated_at=1000.0 + i)


def _transfer(i: int) -> Transfer:
    return Transfer(id=f"t{i:03d}", role=Role.CONSUMER, state=TransferState.STARTED,
                    consumer_pid=f"t{i:03d}", provider_pid=None, agreement_id=f"a{i % 2}",
                    format="HttpData-PULL", counterparty_address="https://p",
                    counterparty_id=f"did:p{i}", updated_at=float(i))


async def test_pages_filter_count_and_order_like_the_full_lists(store_opener: Opener) -> None:
    store = await store_opener.open()
    try:
        for i in range(30):
            await store.save_negotiation(_negotiation(i), expect_new=True)
        for i in range(5):
            await store.save_transfer(_transfer(i), expect_new=True)
        every = await store.list_negotiations()

        total, rows = await store.page_negotiations(ListQuery(limit=4, offset=2))
        assert total == 30
        assert [r.id for r in rows] == [r.id for r in reversed(every)][2:6]

        query = ListQuery(state="FINALIZED", role="consumer", subject="d1", limit=50)
        total, rows = await store.page_negotiations(query)
        expected = [r for r in reversed(every) if r.state is NegotiationState.FINALIZED
                    and r.role is Role.CONSUMER and r.dataset_id == "d1"]
        assert total == len(expected) > 0 and rows == expected

        assert await store.state_counts("negotiations") == {"FINALIZED": 20, "TERMINATED": 10}
        assert await store.state_counts("transfers") == {"STARTED": 5}
        total, rows = await store.page_transfers(ListQuery(subject="a1"))
        assert total == 2 and [r.id for r in rows] == ["t003", "t001"]
        assert await store.page_transfers(ListQuery(state="COMPLETED")) == (0, [])
        assert (await store.page_transfers(ListQuery(limit=0)))[0] == 5
    finally:
        await store.close()


async def test_agreements_page_newest_first(store_opener: Opener) -> None:
    store = await store_opener.open()
    try:
        for i in range(3):
            record = _negotiation(i)
            agreement = Agreement(id=f"a{i}", negotiation_id=record.id, role="provider",
                                  dataset_id=record.dataset_id, assigner="did:me",
                                  assignee="did:you", created_at=float(i), body={})
            await store.save_negotiation(record, agreement=agreement, expect_new=True)
        total, rows = await store.page_agreements(ListQuery(limit=2))
        assert total == 3 and [a.id for a in rows] == ["a2", "a1"]
        assert await store.page_agreements(ListQuery(state="FINALIZED")) == (0, [])
    finally:
        await store.close()
