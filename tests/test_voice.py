"""The voicing of one request alone (fake engines and output, no scheduler): the fallback goes on from the
first word not heard, `started` names the engine that speaks after a chime, the cost guard and the
internal errors of an engine; mute and volume as they change, media in place of speech, a chime from a URL
(the media from a local HTTP server, decoded by the real ffmpeg)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mqtt_speaker.core.defaults import Defaults
from mqtt_speaker.core.problems import Problems
from mqtt_speaker.core.scheduler import Job
from mqtt_speaker.core.voice import Voice
from mqtt_speaker.engines.base import SynthesisError, Voicing
from mqtt_speaker.playback.output import Playback, Played
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.audio import CHIME_SEGMENT, AudioChunk
from mqtt_speaker.speech.text import LiveText, Script
from mqtt_speaker.speech.vocabulary import (
    ErrorCode,
    Event,
    FinishedEvent,
    Priority,
    SayRequest,
    Segment,
    StartedEvent,
)
from tests.fakes import CHUNK, BilledEngine, FakeEngine, FakeOutput, Recorder
from tests.media_server import SECONDS, MediaServer


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    server = MediaServer().start()
    yield server
    server.stop()


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


class GainOutput(FakeOutput):
    """Records the gain each chunk is handed over at; `midway` runs after the third chunk."""

    def __init__(self, midway: Callable[[], None] = lambda: None) -> None:
        self.gains: list[float] = []
        self._midway = midway

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        async for _ in chunks:
            self.gains.append(playback.gain())
            if len(self.gains) == 3:
                self._midway()
        return Played(len(self.gains) * CHUNK.size / self.sample_rate)


def test_mute_silences_what_is_handed_over_next_but_never_a_critical_request(tmp_path: Path) -> None:
    settings = Settings(
        state_file=tmp_path / "state.json", cache={"enabled": False, "dir": tmp_path}, default_volume=80
    )
    defaults = Defaults(settings)
    listener = Recorder()

    def speak_with(output: GainOutput, request: SayRequest) -> None:
        built = Voice(
            {"fake": FakeEngine()}, output, settings, defaults=defaults, listener=listener, problems=Problems(listener)
        )
        speak(built, request)

    output = GainOutput(midway=lambda: defaults.set(muted=True))
    speak_with(output, SayRequest(id="r", segments=(Segment(text="abcdef"),)))
    assert output.gains == [0.8, 0.8, 0.8, 0.0, 0.0, 0.0]  # muted midway: from the next chunk on
    alarm = GainOutput()
    speak_with(alarm, SayRequest(id="a", segments=(Segment(text="abc"),), priority=Priority.CRITICAL))
    assert alarm.gains == [0.8, 0.8, 0.8]
    output = GainOutput(midway=lambda: defaults.set(muted=False, volume=40))
    speak_with(output, SayRequest(id="v", segments=(Segment(text="abcd"),), volume=0.5))
    assert output.gains == [0.0, 0.0, 0.0, 0.5]  # its own volume once unmuted, not the default


def test_a_text_no_engine_can_speak_plays_its_media_instead(tmp_path: Path, media: MediaServer) -> None:
    built, listener = voice(tmp_path, {"cartesia": RefusingEngine()}, fallback=[])
    request = SayRequest(id="f", segments=(Segment(text="Dinner is ready"),), fallback_media=media.url("tone.wav"))
    ended = speak(built, request)
    assert isinstance(ended, FinishedEvent) and ended.engine == "media" and ended.duration_ms > 1000
    started = next(e for e in listener.events if isinstance(e, StartedEvent))
    assert (started.engine, started.fallback, started.fallback_reason) == ("media", True, "cartesia: cartesia_auth")


def test_a_chime_from_a_url_plays_first_and_one_that_fails_is_a_warning(tmp_path: Path, media: MediaServer) -> None:
    played: list[int] = []
    chime_samples: list[int] = []

    class Segments(FakeOutput):
        async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
            async for chunk in chunks:
                played.append(chunk.segment)
                if chunk.segment == CHIME_SEGMENT:
                    chime_samples.append(chunk.samples.size)
            return Played(1.0)

    settings = Settings(state_file=tmp_path / "state.json", cache={"enabled": False, "dir": tmp_path})
    listener = Recorder()
    built = Voice(
        {"fake": FakeEngine()},
        Segments(),
        settings,
        defaults=Defaults(settings),
        listener=listener,
        problems=Problems(listener),
    )
    speak(built, SayRequest(id="c", segments=(Segment(text="abc"),), chime=media.url("tone.mp3")))
    chime = [s for s in played if s == CHIME_SEGMENT]
    assert played[: len(chime)] == chime and played[len(chime) :] == [0, 0, 0]  # the whole chime, then the speech
    assert sum(chime_samples) / FakeOutput.sample_rate == pytest.approx(SECONDS, abs=0.1)
    played.clear()
    ended = speak(built, SayRequest(id="m", segments=(Segment(text="abc"),), chime=media.url("missing")))
    assert ended.event_type.value == "finished" and played == [0, 0, 0]
    (warning,) = listener.errors
    assert (warning.code, warning.field, warning.severity) == (ErrorCode.MEDIA_UNAVAILABLE, "chime", "warning")


def test_a_request_for_a_local_engine_never_falls_back_to_a_billed_one(tmp_path: Path) -> None:
    cloud = RecordingEngine("cartesia")
    cloud.billed = True
    built, _ = voice(tmp_path, {"cartesia": cloud, "espeak": RefusingEngine()}, fallback=["cartesia"])
    ended = speak(built, SayRequest(id="l", segments=(Segment(text="Private"),), engine="espeak"))
    assert getattr(ended, "code", None) == ErrorCode.CARTESIA_AUTH  # espeak's own failure (the fake's code)
    assert cloud.asked == []
