"""Log format: readable lines on a terminal, JSON lines otherwise, each record's
fields kept. Real processes, with stderr on a pseudo-terminal or a pipe."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

PROGRAM = (
    "import logging; from keystone_ingest.server import logs; logs.configure('info', sys.argv[1]); "
    "logging.getLogger('keystone_ingest.test').warning('batch refused', extra={'batch_id': 'b-7', 'orders': 3})"
)


def run(fmt: str, *, terminal: bool) -> str:
    command = [sys.executable, "-c", "import sys; " + PROGRAM, fmt]
    if not terminal:
        return subprocess.run(command, stderr=subprocess.PIPE, check=True, text=True).stderr
    main, child = pty.openpty()
    try:
        subprocess.run(command, stderr=child, check=True)
        os.close(child)
        child = -1
        out = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            out += chunk
        return out.decode()
    finally:
        os.close(main)
        if child >= 0:
            os.close(child)


def test_auto_writes_json_lines_when_stderr_is_not_a_terminal():
    record = json.loads(run("auto", terminal=False).strip())
    assert {k: record[k] for k in ("level", "logger", "msg", "batch_id", "orders")} == {
        "level": "warning",
        "logger": "keystone_ingest.test",
        "msg": "batch refused",
        "batch_id": "b-7",
        "orders": 3,
    }


def test_auto_writes_readable_lines_on_a_terminal():
    line = run("auto", terminal=True).strip()
    assert not line.startswith("{")
    assert "WARNING keystone_ingest.test: batch refused  [batch_id=b-7 orders=3]" in line


@pytest.mark.parametrize("fmt, terminal", [("json", True), ("text", False)])
def test_an_explicit_format_wins_over_the_terminal(fmt, terminal):
    out = run(fmt, terminal=terminal).strip()
    assert out.startswith("{") == (fmt == "json")
    assert "batch refused" in out
