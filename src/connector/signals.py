"""Running a started daemon until SIGINT or SIGTERM (the connector, the registry, test profiles)."""

from __future__ import annotations

import asyncio
import signal


async def until_signalled(banner: str, ready: asyncio.Event | None = None) -> None:
    """Print ``banner`` (the line supervisors and harnesses wait for), set ``ready``, then wait
    for SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(banner, flush=True)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
