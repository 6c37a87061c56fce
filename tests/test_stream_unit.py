"""A streamed request through the speaker on fakes: the cost guard counts characters as they are pushed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

from mqtt_speaker.engines.base import AudioChunk, Voicing
from mqtt_speaker.models import TERMINAL_EVENTS, ErrorReport, Event, SayRequest, Segment
from mqtt_speaker.settings import Settings
from mqtt_speaker.speaker import Speaker
from mqtt_speaker.text import LiveText, Script
from tests.test_scheduler import CHUNK, FakeEngine, FakeOutput


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
        events: list[Event] = []
        errors: list[ErrorReport] = []
        ended = asyncio.Event()

        def publish(event: Event) -> None:
            events.append(event)
            if event.event_type in TERMINAL_EVENTS:
                ended.set()

        settings = Settings(state_file=tmp_path / "s.json", chars_per_minute=40, fallback=["espeak"])
        speaker = Speaker(
            {"cartesia": paid, "espeak": free},
            FakeOutput(),
            settings,
            publish_event=publish,
            report_error=errors.append,
            on_change=lambda: None,
        )
        worker = asyncio.create_task(speaker.run())
        text = LiveText()
        speaker.submit(SayRequest(id="s", segments=(Segment(text=""),)), text)
        for part in ["The first sentence is here. ", "A second one follows now. ", "And a third."]:
            text.append(part, Segment(text=""))
            await asyncio.sleep(0.05)  # the writer's pace
        text.end()
        await asyncio.wait_for(ended.wait(), 10)
        worker.cancel()
        return paid, free, events, errors

    paid, free, events, errors = asyncio.run(run())
    assert paid.spoken == ["The first sentence is here. "]  # 28 characters; 26 more would pass 40 a minute
    assert "".join(free.spoken) == "A second one follows now. And a third."  # from the first word not pushed
    assert [e.code.value for e in errors] == ["rate_limited"]
    finished = [e for e in events if e.event_type in TERMINAL_EVENTS]
    assert [(e.event_type.value, getattr(e, "engine", None)) for e in finished] == [("finished", "espeak")]
