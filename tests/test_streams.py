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


def spoken(h: Harness) -> list[tuple[str, str | None]]:
    return [(s.text, s.emotion) for s in h.text.segments()]


def test_a_later_chunk_with_invalid_say_fields_is_spoken_and_its_fields_ignored() -> None:
    async def run() -> Harness:
        h = Harness()
        h.streams.receive(chunk(seq=0, text="Hello. "))
        h.streams.receive(chunk(seq=1, text="Still here. ", priority="urgent", language="klingon"))
        h.streams.receive(chunk(seq=2, text="Bye.", speed="fast", end=True))
        return h

    h = asyncio.run(run())
    assert spoken(h) == [("Hello. Still here. Bye.", None)] and h.text.ended
    assert [(e.code.value, e.field) for e in h.errors] == [
        ("unknown_field", "language, priority"),
        ("unknown_field", "speed"),
    ]


def test_an_opening_chunk_with_invalid_say_fields_opens_nothing_and_its_stream_stays_refused() -> None:
    async def run() -> Harness:
        h = Harness()
        h.streams.receive(chunk(seq=0, text="Hello. ", priority="urgent"))
        h.streams.receive(chunk(seq=1, text="The tail.", end=True))
        return h

    h = asyncio.run(run())
    assert h.submitted == []
    refused, tail = h.errors
    assert (refused.code.value, refused.field, refused.id) == ("invalid_request", "priority", "s")
    assert "not opened" in refused.message
    assert tail.code.value == "stream_ended" and "not opened" in tail.message


def test_an_opening_chunk_with_a_seq_out_of_range_opens_nothing() -> None:
    async def run() -> Harness:
        h = Harness(max_seq_ahead=10)
        h.streams.receive(chunk(seq=5000, text="Lost in the future."))
        assert h.submitted == []  # nothing holds the speaker
        h.streams.receive(chunk(seq=0, text="Hello.", end=True))
        return h

    h = asyncio.run(run())
    (error,) = h.errors
    assert (error.code.value, error.field) == ("invalid_request", "seq")
    assert len(h.submitted) == 1 and spoken(h) == [("Hello.", None)]


def test_a_repeat_of_a_chunk_after_the_stream_ended_is_ignored_and_a_new_one_is_not() -> None:
    async def run() -> Harness:
        h = Harness()
        h.streams.receive(chunk(seq=0, text="Hello. "))
        h.streams.receive(chunk(seq=1, text="Bye.", end=True))
        h.streams.receive(chunk(seq=1, text="Bye.", end=True))  # QoS 1 delivers the last chunk again
        h.streams.on_event(FinishedEvent(id="s", duration_ms=10, engine="espeak"))
        h.streams.receive(chunk(seq=1, text="Bye.", end=True))  # ... even after the request finished
        assert h.errors == []
        h.streams.receive(chunk(seq=2, text="More."))
        return h

    h = asyncio.run(run())
    (error,) = h.errors
    assert error.code.value == "stream_ended" and "finished" in error.message


def test_an_unknown_emotion_on_a_later_chunk_keeps_the_streams_emotion_and_says_so() -> None:
    async def run() -> Harness:
        h = Harness()
        h.streams.receive(chunk(seq=0, text="Calm down. ", emotion="angry"))
        h.streams.receive(chunk(seq=1, text="Now!", emotion="grumpy", end=True))
        return h

    h = asyncio.run(run())
    assert spoken(h) == [("Calm down. Now!", "angry")]
    (warning,) = h.errors
    assert (warning.code.value, warning.field, warning.severity) == ("invalid_emotion", "emotion", "warning")
    assert "the stream's emotion so far" in warning.message and "default emotion instead" not in warning.message


def test_a_stream_refused_for_too_many_streams_is_not_opened_by_its_next_chunk() -> None:
    async def run() -> Harness:
        h = Harness(max_open=1)
        h.streams.receive(chunk(id="first", seq=0, text="One. "))
        h.streams.receive(chunk(id="second", seq=0, text="Head. "))
        h.streams.receive(chunk(id="first", seq=1, text="Done.", end=True))  # room again
        h.streams.receive(chunk(id="second", seq=1, text="Tail only.", end=True))
        return h

    h = asyncio.run(run())
    assert [request.id for request, _ in h.submitted] == ["first"]
    refused, tail = h.errors
    assert (refused.code.value, refused.id) == ("too_many_streams", "second")
    assert (tail.code.value, tail.id) == ("stream_ended", "second") and "too many streams" in tail.message
