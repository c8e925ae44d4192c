"""The participant's side of the witness: send signed audit checkpoints to the registries, and
read back what a registry witnessed (``connector audit verify --witness URL``).

A registry keeps each checkpoint with the time it received it. A history rewritten locally and
re-signed with the participant's own key verifies on its own, but no longer holds the heads
the registry saw (``core.audit.witness_problem``). Sending is best effort: a registry that is
down misses checkpoints; nothing waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from urllib.parse import quote

import aiohttp
import msgspec

from connector.config import Settings
from connector.registry.publisher import Signer
from connector.registry.search import get_ok, pinned_session

log = logging.getLogger("connector.registry.witness")
WITNESS_TIMEOUT_S = 10.0


class WitnessSender:
    """Posts each new checkpoint to every registry of ``[registry] urls``."""

    def __init__(self, registries: Sequence[str], *,
                 session: Callable[[], aiohttp.ClientSession]) -> None:
        self._registries = [r.rstrip("/") for r in registries]
        self._session = session
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, jws: str) -> None:
        for registry in self._registries:
            task = asyncio.create_task(self._send(registry, jws))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, registry: str, jws: str) -> None:
        try:
            async with self._session().post(
                    f"{registry}/audit/checkpoints", data=jws.encode("ascii"),
                    headers={"Content-Type": "application/jose"},
                    timeout=aiohttp.ClientTimeout(total=WITNESS_TIMEOUT_S)) as resp:
                if resp.status != 200:
                    log.warning("registry %s refused our audit checkpoint (%d): %r", registry,
                                resp.status, (await resp.read())[:200])
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("cannot send our audit checkpoint to %s: %s", registry, exc)


async def _witnessed(settings: Settings, registry: str) -> list[tuple[int, str]]:
    registry = registry.rstrip("/")
    session = pinned_session(settings.root)
    signer = Signer.from_settings(settings)
    url = f"{registry}/audit/checkpoints?participant={quote(settings.did)}"
    try:
        body = await get_ok(session, url, authorization=signer.authorization(registry),
                            shown=registry, timeout_s=WITNESS_TIMEOUT_S)
    finally:
        await session.close()
    doc = msgspec.json.decode(body)
    return [(int(c["seq"]), str(c["head"])) for c in doc.get("checkpoints", [])]


def witnessed(settings: Settings, registry: str) -> list[tuple[int, str]]:
    """(seq, head) of every checkpoint of ours the registry holds."""
    return asyncio.run(_witnessed(settings, registry))
