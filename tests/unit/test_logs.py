"""connector.logs: outside text cannot start a line; JSON lines; the [log] table."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from connector import logs
from connector.config import log_settings
from connector.core.errors import ConfigError

EVIL = "a\nFORGED line\r\x1b[31m\x00\x7f\x85\u2028\u2029b"


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, list[logging.Handler]]]:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out, saved
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved:
        root.addHandler(handler)
    root.setLevel(level)


def test_escape_leaves_no_control_character_and_keeps_the_text_readable() -> None:
    escaped = logs.escape(EVIL)
    assert escaped == "a\\nFORGED line\\r\\x1b[31m\\x00\\x7f\\x85\\u2028\\u2029b"
    assert escaped.isprintable()
    assert logs.escape("naïve café ✓") == "naïve café ✓"


def test_every_record_is_one_line_whatever_its_arguments(captured: tuple[io.StringIO, list[
        logging.Handler]]) -> None:
    out, _ = captured
    logs.setup(logs.LogSettings(), out)
    log = logging.getLogger("connector.test")
    log.info("path %s", EVIL)
    log.warning("%r and %s", EVIL, ValueError(EVIL))
    log.info(EVIL)  # a message built by hand (an f-string) is escaped too
    log.info("bad format %d", "x")  # a wrong format string still gives one line
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines
    assert all(" connector.test: " in line for line in lines)
    assert not any(line.startswith("FORGED") for line in lines)


def test_a_callers_malformed_request_is_one_info_line_without_traceback(captured: tuple[
        io.StringIO, list[logging.Handler]]) -> None:
    out, _ = captured
    logs.setup(logs.LogSettings(), out)
    server = logging.getLogger("aiohttp.server")
    for exc in (BadHttpMessage("Invalid header value char\n  b'x\x1b'"),
                ConnectionResetError("Connection lost")):
        try:
            raise exc
        except Exception as caught:
            server.exception("Error handling request from %s", "127.0.0.1", exc_info=caught)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(" INFO aiohttp.server: " in line for line in lines), lines
    try:
        raise RuntimeError("ours")
    except RuntimeError:
        server.exception("Error handling request")  # a bug of ours keeps its traceback
    assert "Traceback" in out.getvalue()


def test_json_format_is_one_object_per_line_with_the_request_context(captured: tuple[
        io.StringIO, list[logging.Handler]]) -> None:
    out, _ = captured
    logs.setup(logs.LogSettings(format="json"), out)
    log = logging.getLogger("connector.test")

    def request() -> None:  # each aiohttp request task runs in a context of its own
        logs.bind(peer="did:web:peer\nx", process_id="urn:uuid:1")
        log.info("terminating %s", EVIL, extra={"reason": EVIL})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed", extra={"error_id": "abc"})

    contextvars.Context().run(request)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "INFO" and first["logger"] == "connector.test"
    assert first["time"].endswith("Z") and first["event"].startswith("terminating a\\n")
    assert first["peer"] == "did:web:peer\\nx" and first["process_id"] == "urn:uuid:1"
    assert first["reason"] == logs.escape(EVIL)
    assert second["error_id"] == "abc" and "RuntimeError: boom" in second["traceback"]


def test_bind_is_per_request_context() -> None:
    def in_request() -> dict[str, str]:
        logs.bind(peer="did:web:a")
        return dict(logs.context())

    assert contextvars.Context().run(in_request) == {"peer": "did:web:a"}
    assert contextvars.Context().run(logs.context) == {}


def test_log_table_of_connector_toml() -> None:
    assert log_settings({}, "f [log]") == logs.LogSettings("text", "INFO")
    assert log_settings({"format": "json", "level": "debug"}, "f") == logs.LogSettings(
        "json", "DEBUG")
    with pytest.raises(ConfigError, match=r"\[log\]: key 'format'"):
        log_settings({"format": "xml"}, "f [log]")
    with pytest.raises(ConfigError, match="key 'level'"):
        log_settings({"level": 3}, "f [log]")


def test_settings_carry_the_log_table(tmp_path: Path) -> None:
    from connector.config import load_settings
    from connector.participant.init import init_folder

    init_folder(tmp_path / "p", name="p", url="https://127.0.0.1:8443")
    toml = tmp_path / "p" / "connector.toml"
    toml.write_text(toml.read_text() + '\n[log]\nformat = "json"\n')
    settings = load_settings(tmp_path / "p")
    assert settings.log.format == "json" and "log" not in settings.extra
