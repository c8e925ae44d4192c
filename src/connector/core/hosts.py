"""Which hosts the DCP verifier may fetch from: the pure half of its SSRF guard (README.md,
"Identity").

A caller's token makes the verifier fetch URLs the caller chose: its did.json, the
CredentialService its DID document names, the status lists its credentials point at. Two
rules bound where those requests may go (``adapters.http.guard.GuardedHttp``
applies them to the URL's host and to every address that host resolves to):

* ``address_refusal``, always, whatever the configuration: a link-local address
  (169.254.0.0/16, fe80::/10, where cloud metadata services answer), an unspecified or
  "this network" address (0.0.0.0/8, ::), a multicast address or the IPv4 broadcast address.
  IPv4-mapped (``::ffff:a.b.c.d``) and NAT64 (``64:ff9b::a.b.c.d``) IPv6 addresses are judged
  by the IPv4 address they carry. Private (RFC 1918, fc00::/7) and loopback addresses are
  *not* refused by this rule: end-to-end tests and small on-premise spaces run on 127.0.0.1
  and LANs.
* ``AllowedHosts``, the ``[identity] allowed_hosts`` list: when it is not empty, a host must
  match one entry, so it also restricts private and loopback addresses. An entry is
  ``host`` (any port), ``host:port`` (that port only; 443 is the https default), or
  ``*.example.org`` / ``*.example.org:port`` (any subdomain of example.org, not example.org
  itself). Hosts are compared case-insensitively, IP addresses in normal form (an IPv6
  address with a port is written ``[::1]:8443``); internationalised names are written in
  their ASCII (``xn--``) form.

A peer's DSP ``callbackAddress`` is another such URL: we send agreements, transfer starts and
pushed data there. ``callback_refusal`` is checked where an initial message is accepted: an
absolute http(s) URL with a host that is not an IP address ``address_refusal`` refuses
(http and loopback/private addresses stay allowed: interop profiles call back to
http://127.0.0.1). ``adapters.http.guard`` applies ``address_refusal`` again when sending, to
IP addresses and to the addresses a name resolves to.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_BRACKETED = re.compile(r"\[([0-9a-f:.]+)\](?::([0-9]+))?")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
# A last label like these makes a URL parser read the host as an IPv4 address in another
# form (2852039166, 0xa9fea9fe, 0251.0376.0251.0376, 169.254.43518).
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
EXAMPLES = "'authority.example', 'authority.example:8443', '*.members.example' or '10.0.0.7'"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def address_refusal(address: str) -> str | None:
    """Why an IP address is never fetched from (None: not refused, or not an IP address)."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if ip is None:
        return None
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK):
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip == _BROADCAST:
        return "the broadcast address"
    return None


def callback_refusal(url: str) -> str | None:
    """Why a peer's ``callbackAddress`` is refused (None: accepted)."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return "a URL may not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https"):
        return "not an http or https URL"
    host = parts.hostname
    if not host:
        return "a URL without a host"
    why = address_refusal(host)
    if why is not None:
        return f"its host {normal_host(host)} is {why}"
    if _ip(host) is None and _NUMERIC_LABEL.fullmatch(host.rstrip(".").rsplit(".", 1)[-1]):
        return f"its host {host} is an IP address in a non-standard form"
    return None


def normal_host(host: str) -> str:
    """A URL's host as entries are compared with it: lower case, no trailing dot, IPs normal."""
    host = host.lower()
    ip = _ip(host)
    if ip is not None:
        return str(ip)
    return host[:-1] if host.endswith(".") else host


@dataclass(frozen=True)
class HostPattern:
    """One ``allowed_hosts`` entry: a host (or, if ``wildcard``, a parent domain) and a port."""

    host: str
    port: int | None = None
    wildcard: bool = False

    def matches(self, host: str, port: int) -> bool:
        """Whether ``host`` (already ``normal_host``) on ``port`` matches this entry."""
        if self.port is not None and port != self.port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host) and _ip(host) is None
        return host == self.host


def parse_host_pattern(entry: str) -> HostPattern:
    """Parse an ``allowed_hosts`` entry; ValueError says what is wrong with it."""
    text = entry.strip().lower()
    if not text:
        raise ValueError("an empty entry")
    if not text.isascii():
        raise ValueError("write an internationalised name in its ASCII (xn--) form")
    if "/" in text or "@" in text:
        raise ValueError(f"give a host or host:port, not a URL: for example {EXAMPLES}")
    port_text: str | None = None
    bracketed = _BRACKETED.fullmatch(text)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
        if not isinstance(_ip(host), ipaddress.IPv6Address):
            raise ValueError("only an IPv6 address is written in [brackets]")
    elif text.count(":") > 1:
        host = text  # a bare IPv6 address, any port
        if not isinstance(_ip(host), ipaddress.IPv6Address):
            raise ValueError("not an IPv6 address (write [address]:port for a port)")
    else:
        host = text
        if ":" in text:
            host, port_text = text.split(":")
    port = None
    if port_text is not None:
        if not port_text.isdecimal() or not 0 < int(port_text) < 65536:
            raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if name.endswith("."):
        name = name[:-1]
    if _ip(name) is not None:
        if wildcard:
            raise ValueError("a wildcard needs a domain name, not an IP address")
        return HostPattern(str(_ip(name)), port)
    if "*" in name:
        raise ValueError("'*' may only start an entry, as in '*.members.example'")
    if len(name) > 253 or not _NAME.fullmatch(name) or name.rsplit(".", 1)[-1].isdecimal():
        raise ValueError(f"not a host name or IP address: for example {EXAMPLES}")
    return HostPattern(name, port, wildcard)


class AllowedHosts:
    """``[identity] allowed_hosts``: empty allows every host (``address_refusal`` still holds)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.entries = tuple(entries)
        self._patterns = tuple(parse_host_pattern(e) for e in self.entries)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def allows(self, host: str, port: int) -> bool:
        if not self._patterns:
            return True
        host = normal_host(host)
        return any(p.matches(host, port) for p in self._patterns)
