"""The speaker: a request's way from `submit` to its terminal event, and what the state shows.

It joins the scheduling policy (scheduler.py: queue, priorities, preemption, TTL, dedupe, quiet,
shutdown; no audio) and the voicing of one request (voice.py: engine choice, fallback and resume,
chime, cache, cost guard), and owns the runtime defaults and the problem flags. Every request's text
is a stream (speech/text.py); a plain say is one that is complete when it arrives. What it says goes
to one Listener (the daemon, which hands it to every protocol adapter).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from mqtt_speaker.clock import clock_error_ms, clock_synchronized
from mqtt_speaker.core.cache import AudioCache
from mqtt_speaker.core.costguard import CostGuard
from mqtt_speaker.core.defaults import Defaults
from mqtt_speaker.core.listener import Listener
from mqtt_speaker.core.problems import Problems
from mqtt_speaker.core.quiet import Quiet
from mqtt_speaker.core.scheduler import Scheduler
from mqtt_speaker.core.voice import Voice
from mqtt_speaker.engines.base import Engine
from mqtt_speaker.playback.ducking import Ducker
from mqtt_speaker.playback.output import Output
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.text import LiveText
from mqtt_speaker.speech.vocabulary import (
    ClearCommand,
    ErrorCode,
    ErrorReport,
    InterruptReason,
    SayRequest,
    SpeakerState,
    StateReport,
)

LOG = logging.getLogger(__name__)
WARM_QUEUE = 8  # cache/warm lists waiting for the one warmer (each holds at most 100 texts)


class Speaker:
    """The scheduler and the voice of one speaker, its runtime defaults and problem flags (event loop only)."""

    def __init__(  # noqa: PLR0913 - the parts a speaker is made of (keyword-only past the listener)
        self,
        engines: dict[str, Engine],
        output: Output,
        settings: Settings,
        listener: Listener,
        *,
        primary: str | None = None,
        cache: AudioCache | None = None,
        ducker: Ducker | None = None,
        clock: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self._settings = settings
        self._listener = listener
        self.defaults = Defaults(settings)
        self.problems = Problems(listener)
        self.guard = CostGuard(settings)  # the characters this room pays for, its own requests' and the house's
        self.voice = Voice(
            engines,
            output,
            settings,
            defaults=self.defaults,
            listener=listener,
            problems=self.problems,
            primary=primary,
            cache=cache,
            ducker=ducker,
            guard=self.guard,
        )
        quiet = Quiet(settings, lambda: self.defaults.current.quiet, clock)
        self.scheduler = Scheduler(settings, self.voice, quiet, listener)
        self._warm_queue: asyncio.Queue[list[SayRequest]] = asyncio.Queue(WARM_QUEUE)

    # ----------------------------------------------------------------------------------- requests

    def submit(self, request: SayRequest, text: LiveText | None = None) -> None:
        """Queue a request; its text is `text` as it arrives (a stream), or else its complete segments."""
        self.scheduler.submit(request, text)

    def stop(self, reason: InterruptReason) -> None:
        """`stop` / `skip`: end what is playing now; the queue goes on."""
        self.scheduler.stop(reason)

    def clear(self, command: ClearCommand) -> None:
        self.scheduler.clear(command)

    async def run(self) -> None:
        """Speak queued requests one at a time, and warm the cache a list at a time, until cancelled."""
        await asyncio.gather(self.scheduler.run(), self._warm_lists())

    def warm(self, requests: list[SayRequest]) -> None:
        """cache/warm: synthesize into the cache without playing, after the lists before it (at most
        WARM_QUEUE wait; refused at shutdown)."""
        why = "the daemon is shutting down" if self.scheduler.closing else None
        if why is None:
            try:
                self._warm_queue.put_nowait(requests)
                return
            except asyncio.QueueFull:
                why = f"{WARM_QUEUE} cache/warm lists are already waiting"
        error = ErrorReport(code=ErrorCode.QUEUE_FULL, message=f"cache warm: not done, {why}", field="warm")
        self._listener.on_error(error)

    async def _warm_lists(self) -> None:
        """The one task that warms the cache, a list at a time (cancelled at shutdown, before engines close)."""
        while True:
            requests = await self._warm_queue.get()
            try:
                await self.voice.warm(requests)
            except Exception:  # one bad list must not end warming for good
                LOG.exception("cache warm failed unexpectedly")

    def clear_cache(self) -> None:
        self.voice.clear_cache()

    # ------------------------------------------------------------------------------------- state

    def engine_in_use(self) -> str:
        return self.voice.engine_in_use()

    def state(self) -> StateReport:
        current = self.scheduler.current
        defaults = self.defaults.current
        return StateReport(
            state=SpeakerState.SPEAKING if current else SpeakerState.IDLE,
            queue_length=self.scheduler.queue_length,
            current_id=current.request.id if current else None,
            engine=self.engine_in_use(),
            problem=bool(self.problems.areas),
            problems=sorted(self.problems.areas),
            last_error=self.problems.last_error,
            volume=defaults.volume,
            emotion=defaults.emotion,
            voice=self._settings.voice_name(defaults.voice),
            quiet=defaults.quiet,
            quiet_now=self.scheduler.quiet.now(),
            clock_synchronized=clock_synchronized(),
            clock_error_ms=clock_error_ms(),
            duck_db=defaults.duck_db,
            groups=list(self._settings.sync.groups),
            shares=self._settings.sync.share,
        )

    def update_defaults(self, **changes: object) -> None:
        """set/volume, set/emotion, set/voice, set/quiet, set/duck_db: applied, saved, and shown in the state."""
        self.defaults.set(**changes)
        self.scheduler.drop_quieted()
        self._listener.on_change()

    async def shutdown(self, grace: float) -> None:
        """The scheduler's shutdown, then the state file's last write."""
        await self.scheduler.shutdown(grace)
        await self.defaults.saved()
