"""One lazily opened aiohttp client session whose trust anchors can change at run time.

Keep-alive matters: a new TLS connection costs ~1.2 ms of CPU here, a reused one ~12 µs
(docs/interop-notes.md §6). When trust/ changes, the next request opens a session with the
new anchors and the old one is closed in the background.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import aiohttp
from aiohttp.abc import AbstractResolver

# How long an idle kept-alive connection stays open, client and server side. Each idle TLS
# connection holds asyncio's 256 KiB SSL read buffer: with the 75 s server default and a 60 s
# client keep-alive, a provider that 1,000 reusers contacted within a minute held ~1.1 GiB
# (bench reusers, bench/README.md). A negotiation's or a pull's messages follow each other
# within a second, so 15 s keeps their reuse and bounds the memory to the peers of the last
# 15 s.
IDLE_S = 15.0


class ReloadableSession:
    def __init__(self, ssl_context: ssl.SSLContext, *, limit: int, keepalive_s: float,
                 timeout_s: float,
                 resolver: Callable[[], AbstractResolver] | None = None,
                 trace_configs: Callable[[], list[aiohttp.TraceConfig]] | None = None) -> None:
        """``resolver`` makes each session's DNS resolver (None: aiohttp's default). It must
        hold nothing to close: the connector does not close a resolver it was given.
        ``trace_configs`` makes each session's aiohttp trace hooks."""
        self._ssl = ssl_context
        self._resolver = resolver
        self._trace_configs = trace_configs
        self._limit, self._keepalive_s, self._timeout_s = limit, keepalive_s, timeout_s
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl, limit=self._limit, keepalive_timeout=self._keepalive_s,
                resolver=self._resolver() if self._resolver else None)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                trace_configs=self._trace_configs() if self._trace_configs else None)
        return self._session

    def set_ssl(self, ssl_context: ssl.SSLContext) -> None:
        """New trust anchors; the next request opens a new session."""
        self._ssl = ssl_context
        old, self._session = self._session, None
        if old is not None:
            asyncio.get_running_loop().create_task(old.close())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
