"""The speaker: a request's way from `submit` to its terminal event, and what the state topic shows.

It joins the scheduling policy (scheduler.py: queue, priorities, preemption, TTL, dedupe, quiet,
shutdown; no audio) and the voicing of one request (voicing.py: engine choice, fallback and resume,
chime, cache, cost guard), and owns the runtime defaults and the problem flags. Every request's text
is a stream (text.py); a plain say is one that is complete when it arrives.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from mqtt_speaker.audio import Output
from mqtt_speaker.cache import AudioCache
from mqtt_speaker.ducking import Ducker
from mqtt_speaker.engines.base import Engine
from mqtt_speaker.models import (
    ErrorReport,
    Event,
    LastError,
    Priority,
    SpeakerState,
    StateReport,
)
from mqtt_speaker.runtime import RuntimeDefaults
from mqtt_speaker.scheduler import Scheduler
from mqtt_speaker.settings import Settings
from mqtt_speaker.sync import clock_synchronized
from mqtt_speaker.voicing import Voice

LOG = logging.getLogger(__name__)


class Speaker:
    """The scheduler and the voice of one speaker, its runtime defaults and problem flags (event loop only)."""

    def __init__(
        self,
        engines: dict[str, Engine],
        output: Output,
        settings: Settings,
        *,
        primary: str | None = None,
        cache: AudioCache | None = None,
        ducker: Ducker | None = None,
        publish_event: Callable[[Event], None],
        report_error: Callable[[ErrorReport], None],
        on_change: Callable[[], None],
        clock: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self._settings = settings
        self._on_change = on_change
        self._clock = clock
        self.defaults = RuntimeDefaults.load(settings)
        self._problems: dict[str, LastError] = {}
        self._last_error: LastError | None = None
        self.voice = Voice(
            engines,
            output,
            settings,
            primary=primary,
            cache=cache,
            ducker=ducker,
            defaults=lambda: self.defaults,
            publish_event=publish_event,
            report_error=report_error,
            set_problem=self._set_problem,
        )
        self.scheduler = Scheduler(
            settings,
            speak=self.voice.speak,
            refuse=self.voice.refuse,
            quiet_now=self.quiet_now,
            publish_event=publish_event,
            report_error=report_error,
            on_change=on_change,
        )
        self.submit = self.scheduler.submit
        self.stop = self.scheduler.stop
        self.clear = self.scheduler.clear
        self.run = self.scheduler.run
        self._saving: asyncio.Future[None] | None = None  # the state file being written
        self._save_again = False
        self.candidates = self.voice.candidates
        self.engine_in_use = self.voice.engine_in_use
        self.warm = self.voice.warm
        self.clear_cache = self.voice.clear_cache

    # ------------------------------------------------------------------------------------------ state

    def quiet_now(self) -> bool:
        return self.defaults.quiet or self._settings.in_quiet_hours(self._clock().time())

    def state(self) -> StateReport:
        return StateReport(
            state=SpeakerState.SPEAKING if self.scheduler.current else SpeakerState.IDLE,
            queue_length=self.scheduler.queue_length,
            current_id=self.scheduler.current.request.id if self.scheduler.current else None,
            engine=self.engine_in_use(),
            problem=bool(self._problems),
            problems=sorted(self._problems),
            last_error=self._last_error,
            volume=self.defaults.volume,
            emotion=self.defaults.emotion,
            voice=self._settings.voice_name(self.defaults.voice),
            quiet=self.defaults.quiet,
            quiet_now=self.quiet_now(),
            clock_synchronized=clock_synchronized(),
            duck_db=self.defaults.duck_db,
        )

    def _set_problem(self, area: str, error: ErrorReport | None) -> None:
        if error is None:
            if self._problems.pop(area, None) is not None:
                LOG.info("%s works again", area)
                self._on_change()
            return
        self._last_error = LastError(code=error.code, message=error.message, ts=error.ts)
        self._problems[area] = self._last_error
        self._on_change()

    def update_defaults(self, **changes: object) -> None:
        """set/volume, set/emotion, set/voice, set/quiet: applied, saved, and shown in the state."""
        self.defaults = self.defaults.model_copy(update=changes)
        self._save_defaults()
        if self.defaults.quiet:
            self.scheduler.drop_where(lambda job: job.request.priority is not Priority.CRITICAL, "quiet")
        self._on_change()

    def _save_defaults(self) -> None:
        """Write the state file in a worker thread, one write at a time, the latest defaults last."""
        if self._saving is None or self._saving.done():
            self._saving = asyncio.ensure_future(self._save_latest())
        else:
            self._save_again = True

    async def _save_latest(self) -> None:
        while True:
            self._save_again = False
            await asyncio.to_thread(self.defaults.save, self._settings.state_file)
            if not self._save_again:
                return

    async def shutdown(self, grace: float) -> None:
        """The scheduler's shutdown, then the state file's last write."""
        await self.scheduler.shutdown(grace)
        if self._saving is not None:
            await asyncio.shield(self._saving)
