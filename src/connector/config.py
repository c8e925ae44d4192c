"""Read ``connector.toml`` once, into frozen typed settings.

Paths in the file are relative to the participant folder. Secrets are referenced by path only
and never held here. Errors name the file and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.core.binding import DSP_PATH
from connector.core.dcp import SPEC_SCOPE_ALIAS
from connector.core.errors import ConfigError
from connector.core.hosts import parse_host_pattern
from connector.core.identity import MAX_TOKEN_LIFETIME_S
from connector.logs import LOG_FORMATS, LOG_LEVELS, LogSettings

CONFIG_FILE = "connector.toml"
# Self-issued tokens live 5 minutes; EDC's STS uses 10 (edc.iam.sts.signature.token.expiration).
DEFAULT_TOKEN_TTL_S = 300
# Clock skew tolerated on iat/nbf/exp; EDC allows 4-5 s.
DEFAULT_CLOCK_LEEWAY_S = 5
# Data-plane tokens in a TransferStart data address: short-lived, refreshed by a new Start.
DEFAULT_DATA_TOKEN_TTL_S = 600
# [identity]: "pinned" (trust/ keys and attributes) or "dcp" (did:web + verifiable credentials).
IDENTITY_MODES = ("pinned", "dcp")
# Resolved DID documents are reused this long (EDC: edc.did.resolver.cache.expiry, 5 min).
DEFAULT_DID_CACHE_S = 300
# Status lists are reused at most this long (and at most the server's max-age): this bounds how
# long a revoked member is still served.
DEFAULT_STATUS_CACHE_S = 60
# [metrics] listen: Prometheus's conventional exporter range (9464 is OpenTelemetry's port for
# its Prometheus exporter); loopback only unless the operator says otherwise.
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
# [health]: ready fails when the TLS certificate expires within this many days; a warning
# metric (connector_tls_certificate_expiring) comes first, certificate_warn_days before.
DEFAULT_CERT_MIN_DAYS = 1
DEFAULT_CERT_WARN_DAYS = 14
# The outbox is stuck when messages wait and no delivery was attempted for this long: four
# times the longest back-off between two attempts (service/outbox.py MAX_DELAY_S = 30 s).
DEFAULT_OUTBOX_STUCK_S = 120
# After SIGTERM, ready answers 503 this long before the listeners close (time for a load
# balancer or Kubernetes to stop sending); 0 on a single machine, 5 in the Helm chart.
DEFAULT_DRAIN_S = 0.0
# [storage] postgres_pool_size: connections a replica keeps to PostgreSQL at most. A step
# holds one from its process lock to its save, so at 64 negotiations in flight 10 were the
# bottleneck of one replica and 20 ran 10 % faster (bench/README.md, `replicas`).
DEFAULT_POSTGRES_POOL_SIZE = 20
MAX_POSTGRES_POOL_SIZE = 1000


@dataclass(frozen=True, kw_only=True)
class HealthSettings:
    """``[health]``: what /health/ready demands, and the drain on SIGTERM."""

    certificate_min_days: float = DEFAULT_CERT_MIN_DAYS
    certificate_warn_days: float = DEFAULT_CERT_WARN_DAYS
    outbox_stuck_s: float = DEFAULT_OUTBOX_STUCK_S
    drain_s: float = DEFAULT_DRAIN_S


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """What a connector and a registry share: a folder, a did:web identity served over HTTPS
    with its own certificate, a signing key, a database."""

    root: Path
    name: str
    did: str
    public_url: str
    host: str
    port: int
    tls_cert: Path
    tls_key: Path
    signing_key: Path
    signing_kid: str
    database: Path
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    clock_leeway_s: int = DEFAULT_CLOCK_LEEWAY_S


def endpoint_fields(root: Path, owner: dict[str, Any], server: dict[str, Any],
                    signing: dict[str, Any], where: str, owner_table: str) -> dict[str, Any]:
    """The ``Endpoint`` fields from the ``[<owner_table>]`` (name, did, url), ``[server]`` and
    ``[signing]`` tables; ConfigError names the file, table and key."""
    own = f"{where} [{owner_table}]"
    return {
        "root": root,
        "name": _get(owner, "name", str, own),
        "did": _get(owner, "did", str, own),
        "public_url": _get(owner, "url", str, own).rstrip("/"),
        "host": server.get("host", "127.0.0.1"),
        "port": _get(server, "port", int, f"{where} [server]"),
        "tls_cert": root / _get(server, "tls_cert", str, f"{where} [server]"),
        "tls_key": root / _get(server, "tls_key", str, f"{where} [server]"),
        "signing_key": root / _get(signing, "key", str, f"{where} [signing]"),
        "signing_kid": _get(signing, "kid", str, f"{where} [signing]"),
        "token_ttl_s": _token_ttl(signing, f"{where} [signing]"),
        "clock_leeway_s": int(signing.get("clock_leeway_s", DEFAULT_CLOCK_LEEWAY_S)),
    }


@dataclass(frozen=True, kw_only=True)
class Settings(Endpoint):
    """Everything the daemon and the CLI need from ``connector.toml``."""

    management_port: int
    management_token_file: Path
    registries: tuple[str, ...] = ()
    data_token_ttl_s: int = DEFAULT_DATA_TOKEN_TTL_S
    identity_mode: str = "pinned"
    trusted_issuers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    required_credentials: tuple[str, ...] = ("MembershipCredential",)
    did_cache_s: int = DEFAULT_DID_CACHE_S
    status_cache_s: int = DEFAULT_STATUS_CACHE_S
    scope_alias: str = SPEC_SCOPE_ALIAS
    tls_ca_files: tuple[Path, ...] = ()
    # DCP fetches (did.json, Credential Service, status lists) only to these hosts; () = any
    # host that core.hosts.address_refusal does not refuse (see core/hosts.py).
    allowed_hosts: tuple[str, ...] = ()
    log: LogSettings = field(default_factory=LogSettings)
    # [metrics] listen "host:port", or None when switched off; metrics_explicit: written in
    # the file (a port that cannot be taken is then an error, not a warning).
    metrics_listen: tuple[str, int] | None = None
    metrics_explicit: bool = False
    health: HealthSettings = field(default_factory=HealthSettings)
    # [storage] postgres_dsn_file: a 0600 file holding the DSN of the PostgreSQL database
    # the replicas share (docs/storage.md); None: the embedded SQLite file ``database``.
    postgres_dsn_file: Path | None = None
    # [storage] postgres_pool_size: the most connections this replica opens to it.
    postgres_pool_size: int = DEFAULT_POSTGRES_POOL_SIZE
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def dsp_base(self) -> str:
        """The versioned DSP base URL peers call."""
        return self.public_url + DSP_PATH

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    def management_token(self) -> str:
        """Read the management token from its file (0600, git-ignored)."""
        try:
            return self.management_token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{self.management_token_file}: cannot read token: {exc}") from exc


def _get(table: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing key '{key}'")
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: key '{key}' must be {kind.__name__}")
    return value


def load_settings(root: Path) -> Settings:
    """Load ``root/connector.toml``; raise ConfigError naming file and key on any problem."""
    root = root.resolve()
    path = root / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc

    def table(name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        return value

    part, server, mgmt, storage, signing = (
        table(n) for n in ("participant", "server", "management", "storage", "signing")
    )
    where = str(path)
    registry = table("registry")
    identity = _identity(table("identity"), f"{where} [identity]")
    metrics = table("metrics")
    return Settings(
        **endpoint_fields(root, part, server, signing, where, "participant"),
        management_port=_get(mgmt, "port", int, f"{where} [management]"),
        management_token_file=root / _get(mgmt, "token_file", str, f"{where} [management]"),
        database=root / storage.get("sqlite", "state/connector.db"),
        registries=tuple(registry.get("urls", [])),
        data_token_ttl_s=int(server.get("data_token_ttl_s", DEFAULT_DATA_TOKEN_TTL_S)),
        identity_mode=identity["mode"],
        trusted_issuers=identity["trusted_issuers"],
        required_credentials=identity["required_credentials"],
        did_cache_s=identity["did_cache_s"],
        status_cache_s=identity["status_cache_s"],
        scope_alias=identity["scope_alias"],
        tls_ca_files=tuple(root / f for f in identity["tls_ca_files"]),
        allowed_hosts=identity["allowed_hosts"],
        log=log_settings(table("log"), f"{where} [log]"),
        metrics_listen=_metrics_listen(metrics, f"{where} [metrics]"),
        metrics_explicit="listen" in metrics or "enabled" in metrics,
        health=_health(table("health"), f"{where} [health]"),
        postgres_dsn_file=_dsn_file(root, storage, f"{where} [storage]"),
        postgres_pool_size=_pool_size(storage, f"{where} [storage]"),
        extra={k: v for k, v in data.items() if k not in {
            "participant", "server", "management", "storage", "signing", "registry",
            "identity", "log", "metrics", "health"}},
    )


def _dsn_file(root: Path, storage: dict[str, Any], where: str) -> Path | None:
    """[storage] postgres_dsn_file, relative to the folder; its mode is checked on use."""
    value = storage.get("postgres_dsn_file")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: key 'postgres_dsn_file' must be a file name")
    return root / value


def _pool_size(storage: dict[str, Any], where: str) -> int:
    """[storage] postgres_pool_size (the server's ``max_connections`` must hold every
    replica's pool, see docs/storage.md)."""
    return _int_in(storage, "postgres_pool_size", DEFAULT_POSTGRES_POOL_SIZE, where,
                   low=1, high=MAX_POSTGRES_POOL_SIZE)


def _token_ttl(signing: dict[str, Any], where: str) -> int:
    """[signing] token_ttl_s (peers refuse longer-lived tokens)."""
    return _int_in(signing, "token_ttl_s", DEFAULT_TOKEN_TTL_S, where, low=1,
                   high=MAX_TOKEN_LIFETIME_S, why=" (verifiers refuse longer-lived tokens)")


def _int_in(table: dict[str, Any], key: str, default: int, where: str, *, low: int,
            high: int | None = None, why: str = "") -> int:
    """``table[key]`` (else ``default``): an integer from ``low`` to ``high`` (no bound:
    None), or a one-line ConfigError naming the key."""
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (
            high is not None and value > high):
        wanted = (f"an integer from {low} to {high}" if high is not None
                  else f"an integer of at least {low}")
        raise ConfigError(f"{where}: key '{key}' must be {wanted}{why}")
    return value


def _str_list(table: dict[str, Any], key: str, default: list[str], where: str) -> list[str]:
    value = table.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: key '{key}' must be a list of strings")
    return value


def _identity(table: dict[str, Any], where: str) -> dict[str, Any]:
    """The [identity] table: mode, issuers, credentials, caches, CA files, allowed hosts."""
    mode = table.get("mode", "pinned")
    if mode not in IDENTITY_MODES:
        raise ConfigError(f"{where}: key 'mode' must be one of {', '.join(IDENTITY_MODES)}")
    issuers = table.get("trusted_issuers", {})
    if not isinstance(issuers, dict):
        raise ConfigError(f"{where}: key 'trusted_issuers' must be a table DID = [types]")
    trusted = {did: tuple(_str_list(issuers, did, [], f"{where} trusted_issuers"))
               for did in issuers}
    out: dict[str, Any] = {
        "mode": mode, "trusted_issuers": trusted,
        "required_credentials": tuple(_str_list(table, "required_credentials",
                                                ["MembershipCredential"], where)),
        "tls_ca_files": _str_list(table, "tls_ca_files", [], where)}
    alias = table.get("scope_alias", SPEC_SCOPE_ALIAS)
    if not isinstance(alias, str) or not alias or ":" in alias or alias != alias.strip():
        raise ConfigError(f"{where}: key 'scope_alias' must be a scope alias such as "
                          f"'{SPEC_SCOPE_ALIAS}' (no ':')")
    out["scope_alias"] = alias
    hosts = _str_list(table, "allowed_hosts", [], where)
    for entry in hosts:
        try:
            parse_host_pattern(entry)
        except ValueError as exc:
            raise ConfigError(f"{where}: key 'allowed_hosts': bad entry {entry!r}: {exc}"
                              ) from None
    out["allowed_hosts"] = tuple(hosts)
    for key, default in (("did_cache_s", DEFAULT_DID_CACHE_S),
                         ("status_cache_s", DEFAULT_STATUS_CACHE_S)):
        out[key] = _int_in(table, key, default, where, low=0)
    return out


def log_settings(table: dict[str, Any], where: str) -> LogSettings:
    """The [log] table: ``format`` ("text", the default, or "json") and ``level``."""
    fmt = table.get("format", "text")
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"{where}: key 'format' must be one of {', '.join(LOG_FORMATS)}")
    level = table.get("level", "INFO")
    if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
        raise ConfigError(f"{where}: key 'level' must be one of {', '.join(LOG_LEVELS)}")
    return LogSettings(format=fmt, level=level.upper())


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError when it is neither."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError("expected host:port, e.g. 127.0.0.1:9464 or [::1]:9464")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _metrics_listen(table: dict[str, Any], where: str) -> tuple[str, int] | None:
    """[metrics]: ``enabled = false`` or ``listen = ""`` switch the listener off."""
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: key 'enabled' must be true or false")
    listen = table.get("listen", DEFAULT_METRICS_LISTEN)
    if not isinstance(listen, str):
        raise ConfigError(f"{where}: key 'listen' must be a string \"host:port\"")
    if not enabled or not listen:
        return None
    try:
        return parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(f"{where}: key 'listen': {exc}") from None


def _health(table: dict[str, Any], where: str) -> HealthSettings:
    values: dict[str, float] = {}
    for key in ("certificate_min_days", "certificate_warn_days", "outbox_stuck_s", "drain_s"):
        if key not in table:
            continue
        value = table[key]
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: key '{key}' must be a non-negative number")
        values[key] = float(value)
    return HealthSettings(**values)
