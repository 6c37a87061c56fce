"""Fakes for the unit tests' seams (the end-to-end tests use real parts): an engine, an output, a voice for
the scheduler alone, a listener that records what the core says, and a speaker built on them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from mqtt_speaker.core.cache import AudioCache
from mqtt_speaker.core.scheduler import Job
from mqtt_speaker.core.speaker import Speaker
from mqtt_speaker.engines.base import SynthesisError, Voicing
from mqtt_speaker.playback.output import Playback, Played
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.audio import AudioChunk
from mqtt_speaker.speech.text import Script
from mqtt_speaker.speech.vocabulary import (
    TERMINAL_EVENTS,
    ErrorCode,
    ErrorReport,
    Event,
    FailedEvent,
    FinishedEvent,
    InterruptedEvent,
    SayRequest,
    Segment,
    StartedEvent,
    StateReport,
)

CHUNK = np.zeros(64, dtype=np.int16)


class FakeEngine:
    """A chunk per character of the first segment; a text starting with "fail" fails after two chunks."""

    name = "fake"
    billed = False
    emotion_applied = True
    identity = "fake"

    def problem(self) -> None:
        return None

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def synthesize(self, request: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        for i in range(len(request.segments[0].text)):
            await asyncio.sleep(0)
            if request.segments[0].text.startswith("fail") and i == 2:
                raise SynthesisError(ErrorCode.SYNTHESIS_FAILED, "asked to fail")
            yield AudioChunk(CHUNK, sample_rate, 0)


class FakeOutput:
    """Takes chunks a little slower than they come; announces the first speech as the real outputs do."""

    sample_rate = 16000

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        played = 0
        announced = False
        async for chunk in chunks:
            if chunk.is_speech and not announced:  # as the real outputs: speech, not the chime
                announced = True
                playback.on_first_audio()
            played += chunk.samples.size
            await asyncio.sleep(0.0005)
            if playback.stop.is_set():
                return Played(played / self.sample_rate, interrupted=True)
        return Played(played / self.sample_rate)

    async def close(self) -> None: ...


class Recorder:
    """A Listener that keeps everything the core says; `on_change` calls `changed` (e.g. to read the state)."""

    def __init__(self, changed: Callable[[], None] = lambda: None) -> None:
        self.events: list[Event] = []
        self.errors: list[ErrorReport] = []
        self.changes = 0
        self._changed = changed
        self.noted = asyncio.Event()

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.noted.set()

    def on_error(self, error: ErrorReport) -> None:
        self.errors.append(error)
        self.noted.set()

    def on_change(self) -> None:
        self.changes += 1
        self._changed()
        self.noted.set()


class BilledEngine(FakeEngine):
    """As FakeEngine, but billed (the cost guard counts it), as Cartesia is."""

    billed = True


class FakeVoice:
    """A Voicer for the scheduler alone: "speaks" a request for a few milliseconds a character, fails one
    whose text starts with "fail", stops when asked, and refuses nothing."""

    def __init__(self, listener: Recorder, per_char: float = 0.0001) -> None:
        self._listener = listener
        self._per_char = per_char

    def refuse(self, job: Job) -> ErrorReport | None:
        return None

    async def speak(self, job: Job) -> Event:
        request = job.request
        self._listener.on_event(
            StartedEvent(
                id=request.id,
                engine="fake",
                emotion="neutral",
                voice=None,
                segments=1,
                latency_ms=0,
                emotion_applied=True,
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.stop.wait(), len(request.text) * self._per_char)
        if job.interruption is not None:
            return InterruptedEvent(id=request.id, reason=job.interruption.reason, by=job.interruption.by)
        if request.text.startswith("fail"):
            return FailedEvent(id=request.id, code=ErrorCode.SYNTHESIS_FAILED, message="asked to fail")
        return FinishedEvent(id=request.id, duration_ms=1, engine="fake")


LONG = "x" * 2000  # about a second with the fakes


class Harness:
    """A speaker on fakes, and everything it says: events, errors, and the state at each change."""

    def __init__(
        self, tmp_path: Path, engines: dict[str, Any] | None = None, cache: AudioCache | None = None, **values: Any
    ) -> None:
        self.states: list[StateReport] = []
        self.listener = Recorder(changed=lambda: self.states.append(self.speaker.state()))
        self.events = self.listener.events
        self.errors = self.listener.errors
        clock = values.pop("clock", dt.datetime.now)
        settings = Settings(
            **{"state_file": tmp_path / "state.json", "cache": {"enabled": False, "dir": tmp_path}, **values}
        )
        self.speaker = Speaker(
            engines or {"fake": FakeEngine()},
            FakeOutput(),
            settings,
            self.listener,
            primary=next(iter(engines)) if engines else None,
            cache=cache,
            clock=clock,
        )
        self.worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.worker = asyncio.create_task(self.speaker.run())

    async def stop(self) -> None:
        await self.speaker.shutdown(grace=1)
        if self.worker is not None:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)

    def say(self, request_id: str, text: str = "hello", *, given: bool = True, **fields: Any) -> None:
        self.speaker.submit(SayRequest(id=request_id, id_given=given, segments=(Segment(text=text),), **fields))

    def of(self, request_id: str) -> list[str]:
        return [e.event_type.value for e in self.events if e.id == request_id]

    def end(self, request_id: str) -> tuple[str, str | None] | None:
        ends = [e for e in self.events if e.id == request_id and e.event_type in TERMINAL_EVENTS]
        return (ends[-1].event_type.value, getattr(ends[-1], "reason", None)) if ends else None

    async def until(self, condition: Callable[[], object]) -> None:
        async with asyncio.timeout(20):
            while not condition():
                self.listener.noted.clear()
                await self.listener.noted.wait()


def run(test: Callable[[], Any]) -> None:
    asyncio.run(test())
