"""Synthesis for the whole house: in the room chosen to synthesize a broadcast, the broadcast's audio is
made once (the room's engines, fallback and resume, cache and cost guard, as for its own requests) and
handed to an output that publishes it to every room (protocol/fanout.py), this one included.

It runs beside the room's own queue, not in it: a room that is busy, in quiet mode, or has the id in its
dedupe window still synthesizes for the others (its own playback keeps its own policy). Its events are
not the room's (each room publishes its own request's events); its errors are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from mqtt_speaker.core.cache import AudioCache
from mqtt_speaker.core.costguard import CostGuard
from mqtt_speaker.core.defaults import Defaults
from mqtt_speaker.core.listener import Listener
from mqtt_speaker.core.problems import Problems
from mqtt_speaker.core.scheduler import Job
from mqtt_speaker.core.voice import Voice
from mqtt_speaker.engines.base import Engine
from mqtt_speaker.playback.output import Output
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.text import LiveText
from mqtt_speaker.speech.vocabulary import DroppedEvent, ErrorCode, ErrorReport, Event, SayRequest

LOG = logging.getLogger(__name__)
MAX_SYNTHESES = 4  # broadcasts synthesized at once for the house


class BroadcastOutput(Output, Protocol):
    """Where a broadcast's audio goes (every room), told how the synthesis ended."""

    def ended(self, event: Event) -> None:
        """The synthesis ended with `event` (finished: all was sent; else the rooms take over)."""


class _Relay:
    """The broadcast's own listener: its errors are the room's (an engine's outage, the cost guard), its
    events are not (every room, this one included, publishes its own request's)."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def on_event(self, event: Event) -> None:
        LOG.debug("broadcast synthesis %s: %s", event.id, event.event_type)

    def on_error(self, error: ErrorReport) -> None:
        self._listener.on_error(error)

    def on_change(self) -> None:
        self._listener.on_change()


class Broadcaster:
    """The syntheses this room makes for the house (event loop only; at most MAX_SYNTHESES at once)."""

    def __init__(  # noqa: PLR0913 - the parts of a voice, shared with the room's own (keyword-only)
        self,
        engines: dict[str, Engine],
        settings: Settings,
        *,
        defaults: Defaults,
        listener: Listener,
        problems: Problems,
        guard: CostGuard,
        primary: str | None,
        cache: AudioCache | None,
    ) -> None:
        self._engines = {name: engine for name, engine in engines.items()}
        self._settings = settings
        self._defaults = defaults
        self._listener = listener
        self._relay = _Relay(listener)
        self._problems = problems
        self._guard = guard
        self._primary = primary
        self._cache = cache
        self._running: dict[str, tuple[asyncio.Task[None], Job]] = {}  # by broadcast key
        self._seq = 0

    def synthesize(self, request: SayRequest, text: LiveText, output: BroadcastOutput) -> bool:
        """Make the broadcast's audio for the house into `output`; False when MAX_SYNTHESES are running
        (the rooms then synthesize for themselves)."""
        key = request.shared
        assert key is not None
        if key in self._running:
            return True
        if len(self._running) >= MAX_SYNTHESES:
            self._listener.on_error(
                ErrorReport(
                    code=ErrorCode.QUEUE_FULL,
                    message=f"broadcast {request.id}: {MAX_SYNTHESES} broadcasts are being synthesized already; "
                    "each room speaks this one itself",
                    id=request.id,
                    severity="warning",
                )
            )
            return False
        # Played by each room with its own chime, volume, ducking and start: the audio alone, at full scale.
        plain = request.model_copy(update={"chime": False, "volume": 1.0, "duck": False, "start_at": None})
        voice = Voice(
            self._engines,
            output,
            self._settings,
            defaults=self._defaults,
            listener=self._relay,
            problems=self._problems,
            primary=self._primary,
            cache=self._cache,
            guard=self._guard,
        )
        self._seq += 1
        job = Job(plain, self._seq, text)
        if (refused := voice.refuse(job)) is not None:  # the cost guard: the house's characters, counted once
            self._listener.on_error(refused)
            output.ended(DroppedEvent(id=request.id, reason="rate_limited"))
            return True
        self._running[key] = (asyncio.create_task(self._run(key, voice, job, output), name=f"broadcast-{key}"), job)
        return True

    async def _run(self, key: str, voice: Voice, job: Job, output: BroadcastOutput) -> None:
        try:
            event = await voice.speak(job)
            LOG.info("broadcast %s synthesized for the house: %s", job.request.id, event.event_type)
            output.ended(event)
        except Exception:
            LOG.exception("synthesizing broadcast %s failed unexpectedly", job.request.id)
        finally:
            self._running.pop(key, None)

    def stop(self, scope: str | None = None) -> None:
        """Stop the syntheses of broadcasts to `scope` ('all' or 'group/<name>'; None: every one)."""
        for _task, job in self._running.values():
            if scope is None or scope in (job.request.scope, "all"):
                job.stop.set()

    async def close(self) -> None:
        for task, job in list(self._running.values()):
            job.stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
