"""A run-level error whose cause may pass (a server restarting) is tried again while retries remain.

A stage that catches a ``RunError`` to fail its run calls ``retry_if_transient`` first: for a code of
``TRANSIENT_CODES`` it raises a ``RetriableError`` while the message being processed has retries left, so
that Dramatiq tries the stage again after its backoff; on the last try the run fails with the code.
"""

from __future__ import annotations

import dramatiq
import structlog
from dramatiq.middleware import CurrentMessage

from dx.shared.errors import TRANSIENT_CODES, RetriableError, RunError

log = structlog.get_logger(__name__)


def retry_if_transient(exc: RunError) -> None:
    """Raise a RetriableError for ``exc`` if its cause may pass and the current message may be retried."""
    message = CurrentMessage.get_current_message()
    if exc.code not in TRANSIENT_CODES or message is None:
        return
    retries = message.options.get("retries", 0)
    allowed = dramatiq.get_broker().get_actor(message.actor_name).options.get("max_retries", 0)
    if retries < allowed:
        log.warning("stage.retrying", code=exc.code.value, error=exc.message, retries=retries, max_retries=allowed)
        raise RetriableError(f"{exc}; tried again ({retries + 1} of {allowed})") from exc
