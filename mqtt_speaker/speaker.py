"""The queue and the one worker that speaks requests in turn, with exactly one terminal event each."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mqtt_speaker.audio import AudioDeviceError, Output
from mqtt_speaker.engines.base import Engine, SynthesisError, Voicing
from mqtt_speaker.models import (
    DroppedEvent,
    ErrorCode,
    ErrorReport,
    Event,
    FailedEvent,
    FinishedEvent,
    InterruptedEvent,
    LastError,
    QueuedEvent,
    SayRequest,
    SpeakerState,
    StartedEvent,
    StateReport,
)

LOG = logging.getLogger(__name__)


@dataclass
class Job:
    request: SayRequest
    received: float = field(default_factory=time.monotonic)
    ended: bool = False


class Speaker:
    """Owns the queue, the current request and the problem flags; runs on the event loop only."""

    def __init__(
        self,
        engine: Engine,
        output: Output,
        voicing: Voicing,
        *,
        queue_size: int,
        publish_event: Callable[[Event], None],
        report_error: Callable[[ErrorReport], None],
        on_change: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._output = output
        self._voicing = voicing
        self._queue_size = queue_size
        self._publish_event = publish_event
        self._report_error = report_error
        self._on_change = on_change
        self._queue: collections.deque[Job] = collections.deque()
        self._wakeup = asyncio.Event()
        self._current: Job | None = None
        self._problems: dict[str, LastError] = {}
        self._last_error: LastError | None = None

    # ------------------------------------------------------------------------------------------ state

    def state(self) -> StateReport:
        return StateReport(
            state=SpeakerState.SPEAKING if self._current else SpeakerState.IDLE,
            queue_length=len(self._queue),
            current_id=self._current.request.id if self._current else None,
            engine=self._engine.name,
            problem=bool(self._problems),
            problems=sorted(self._problems),
            last_error=self._last_error,
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

    # -------------------------------------------------------------------------------------- lifecycle

    def _end(self, job: Job, event: Event) -> None:
        """Publish the request's terminal event: exactly once, whatever happens."""
        if job.ended:
            LOG.error("request %s already ended; not publishing %s", job.request.id, event.event_type)
            return
        job.ended = True
        self._publish_event(event)

    def submit(self, request: SayRequest) -> None:
        job = Job(request)
        if len(self._queue) >= self._queue_size:
            self._report_error(
                ErrorReport(
                    code=ErrorCode.QUEUE_FULL,
                    message=f"the queue is full ({self._queue_size} requests); request dropped",
                    id=request.id,
                )
            )
            self._end(job, DroppedEvent(id=request.id, reason="queue_full"))
            return
        self._queue.append(job)
        position = len(self._queue) + (1 if self._current else 0)
        self._publish_event(QueuedEvent(id=request.id, position=position, queue_length=len(self._queue)))
        self._wakeup.set()
        self._on_change()

    async def run(self) -> None:
        """Speak queued requests one at a time, in arrival order, until cancelled."""
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            job = self._queue.popleft()
            self._current = job
            self._on_change()
            try:
                await self._speak(job)
            finally:
                self._current = None
                self._on_change()

    def shutdown(self) -> None:
        """End everything: the current request is interrupted, queued ones are dropped."""
        if self._current is not None and not self._current.ended:
            self._end(self._current, InterruptedEvent(id=self._current.request.id, reason="shutdown"))
        while self._queue:
            job = self._queue.popleft()
            self._end(job, DroppedEvent(id=job.request.id, reason="shutdown"))

    # --------------------------------------------------------------------------------------- speaking

    async def _speak(self, job: Job) -> None:
        request = job.request
        engine = self._engine
        first_emotion = request.segments[0].emotion or self._voicing.emotion

        def started() -> None:
            latency = round((time.monotonic() - job.received) * 1000)
            self._publish_event(
                StartedEvent(
                    id=request.id,
                    engine=engine.name,
                    emotion=first_emotion,
                    voice=request.voice or self._voicing.voice,
                    segments=len(request.segments),
                    latency_ms=latency,
                )
            )
            LOG.info("speaking %s with %s (%d ms after it arrived)", request.id, engine.name, latency)

        voicing = Voicing(
            emotion=self._voicing.emotion,
            voice=request.voice or self._voicing.voice,
            language=request.language or self._voicing.language,
        )
        failure: ErrorReport | None = None
        try:
            chunks = engine.synthesize(request, voicing, self._output.sample_rate)
            async with contextlib.aclosing(chunks):
                played = await self._output.play(chunks, request.id, started)
        except SynthesisError as exc:
            failure = ErrorReport(code=exc.code, message=exc.message, id=request.id)
            self._set_problem("tts", failure)
        except AudioDeviceError as exc:
            failure = ErrorReport(code=ErrorCode.AUDIO_DEVICE_UNAVAILABLE, message=str(exc), id=request.id)
            self._set_problem("audio", failure)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            LOG.exception("speaking %s failed unexpectedly", request.id)
            failure = ErrorReport(code=ErrorCode.INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}", id=request.id)
        if failure is None and played.seconds == 0:
            failure = ErrorReport(
                code=ErrorCode.SYNTHESIS_FAILED, message=f"{engine.name} produced no audio", id=request.id
            )
        if failure is not None:
            self._report_error(failure)
            self._end(job, FailedEvent(id=request.id, code=failure.code, message=failure.message))
            return
        self._set_problem("tts", None)
        self._set_problem("audio", None)
        duration = round(played.seconds * 1000)
        self._end(job, FinishedEvent(id=request.id, duration_ms=duration, engine=engine.name))
        LOG.info("finished %s (%d ms of audio)", request.id, duration)
