"""The cost guard: characters a billed engine (Cartesia) is asked for, per minute and per hour. A request
that would pass a limit is refused before it starts (rate_limited); a text still arriving is charged
piece by piece. Critical requests pass when the settings say so."""

from __future__ import annotations

import collections
import time

from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.vocabulary import ErrorCode, ErrorReport, Priority, SayRequest

WINDOWS = ((60, "minute"), (3600, "hour"))


class CostGuard:
    """Event loop only. What was billed in the last hour is kept (one entry per charge)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._billed: collections.deque[tuple[float, int]] = collections.deque()  # (monotonic time, characters)

    def charge(self, request: SayRequest, chars: int, what: str = "") -> ErrorReport | None:
        """Count `chars` about to be billed for `request`; the error instead when that would pass a limit."""
        now = time.monotonic()
        while self._billed and now - self._billed[0][0] > WINDOWS[-1][0]:
            self._billed.popleft()
        limits = (self._settings.chars_per_minute, self._settings.chars_per_hour)
        bypass = request.priority is Priority.CRITICAL and self._settings.critical_bypasses_cost_guard
        for (window, name), limit in zip(WINDOWS, limits, strict=True):
            used = sum(n for t, n in self._billed if now - t <= window)
            if limit is not None and used + chars > limit and not bypass:
                return ErrorReport(
                    code=ErrorCode.RATE_LIMITED,
                    message=f"{what}cost guard: {chars} more characters would pass the limit of {limit} "
                    f"per {name} ({used} used)",
                    id=request.id,
                )
        self._billed.append((now, chars))
        return None
