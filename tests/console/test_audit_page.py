"""The console's audit page: the trail verified as `connector audit verify` does, its newest
entries, and an agreement's evidence bundle exported (a POST with the CSRF token) that
verifies offline."""

from __future__ import annotations

import json

import pytest

from connector.core.audit_bundle import verify_bundle
from connector.core.errors import AuditError
from tests.console.browser_session import console_base, logged_in
from tests.managed_space import ManagedSpace

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_trail_verifies_and_a_bundle_exports(managed_space: ManagedSpace) -> None:
    base = console_base(managed_space.consumer)
    async with logged_in(managed_space.consumer) as (http, csrf):
        async with http.get(f"{base}/audit") as resp:
            html = await resp.text()
            assert resp.status == 200
        assert 'class="ok" id="audit-status"' in html and "The audit trail verifies" in html
        assert "agreement" in html  # the newest entries are listed

        data = {"csrf": csrf, "agreement": managed_space.agreement_id}
        async with http.post(f"{base}/audit/export", data=data) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Disposition"].startswith("attachment;")
            bundle = json.loads(await resp.read())
        report = verify_bundle(bundle)
        assert report.ok, report

        async with http.post(f"{base}/audit/export", data={**data, "agreement": "nope"}) as resp:
            assert resp.status == AuditError.status  # the error tree's answer, as a page
            assert "no agreement &#39;nope&#39; in the audit trail" in await resp.text()
        async with http.post(f"{base}/audit/export",
                             data={"agreement": managed_space.agreement_id}) as resp:
            assert resp.status == 403  # no CSRF token
