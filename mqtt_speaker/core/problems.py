"""What is failing now ('audio', 'tts') and the last error: shown in the state until it works again."""

from __future__ import annotations

import logging

from mqtt_speaker.core.listener import Listener
from mqtt_speaker.speech.vocabulary import ErrorReport, LastError

LOG = logging.getLogger(__name__)


class Problems:
    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self.areas: dict[str, LastError] = {}
        self.last_error: LastError | None = None

    def set(self, area: str, error: ErrorReport) -> None:
        self.last_error = LastError(code=error.code, message=error.message, ts=error.ts)
        self.areas[area] = self.last_error
        self._listener.on_change()

    def clear(self, area: str) -> None:
        if self.areas.pop(area, None) is not None:
            LOG.info("%s works again", area)
            self._listener.on_change()
