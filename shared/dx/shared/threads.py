"""Threads named for the operating system too.

Python 3.11 keeps a thread's name to itself: ``top -H``, ``ps -L``, py-spy's
native view and ``/proc/<pid>/task/*/comm`` show every thread of a worker as
``python``. dx's threads take their names there as well (the kernel keeps 15
bytes of one), so that an operator, and the benchmark's CPU per thread, can
tell the parse from the download, the SFTP transport or a running actor.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any

#: prctl's option that names the calling thread.
PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def name_native(name: str | None = None) -> None:
    """Give the calling thread ``name`` (else its Python name) as its OS name; nothing off Linux."""
    if _libc is not None:
        _libc.prctl(PR_SET_NAME, (name or threading.current_thread().name).encode(), 0, 0, 0)


def native_name() -> str:
    """The calling thread's OS name ('' off Linux)."""
    if _libc is None:
        return ""
    return open(f"/proc/self/task/{threading.get_native_id()}/comm").read().rstrip("\n")


class Thread(threading.Thread):
    """A daemon thread that takes its Python name as its OS name when it starts."""

    def __init__(self, target: Callable[..., Any], name: str, args: tuple[Any, ...] = ()) -> None:
        super().__init__(target=target, name=name, args=args, daemon=True)

    def run(self) -> None:
        name_native()
        super().run()
