"""``dx`` roles as OS processes for the integration tests: start, stop, wait for a condition."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

DX = str(Path(sys.executable).with_name("dx"))


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``dx ARGS`` with ``env`` over this process's environment, stdout and stderr to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([DX, *args], env={**os.environ, **env}, stdout=out, stderr=out)


def stop(proc: subprocess.Popen[bytes], log: Path) -> str:
    """SIGTERM, wait, and the process's output."""
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    return log.read_text(errors="replace")


def until(predicate: Callable[[], bool], what: str, timeout_s: float = 60, poll_s: float = 0.2) -> None:
    """Poll ``predicate`` every ``poll_s`` until true; fails saying ``what`` did not happen in time."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(poll_s)


def answers(url: str) -> bool:
    """The URL answers 200."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
