"""What an embedding passes to ``Daemon`` (its constructor arguments), instead of overriding
its methods or setting attributes on its running services."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from connector.adapters.http.guard import GuardedHttp
from connector.config import Settings, load_settings
from connector.core.errors import ConfigError
from connector.daemon import Daemon, is_loopback
from connector.participant.init import init_folder
from connector.service.dcp_verifier import DidResolver


def _folder(tmp_path: Path, *, dcp: bool = False, host: str | None = None) -> Path:
    init_folder(tmp_path / "p", name="p", url="https://127.0.0.1:8443")
    config = tmp_path / "p" / "connector.toml"
    text = config.read_text()
    if host is not None:
        text = re.sub(r'(?m)^host = ".*"$', f'host = "{host}"', text, count=1)
    config.write_text(text + ('\n[identity]\nmode = "dcp"\n' if dcp else ""))
    return tmp_path / "p"


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.4.5", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("192.168.1.10", False), ("connector.example", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plain_http_is_refused_off_loopback(tmp_path: Path) -> None:
    settings = load_settings(_folder(tmp_path, host="0.0.0.0"))
    assert settings.host == "0.0.0.0"
    with pytest.raises(ConfigError, match="plain HTTP is for a loopback listener"):
        Daemon(settings, tls=False)
    Daemon(settings)  # with TLS the same folder is fine


def test_the_dcp_transport_is_a_constructor_argument(tmp_path: Path) -> None:
    made: list[Settings] = []

    def transport(settings: Settings, client_ssl: ssl.SSLContext
                  ) -> tuple[GuardedHttp, DidResolver]:
        made.append(settings)
        http = GuardedHttp(client_ssl, allowed_hosts=())
        return http, DidResolver(http, cache_s=1, clock=lambda: 0.0)

    daemon = Daemon(load_settings(_folder(tmp_path, dcp=True)), dcp_transport=transport)
    assert len(made) == 1 and made[0] is daemon.settings
    assert daemon.dcp_http is not None and daemon.dcp_http._allowed.entries == ()

