"""Streamed requests through the speaker on fakes: the cost guard counts characters as they are pushed;
under random traffic (chunks, says, stop, clear, quiet) every request ends exactly once."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_speaker.core.speaker import Speaker
from mqtt_speaker.engines.base import Voicing
from mqtt_speaker.protocol.payloads import StreamChunk
from mqtt_speaker.protocol.streams import Streams
from mqtt_speaker.settings import Settings, StreamSettings
from mqtt_speaker.speech.audio import AudioChunk
from mqtt_speaker.speech.text import LiveText, Script
from mqtt_speaker.speech.vocabulary import (
    TERMINAL_EVENTS,
    ClearCommand,
    ErrorReport,
    Event,
    Priority,
    SayRequest,
    Segment,
)
from tests.fakes import CHUNK, FakeEngine, FakeOutput, Recorder


class PieceEngine(FakeEngine):
    """Speaks each piece as it arrives (one chunk per piece) and records what it was given."""

    def __init__(self, name: str, billed: bool) -> None:
        self.name = name
        self.billed = billed
        self.spoken: list[str] = []

    async def synthesize(self, script: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        async for piece in script.pieces(continuations=True):
            self.spoken.append(piece.text)
            yield AudioChunk(CHUNK, sample_rate, piece.segment)


def test_the_cost_guard_counts_a_stream_as_it_is_pushed_and_the_fallback_goes_on(tmp_path: Path) -> None:
    async def run() -> tuple[PieceEngine, PieceEngine, list[Event], list[ErrorReport]]:
        paid, free = PieceEngine("cartesia", billed=True), PieceEngine("espeak", billed=False)
        listener = Recorder()
        events, errors = listener.events, listener.errors
        settings = Settings(state_file=tmp_path / "s.json", chars_per_minute=40, fallback=["espeak"])
        speaker = Speaker({"cartesia": paid, "espeak": free}, FakeOutput(), settings, listener)
        worker = asyncio.create_task(speaker.run())
        text = LiveText()
        speaker.submit(SayRequest(id="s", segments=(Segment(text=""),)), text)
        for part in ["The first sentence is here. ", "A second one follows now. ", "And a third."]:
            text.append(part, Segment(text=""))
            await asyncio.sleep(0.05)  # the writer's pace
        text.end()
        async with asyncio.timeout(10):
            while not any(e.event_type in TERMINAL_EVENTS for e in events):
                listener.noted.clear()
                await listener.noted.wait()
        worker.cancel()
        return paid, free, events, errors

    paid, free, events, errors = asyncio.run(run())
    assert paid.spoken == ["The first sentence is here. "]  # 28 characters; 26 more would pass 40 a minute
    assert "".join(free.spoken) == "A second one follows now. And a third."  # from the first word not pushed
    assert [e.code.value for e in errors] == ["rate_limited"]
    finished = [e for e in events if e.event_type in TERMINAL_EVENTS]
    assert [(e.event_type.value, getattr(e, "engine", None)) for e in finished] == [("finished", "espeak")]


STREAM_OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("chunk"), st.sampled_from(["a", "b", "c"]), st.integers(0, 4), st.booleans()),
        st.tuples(st.just("say"), st.sampled_from(list(Priority))),
        st.tuples(st.sampled_from(["stop", "skip"])),
        st.tuples(st.just("clear"), st.booleans()),
        st.tuples(st.just("quiet"), st.booleans()),
        st.tuples(st.just("wait"), st.sampled_from([0, 0.001, 0.01, 0.06])),
    ),
    max_size=30,
)


async def stream_scenario(operations: list[tuple[Any, ...]], state_file: Path) -> None:
    class Listener(Recorder):
        def on_event(self, event: Event) -> None:
            super().on_event(event)
            streams.on_event(event)

    listener = Listener()
    events, errors = listener.events, listener.errors
    engine = PieceEngine("espeak", billed=False)
    speaker = Speaker(
        {"espeak": engine}, FakeOutput(), Settings(state_file=state_file, queue_size=3, dedupe_window=60), listener
    )
    streams = Streams(StreamSettings(timeout=0.05, gap_wait=0.02), speaker.submit, errors.append, remember_for=60)
    worker = asyncio.create_task(speaker.run())
    for n, op in enumerate(operations):
        match op:
            case ("chunk", stream_id, seq, end):
                chunk = StreamChunk(
                    id=stream_id,
                    seq=seq,
                    text=f"Part {seq}. ",
                    emotion=None,
                    end=end,
                    request=SayRequest(id=stream_id, id_given=True, segments=(Segment(text=""),)),
                    say_fields=[],
                    warnings=[],
                )
                streams.receive(chunk)
            case ("say", priority):
                speaker.submit(SayRequest(id=f"say{n}", segments=(Segment(text="A say."),), priority=priority))
            case ("stop" | "skip" as kind,):
                speaker.stop(kind)
            case ("clear", stop):
                speaker.clear(ClearCommand(stop=stop))
            case ("quiet", on):
                speaker.update_defaults(quiet=on)
            case ("wait", seconds):
                await asyncio.sleep(seconds)
    await asyncio.sleep(0.1)  # every stream times out (0.05 s without a chunk) and is spoken or dropped
    await speaker.shutdown(grace=2)
    streams.close()
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    ended = collections.Counter(e.id for e in events if e.event_type in TERMINAL_EVENTS)
    queued = {e.id for e in events if e.event_type.value == "queued"}
    assert all(count == 1 for count in ended.values()), ended  # exactly one terminal event each ...
    assert queued <= set(ended), (queued, ended)  # ... for every request accepted
    assert speaker.state().queue_length == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=STREAM_OPERATIONS)
def test_every_stream_ends_exactly_once_under_random_traffic(tmp_path_factory: Any, operations: list[Any]) -> None:
    asyncio.run(stream_scenario(operations, tmp_path_factory.mktemp("s") / "state.json"))
