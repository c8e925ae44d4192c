"""TLS read buffers that grow with the stream, for a daemon that holds many idle connections.

asyncio's TLS (``asyncio.sslproto.SSLProtocol``) reads each connection's ciphertext into a
buffer of ``SSLProtocol.max_size`` bytes (256 KiB in CPython 3.11 to 3.13), allocated when
the connection opens. A connector keeps its peers' connections open IDLE_S after use
(adapters/http/session.py), about four per peer (its DSP and DCP calls to us, ours to it): a
provider paid about half a MiB per recently active peer for buffers a DSP message of a few
KiB never fills (bench reusers, bench/README.md).

``LeanSSLProtocol`` starts each connection at FIRST_BUFFER and quadruples its buffer each time
a read fills it, up to ``SSLProtocol.max_size``: a data-plane stream reaches the full size
within a few reads and keeps its throughput (bench transfer), a DSP connection stays small.
It changes nothing else: ``max_size``, the one knob it turns, is what ``SSLProtocol`` itself
reads to size that buffer (an instance attribute shadows the class's); ``buffer_updated`` is
the BufferedProtocol method the transport calls after each read.

``install()`` makes the process's TLS connections use it (``connector run`` and ``connector
registry run`` call it once, before their event loop starts): asyncio's selector loop
builds its TLS transports with whatever ``asyncio.sslproto.SSLProtocol`` names when a
connection opens.
"""

from __future__ import annotations

from asyncio import sslproto

FIRST_BUFFER = 16 * 1024  # a TLS record's plaintext at most (RFC 8446 §5.1)
FULL_BUFFER = sslproto.SSLProtocol.max_size  # asyncio's own size, kept for bulk streams
GROWTH = 4


class LeanSSLProtocol(sslproto.SSLProtocol):
    """``SSLProtocol`` whose read buffer starts at FIRST_BUFFER and grows while reads fill
    it."""

    max_size = FIRST_BUFFER  # what the first buffer is sized by; each connection's grows

    def buffer_updated(self, nbytes: int) -> None:
        filled = nbytes >= self.max_size
        super().buffer_updated(nbytes)
        if filled and self.max_size < FULL_BUFFER:
            # Read more at once from now on: SSLProtocol.get_buffer sizes the buffer by
            # max_size, which this connection's own attribute now shadows (typeshed calls it
            # a ClassVar).
            self.max_size = min(self.max_size * GROWTH, FULL_BUFFER)  # type: ignore[misc]


def install() -> None:
    """New TLS connections of this process start with a small buffer."""
    sslproto.SSLProtocol = LeanSSLProtocol  # type: ignore[misc]
