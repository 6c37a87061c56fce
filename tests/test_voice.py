"""The voicing of one request alone (fake engines and output, no scheduler): the fallback goes on from the
first word not heard, `started` names the engine that speaks after a chime, the cost guard and the
internal errors of an engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from mqtt_speaker.core.defaults import Defaults
from mqtt_speaker.core.problems import Problems
from mqtt_speaker.core.scheduler import Job
from mqtt_speaker.core.voice import Voice
from mqtt_speaker.engines.base import SynthesisError, Voicing
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.audio import AudioChunk
from mqtt_speaker.speech.text import LiveText, Script
from mqtt_speaker.speech.vocabulary import ErrorCode, Event, SayRequest, Segment, StartedEvent
from tests.fakes import CHUNK, BilledEngine, FakeEngine, FakeOutput, Recorder


class CutOffEngine(FakeEngine):
    """Speaks the first segment, then part of the second, and loses the connection after 'Second part,'."""

    async def synthesize(self, request: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        yield AudioChunk(CHUNK, sample_rate, 0)
        yield AudioChunk(CHUNK, sample_rate, 1)
        raise SynthesisError(ErrorCode.SYNTHESIS_INTERRUPTED, "socket lost", spoken_chars=len("Second part,"))


class RecordingEngine(FakeEngine):
    def __init__(self, name: str = "espeak") -> None:
        self.name = name
        self.asked: list[Script] = []

    async def synthesize(self, request: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        self.asked.append(request)
        yield AudioChunk(CHUNK, sample_rate, 0)


class RefusingEngine(FakeEngine):
    async def synthesize(self, request: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        raise SynthesisError(ErrorCode.CARTESIA_AUTH, "key refused")
        yield AudioChunk(CHUNK, sample_rate, 0)  # pragma: no cover - an async generator that never yields


def voice(tmp_path: Path, engines: dict[str, Any], **values: Any) -> tuple[Voice, Recorder]:
    listener = Recorder()
    settings = Settings(state_file=tmp_path / "state.json", cache={"enabled": False, "dir": tmp_path}, **values)
    built = Voice(
        engines,
        FakeOutput(),
        settings,
        defaults=Defaults(settings),
        listener=listener,
        problems=Problems(listener),
        primary=next(iter(engines)),
    )
    return built, listener


def speak(built: Voice, request: SayRequest) -> Event:
    return asyncio.run(built.speak(Job(request, 0, LiveText.complete(request.segments))))


def test_a_fallback_goes_on_from_the_first_word_not_spoken_whole(tmp_path: Path) -> None:
    def run(text: str) -> tuple[list[Script], Event]:
        local = RecordingEngine()
        built, _ = voice(tmp_path, {"cartesia": CutOffEngine(), "espeak": local}, fallback=["espeak"])
        segments = (Segment(text="First part. "), Segment(text=text, emotion="angry"), Segment(text="Third."))
        return local.asked, speak(built, SayRequest(id="r", segments=segments))

    asked, ended = run("Second part, wherever it comes from.")
    (request,) = asked
    assert request.segments == (Segment(text="wherever it comes from.", emotion="angry"), Segment(text="Third."))
    assert ended.event_type.value == "finished"
    # Nothing but punctuation left of the segment: the fallback starts with the next one.
    asked, _ = run("Second part, ...")
    assert asked[0].segments == (Segment(text="Third."),)


def test_after_a_chime_started_names_the_engine_that_speaks(tmp_path: Path) -> None:
    def run(fallback: list[str]) -> tuple[list[Event], Event]:
        built, listener = voice(
            tmp_path, {"cartesia": RefusingEngine(), "espeak": RecordingEngine()}, fallback=fallback
        )
        ended = speak(built, SayRequest(id="c", segments=(Segment(text="x" * 50),), chime=True))
        return listener.events, ended

    events, _ = run(["espeak"])
    started = next(e for e in events if isinstance(e, StartedEvent))
    assert (started.engine, started.fallback) == ("espeak", True)
    # No fallback: the primary's own failure, not "cut short" because the chime had played.
    _, failed = run([])
    assert getattr(failed, "code", None) == ErrorCode.CARTESIA_AUTH


def test_the_cost_guard_refuses_what_would_pass_the_limit_and_counts_what_it_lets_pass(tmp_path: Path) -> None:
    built, _ = voice(tmp_path, {"cartesia": BilledEngine()}, chars_per_minute=10, fallback=[])

    def job(request_id: str, text: str) -> Job:
        request = SayRequest(id=request_id, segments=(Segment(text=text),))
        return Job(request, 0, LiveText.complete(request.segments))

    assert built.refuse(job("first", "hello")) is None
    refused = built.refuse(job("second", "world!"))
    assert refused is not None and refused.code is ErrorCode.RATE_LIMITED and "per minute" in refused.message
    assert built.refuse(job("third", "ok")) is None  # 5 + 2 characters: within the minute's 10


def test_a_request_for_a_local_engine_never_falls_back_to_a_billed_one(tmp_path: Path) -> None:
    cloud = RecordingEngine("cartesia")
    cloud.billed = True
    built, _ = voice(tmp_path, {"cartesia": cloud, "espeak": RefusingEngine()}, fallback=["cartesia"])
    ended = speak(built, SayRequest(id="l", segments=(Segment(text="Private"),), engine="espeak"))
    assert getattr(ended, "code", None) == ErrorCode.CARTESIA_AUTH  # espeak's own failure (the fake's code)
    assert cloud.asked == []
