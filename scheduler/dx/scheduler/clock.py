"""The scheduler's clock: real time, or a test clock that runs faster.

``DX_CLOCK_ORIGIN=ISO-TIME@UNIX-SECONDS`` and ``DX_CLOCK_SPEED=N`` make the
clock read ISO-TIME at that Unix time and advance N times faster. The clock
is a pure function of the real time, so that several scheduler processes
started at different moments share it (the replica tests rely on that).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from dx.shared.settings import Settings, get_settings


class Clock:
    """Schedule time; ``now()`` is timezone-aware."""

    def __init__(self, origin: tuple[datetime, float] | None = None, speed: float = 1.0) -> None:
        self.origin, self.speed = origin, speed

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Clock:
        """The clock DX_CLOCK_ORIGIN / DX_CLOCK_SPEED describe (real time when unset)."""
        settings = settings or get_settings()
        return cls(settings.clock_origin, settings.clock_speed)

    def now(self) -> datetime:
        """The current schedule time."""
        if self.origin is None:
            return datetime.now(UTC)
        origin, anchor = self.origin
        return (origin + timedelta(seconds=(time.time() - anchor) * self.speed)).astimezone(UTC)
