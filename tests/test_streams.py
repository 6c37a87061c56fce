"""say/stream chunks into a stream's text (Streams), without a broker: order, repeats, gaps, the end."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mqtt_speaker.protocol.payloads import StreamChunk, parse_chunk
from mqtt_speaker.protocol.streams import Streams
from mqtt_speaker.settings import StreamSettings
from mqtt_speaker.speech.text import LiveText
from mqtt_speaker.speech.vocabulary import ErrorReport, FinishedEvent, SayRequest


def chunk(**fields: Any) -> StreamChunk:
    return parse_chunk(json.dumps({"id": "s", **fields}).encode(), max_text_length=1000)


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.submitted: list[tuple[SayRequest, LiveText]] = []
        self.errors: list[ErrorReport] = []
        self.streams = Streams(
            StreamSettings(**settings),
            lambda request, text: self.submitted.append((request, text)),
            self.errors.append,
            remember_for=60,
        )

    @property
    def text(self) -> LiveText:
        return self.submitted[0][1]


def test_chunks_are_applied_in_seq_order_once_and_the_end_ends_the_text() -> None:
    async def run() -> Harness:
        h = Harness()
        for seq, text in ((1, "two "), (0, "one "), (1, "two "), (0, "one "), (3, "four"), (2, "three ")):
            h.streams.receive(chunk(seq=seq, text=text, **({"emotion": "angry"} if seq == 3 else {})))
        h.streams.receive(chunk(seq=4, text="", end=True))
        return h

    h = asyncio.run(run())
    assert len(h.submitted) == 1  # the first chunk opened the stream: one request
    assert [(s.text, s.emotion) for s in h.text.segments()] == [("one two three ", None), ("four", "angry")]
    assert h.text.ended and h.errors == []


def test_a_missing_seq_is_skipped_after_the_wait_with_a_warning() -> None:
    async def run() -> Harness:
        h = Harness(gap_wait=0.05)
        h.streams.receive(chunk(seq=0, text="zero "))
        h.streams.receive(chunk(seq=3, text="three", end=True))
        await asyncio.sleep(0.2)  # the gap wait passes
        return h

    h = asyncio.run(run())
    assert "".join(s.text for s in h.text.segments()) == "zero three"
    assert h.text.ended
    ((code, field, message),) = [(e.code.value, e.field, e.message) for e in h.errors]
    assert (code, field) == ("stream_gap", "seq") and "seq 1-2 " in message


def test_a_chunk_after_the_request_ended_gets_an_error_naming_the_stream() -> None:
    async def run() -> Harness:
        h = Harness()
        h.streams.receive(chunk(seq=0, text="Hello."))
        h.streams.on_event(FinishedEvent(id="s", duration_ms=10, engine="espeak"))
        h.streams.receive(chunk(seq=1, text="Late."))
        return h

    h = asyncio.run(run())
    (error,) = h.errors
    assert error.code.value == "stream_ended" and error.id == "s" and "finished" in error.message
    assert "".join(s.text for s in h.text.segments()) == "Hello."


def test_say_fields_on_a_later_chunk_are_ignored_with_a_warning() -> None:
    async def run() -> Harness:
        h = Harness()
        h.streams.receive(chunk(seq=0, text="Hello. ", priority="high", voice="v1"))
        h.streams.receive(chunk(seq=1, text="Again.", priority="low", end=True))
        return h

    h = asyncio.run(run())
    request, text = h.submitted[0]
    assert (request.priority.value, request.voice) == ("high", "v1")  # the opening chunk's
    (warning,) = h.errors
    assert (warning.code.value, warning.field, warning.severity) == ("unknown_field", "priority", "warning")
    assert "".join(s.text for s in text.segments()) == "Hello. Again."
