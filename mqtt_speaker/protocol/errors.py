"""The error topic's flood limit: every problem is logged and published, at most `max_per_second` a
second; past that, one summary a second says how many were left out (a flood of bad input must not
become a flood of errors)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mqtt_speaker.speech.vocabulary import ErrorCode, ErrorReport

LOG = logging.getLogger("mqtt_speaker.errors")


class ErrorFlood:
    def __init__(self, max_per_second: int, publish: Callable[[ErrorReport], None]) -> None:
        self._max = max_per_second
        self._publish = publish
        self._window = 0.0
        self._in_window = 0
        self._suppressed = 0

    def report(self, error: ErrorReport) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._in_window = now, 0
        self._in_window += 1
        line = "%s%s: %s", error.code, f" [{error.id}]" if error.id else "", error.message
        if self._in_window > self._max:
            self._suppressed += 1
            LOG.debug(*line)
            if self._suppressed == 1:
                asyncio.get_running_loop().call_later(1.0, self._summarize)
            return
        LOG.log(logging.WARNING if error.severity == "warning" else logging.ERROR, *line)
        self._publish(error)

    def _summarize(self) -> None:
        count, self._suppressed = self._suppressed, 0
        summary = ErrorReport(
            code=ErrorCode.ERRORS_SUPPRESSED,
            message=f"{count} more errors in the last second were not published (more than {self._max} a second)",
        )
        LOG.warning("%s: %s", summary.code, summary.message)
        self._publish(summary)
