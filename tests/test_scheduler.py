"""The scheduler's invariant under random traffic: every accepted request ends with exactly one terminal event.

A unit test with seams: a fake engine and a fake output stand in for Cartesia and the sound card (the
end-to-end tests use the real ones).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_speaker.audio import Playback, Played
from mqtt_speaker.engines.base import AudioChunk, SynthesisError, Voicing
from mqtt_speaker.models import TERMINAL_EVENTS, ClearCommand, ErrorCode, Event, Priority, SayRequest, Segment
from mqtt_speaker.settings import Settings
from mqtt_speaker.speaker import Speaker
from mqtt_speaker.text import Script

CHUNK = np.zeros(64, dtype=np.int16)


class FakeEngine:
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
    sample_rate = 16000

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        played = 0
        announced = False
        async for chunk in chunks:
            if chunk.segment >= 0 and not announced:  # as the real outputs: speech, not the chime
                announced = True
                playback.on_first_audio()
            played += chunk.samples.size
            await asyncio.sleep(0.0005)
            if playback.stop.is_set():
                return Played(played / self.sample_rate, interrupted=True)
        return Played(played / self.sample_rate)

    async def close(self) -> None: ...


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("say"),
            st.sampled_from(list(Priority)),
            st.sampled_from(["a", "b", "c", None, None, None]),  # repeated ids exercise de-duplication
            st.sampled_from([None, None, 0.002, 0.05]),  # ttl
            st.sampled_from(["hello world", "fail here", "hi"]),
        ),
        st.tuples(st.sampled_from(["stop", "skip"])),
        st.tuples(st.just("clear"), st.sampled_from([None, *Priority]), st.booleans()),
        st.tuples(st.just("quiet"), st.booleans()),
        st.tuples(st.just("wait"), st.sampled_from([0, 0.001, 0.01])),
    ),
    max_size=40,
)


async def scenario(operations: list[tuple[Any, ...]], state_file: Path) -> None:
    events: list[Event] = []
    submitted: collections.Counter[str] = collections.Counter()
    config = Settings(queue_size=4, state_file=state_file, dedupe_window=60)
    speaker = Speaker(
        {"fake": FakeEngine()},
        FakeOutput(),
        config,
        publish_event=events.append,
        report_error=lambda _e: None,
        on_change=lambda: None,
    )
    worker = asyncio.create_task(speaker.run())
    for n, op in enumerate(operations):
        match op:
            case ("say", priority, given_id, ttl, text):
                request_id = given_id or f"gen{n}"
                request = SayRequest(
                    id=request_id,
                    id_given=given_id is not None,
                    segments=(Segment(text=text),),
                    priority=priority,
                    ttl=ttl,
                )
                submitted[request_id] += 1
                speaker.submit(request)
            case ("stop" | "skip" as kind,):
                speaker.stop(kind)
            case ("clear", below, stop):
                speaker.clear(ClearCommand(below=below, stop=stop))
            case ("quiet", on):
                speaker.update_defaults(quiet=on)
            case ("wait", seconds):
                await asyncio.sleep(seconds)
    await asyncio.sleep(0.02)
    await speaker.shutdown(grace=2)
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)

    ended = collections.Counter(e.id for e in events if e.event_type in TERMINAL_EVENTS)
    assert ended == submitted, (ended, submitted)
    assert speaker.state().queue_length == 0
    # Nothing happens to a request after its terminal event.
    seen_end: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.event_type in TERMINAL_EVENTS:
            seen_end[event.id] += 1
        else:
            assert seen_end[event.id] < submitted[event.id], event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_every_accepted_request_ends_exactly_once(tmp_path_factory: Any, operations: list[tuple[Any, ...]]) -> None:
    asyncio.run(scenario(operations, tmp_path_factory.mktemp("s") / "state.json"))


def test_priority_order_and_critical_preemption(tmp_path: Path) -> None:
    async def run() -> list[tuple[str, str, str | None]]:
        events: list[Any] = []
        all_ended = asyncio.Event()

        def publish(event: Event) -> None:
            events.append(event)
            if sum(e.event_type in TERMINAL_EVENTS for e in events) == 6:
                all_ended.set()

        config = Settings(state_file=tmp_path / "s.json")
        speaker = Speaker(
            {"fake": FakeEngine()},
            FakeOutput(),
            config,
            publish_event=publish,
            report_error=print,
            on_change=lambda: None,
        )

        def say(request_id: str, priority: Priority) -> None:
            speaker.submit(SayRequest(id=request_id, segments=(Segment(text="x" * 200),), priority=priority))

        say("first", Priority.NORMAL)
        worker = asyncio.create_task(speaker.run())
        await asyncio.sleep(0.01)  # "first" is speaking
        say("low", Priority.LOW)
        say("normal", Priority.NORMAL)
        say("high", Priority.HIGH)
        say("high2", Priority.HIGH)
        say("alarm", Priority.CRITICAL)
        await asyncio.wait_for(all_ended.wait(), 30)
        worker.cancel()
        return [
            (e.id, e.event_type.value, getattr(e, "reason", None) or getattr(e, "by", None))
            for e in events
            if e.event_type in TERMINAL_EVENTS
        ]

    assert asyncio.run(run()) == [
        ("normal", "dropped", "preempted"),  # in queue order
        ("low", "dropped", "preempted"),
        ("first", "interrupted", "priority"),
        ("alarm", "finished", None),
        ("high", "finished", None),
        ("high2", "finished", None),
    ]


class CutOffEngine(FakeEngine):
    """Speaks the first segment, then part of the second, and loses the connection after 'Second part,'."""

    async def synthesize(self, request: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        yield AudioChunk(CHUNK, sample_rate, 0)
        yield AudioChunk(CHUNK, sample_rate, 1)
        raise SynthesisError(ErrorCode.SYNTHESIS_INTERRUPTED, "socket lost", spoken_chars=len("Second part,"))


class RecordingEngine(FakeEngine):
    def __init__(self) -> None:
        self.asked: list[Script] = []

    async def synthesize(self, request: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        self.asked.append(request)
        yield AudioChunk(CHUNK, sample_rate, 0)


def make_speaker(
    tmp_path: Path, engines: dict[str, Any] | None = None, **settings: Any
) -> tuple[Speaker, list[Event], asyncio.Event]:
    """A speaker on fakes; the events it publishes; an asyncio.Event set on each of them."""
    events: list[Event] = []
    published = asyncio.Event()
    clock = settings.pop("clock", dt.datetime.now)

    def publish(event: Event) -> None:
        events.append(event)
        published.set()

    speaker = Speaker(
        engines or {"fake": FakeEngine()},
        FakeOutput(),
        Settings(state_file=tmp_path / "s.json", **settings),
        publish_event=publish,
        report_error=lambda _: None,
        on_change=lambda: None,
        clock=clock,
    )
    return speaker, events, published


def ends(events: list[Event]) -> list[tuple[str, str, str | None]]:
    return [(e.id, e.event_type.value, getattr(e, "reason", None)) for e in events if e.event_type in TERMINAL_EVENTS]


async def until(published: asyncio.Event, condition: Any) -> None:
    """Wait (event by event) until `condition()` holds."""
    async with asyncio.timeout(10):
        while not condition():
            published.clear()
            await published.wait()


def say(speaker: Speaker, request_id: str, text: str = "x" * 200) -> None:
    speaker.submit(SayRequest(id=request_id, segments=(Segment(text=text),)))


def test_a_fallback_goes_on_from_the_first_word_not_spoken_whole(tmp_path: Path) -> None:
    async def run(text: str) -> tuple[list[Script], list[Event]]:
        local = RecordingEngine()
        engines = {"cartesia": CutOffEngine(), "espeak": local}
        speaker, events, published = make_speaker(tmp_path, engines, fallback=["espeak"])
        segments = (Segment(text="First part. "), Segment(text=text, emotion="angry"), Segment(text="Third."))
        speaker.submit(SayRequest(id="r", segments=segments))
        worker = asyncio.create_task(speaker.run())
        await until(published, lambda: ends(events))
        worker.cancel()
        return local.asked, events

    asked, events = asyncio.run(run("Second part, wherever it comes from."))
    (request,) = asked
    assert request.segments == (Segment(text="wherever it comes from.", emotion="angry"), Segment(text="Third."))
    assert [e.event_type.value for e in events if e.event_type in TERMINAL_EVENTS] == ["finished"]
    # Nothing but punctuation left of the segment: the fallback starts with the next one.
    asked, _ = asyncio.run(run("Second part, ..."))
    assert asked[0].segments == (Segment(text="Third."),)


def test_a_request_arriving_during_shutdown_is_dropped_not_left_queued(tmp_path: Path) -> None:
    async def run() -> list[Event]:
        speaker, events, published = make_speaker(tmp_path)
        say(speaker, "long", "x" * 2000)
        worker = asyncio.create_task(speaker.run())
        await until(published, lambda: any(e.event_type.value == "started" for e in events))
        closing = asyncio.create_task(speaker.shutdown(grace=1.5))
        await asyncio.sleep(0)
        say(speaker, "late")  # the MQTT link still delivers until it is stopped
        await closing
        worker.cancel()
        return events

    events = asyncio.run(run())
    assert ends(events) == [("late", "dropped", "shutdown"), ("long", "interrupted", "shutdown")]
    assert [e.event_type.value for e in events if e.id == "late"] == ["dropped"]


def test_quiet_hours_beginning_drop_what_is_still_queued(tmp_path: Path) -> None:
    async def run() -> list[Event]:
        now = [dt.datetime(2026, 11, 25, 21, 59, 59)]
        speaker, events, published = make_speaker(tmp_path, quiet_hours="22:00-07:00", clock=lambda: now[0])
        say(speaker, "before")
        say(speaker, "waiting")
        worker = asyncio.create_task(speaker.run())
        await until(published, lambda: any(e.event_type.value == "started" for e in events))
        now[0] = dt.datetime(2026, 11, 25, 22, 0, 1)
        await until(published, lambda: len(ends(events)) == 2)
        worker.cancel()
        return events

    assert ends(asyncio.run(run())) == [("before", "finished", None), ("waiting", "dropped", "quiet")]


class RefusingEngine(FakeEngine):
    async def synthesize(self, request: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        raise SynthesisError(ErrorCode.CARTESIA_AUTH, "key refused")
        yield AudioChunk(CHUNK, sample_rate, 0)  # pragma: no cover - an async generator that never yields


def test_after_a_chime_started_names_the_engine_that_speaks(tmp_path: Path) -> None:
    async def run(fallback: list[str]) -> list[Event]:
        local = FakeEngine()
        local.name = "espeak"
        engines = {"cartesia": RefusingEngine(), "espeak": local}
        speaker, events, published = make_speaker(tmp_path, engines, fallback=fallback)
        speaker.submit(SayRequest(id="c", segments=(Segment(text="x" * 50),), chime=True))
        worker = asyncio.create_task(speaker.run())
        await until(published, lambda: ends(events))
        worker.cancel()
        return events

    events = asyncio.run(run(["espeak"]))
    started = next(e for e in events if e.event_type.value == "started")
    assert (getattr(started, "engine", None), getattr(started, "fallback", None)) == ("espeak", True)
    # No fallback: the primary's own failure, not "cut short" because the chime had played.
    failed = next(e for e in asyncio.run(run([])) if e.event_type.value == "failed")
    assert getattr(failed, "code", None) == ErrorCode.CARTESIA_AUTH
