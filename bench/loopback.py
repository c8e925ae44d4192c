"""The physical limit beside the negotiation numbers: raw keep-alive HTTPS on loopback.

A minimal aiohttp HTTPS server (``python -m bench.loopback CERT KEY``) runs in its own
process with a self-signed P-256 certificate from ``connector.keys.generate_tls``; it reads
each POSTed body and answers a small JSON acknowledgement, with no access log. The client
is one aiohttp ClientSession in the bench process, verifying the certificate, doing
keep-alive POSTs of a ~1 KB JSON body. That is one HTTP exchange with none of a
connector's work (JWT, JSON-LD, policy, database) and so the ceiling any DSP message
exchange over aiohttp on this box can reach.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench import CpuMeter, LoadResult, load, log

READY_TIMEOUT_S = 20.0
# A ~1 KB JSON body, shaped like a small DSP message.
BODY = json.dumps({
    "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
    "@type": "ContractRequestMessage",
    "consumerPid": "urn:uuid:" + "0" * 36,
    "callbackAddress": "https://127.0.0.1:40000/dsp",
    "offer": {"@id": "urn:offer:example-weather:members-only", "@type": "Offer",
              "target": "example-weather", "assigner": "did:web:provider",
              "permission": [{"action": "use", "constraint": [
                  {"leftOperand": "membership", "operator": "eq", "rightOperand": "active"}]}]},
    "padding": "x" * 560,
}, separators=(",", ":")).encode()


class RawServer:
    """The minimal HTTPS server in a child process; ``start`` waits for its port line."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-loopback-")
        self.cert = Path(self._tmp.name) / "cert.pem"
        self.key = Path(self._tmp.name) / "key.pem"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.startup_ms = 0.0

    def start(self) -> None:
        from connector.keys import generate_tls

        generate_tls(self.cert, self.key, ["127.0.0.1"])
        t0 = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.loopback", str(self.cert), str(self.key)],
            stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith(b"ready "):
                self.startup_ms = (time.perf_counter() - t0) * 1000
                self.url = f"https://127.0.0.1:{int(line.split()[1])}/echo"
                return
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the raw HTTPS server did not start")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._tmp.cleanup()


async def measure(server: RawServer, *, concurrency: int, duration_s: float, warmup_s: float,
                  max_count: int) -> tuple[LoadResult, CpuMeter]:
    """Keep-alive POSTs of BODY at ``concurrency`` for ``duration_s`` after a warm-up."""
    assert server.process is not None
    ctx = ssl.create_default_context(cafile=str(server.cert))
    connector = aiohttp.TCPConnector(ssl=ctx, limit=concurrency, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call() -> bool:
            async with session.post(server.url, data=BODY, headers=headers) as resp:
                await resp.read()
                return resp.status == 200

        log(f"raw HTTPS c={concurrency}: warm-up {warmup_s:g} s")
        await load(call, concurrency=concurrency, duration_s=warmup_s, max_count=max_count)
        log(f"raw HTTPS c={concurrency}: {duration_s:g} s")
        with CpuMeter({"server": server.process.pid, "client": os.getpid()}) as meter:
            result = await load(call, concurrency=concurrency, duration_s=duration_s,
                                max_count=max_count)
        return result, meter


def _serve(cert: str, key: str) -> None:
    """The child process: serve POST /echo on 127.0.0.1 until terminated."""
    import signal

    from aiohttp import web

    ack = b'{"status":"ok"}'

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ack, content_type="application/json")

    async def main() -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_post("/echo", echo)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = runner.addresses[0][1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print(f"ready {port}", flush=True)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
