"""``connector run`` when it cannot start: a clear error and an exit, never a hung process."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from connector.config import load_settings
from tests.harness import create_space


@pytest.mark.parametrize("which", ["management", "public"])
def test_a_taken_port_ends_the_daemon_with_a_clear_error(tmp_path: Path, which: str) -> None:
    """Seen in CI: the public port bound, the management port taken, and the process hung on
    the store's thread, so the harness waiting for 'ready' waited forever."""
    provider, _ = create_space(tmp_path)
    settings = load_settings(provider.dir)
    port = settings.management_port if which == "management" else settings.port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run([sys.executable, "-m", "connector.cli", "run",
                                 str(provider.dir)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "Traceback" not in result.stderr
