"""Quiet mode, the one rule: while it is on (set/quiet, or the configured quiet hours), every request below
critical is dropped (`quiet`), queued ones included; a critical one is spoken."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.vocabulary import Priority, SayRequest


class Quiet:
    def __init__(
        self, settings: Settings, switched_on: Callable[[], bool], clock: Callable[[], dt.datetime] = dt.datetime.now
    ) -> None:
        self._settings = settings
        self._switched_on = switched_on
        self._clock = clock

    def now(self) -> bool:
        """Quiet mode is on, or it is quiet hours."""
        return self._switched_on() or self._settings.in_quiet_hours(self._clock().time())

    def silences(self, request: SayRequest) -> bool:
        """Whether quiet mode drops this request now."""
        return request.priority is not Priority.CRITICAL and self.now()
