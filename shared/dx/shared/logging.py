"""Logs: one JSON object per line, from our code and from every library alike.

structlog's ``ProcessorFormatter`` renders the standard library's records too (pika, dramatiq,
uvicorn, paramiko, warnings), so a process writes nothing else to stderr; workers bind tenant,
module, run, chunk and stage per message, and a library's line written while a message is processed
carries them as well. Libraries log at WARNING and above only: their INFO lines are chatter.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

#: Libraries whose INFO and DEBUG lines say nothing an operator acts on.
QUIET = ("pika", "dramatiq", "uvicorn", "uvicorn.error", "uvicorn.access", "paramiko", "asyncio", "httpx",
         "httpcore", "urllib3", "aiosmtpd", "mail.log", "py.warnings")


class _Stderr(logging.StreamHandler):
    """The standard error stream of the moment a line is written (a test's capture may replace it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """Ignored: the stream is always the current ``sys.stderr``."""


#: What every line gets, ours and the libraries': the message's context, level, logger and time; a
#: traceback as one string field (without the frames' local variables, which may hold secrets).
SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
]


def configure(level: str = "INFO") -> None:
    """Every log line on stderr as one JSON object, at ``level``; the libraries in ``QUIET`` at
    WARNING or above."""
    handler = _Stderr()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer()]))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for name in QUIET:
        logging.getLogger(name).setLevel(quiet)
    logging.captureWarnings(True)
    structlog.configure(
        processors=[*SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
