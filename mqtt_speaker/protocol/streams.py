"""Streamed say requests (`say/stream`): chunks put in order and appended to the request's LiveText.

The first chunk of an id opens the stream: a request is queued whose text is the stream's LiveText.
Chunks are applied in `seq` order: a repeated seq is ignored (QoS 1 may deliver twice), a missing one
is waited for `gap_wait` seconds and then skipped with a warning; without seq, arrival order. `end`
(or `timeout` seconds without a chunk, with a `stream_timeout` warning) ends the text. Once the
request has ended (finished, interrupted, dropped, failed) further chunks get a `stream_ended` error
(a repeat of a chunk it had is ignored), for as long as a request id is remembered (`dedupe_window`);
so do the chunks of a stream whose first chunk could not open it (its say fields, too many streams).
Event loop only; every map here is bounded (max_open, and the ended ids are kept for a while).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import TTLCache

from mqtt_speaker.protocol.payloads import Refusal, StreamChunk
from mqtt_speaker.settings import StreamSettings
from mqtt_speaker.speech.text import LiveText
from mqtt_speaker.speech.vocabulary import (
    TERMINAL_EVENTS,
    ErrorCode,
    ErrorReport,
    Event,
    SayRequest,
    Segment,
    Warning_,
)

LOG = logging.getLogger(__name__)
ENDED_MAX = 1000


@dataclass
class _Stream:
    request: SayRequest
    text: LiveText
    voice: Segment
    next_seq: int = 0
    waiting: dict[int, StreamChunk] = field(default_factory=dict)  # arrived ahead of a missing seq
    timer: asyncio.TimerHandle | None = None
    gap_timer: asyncio.TimerHandle | None = None


@dataclass(frozen=True)
class _Ended:
    how: str  # "ended", "finished", "not opened: ...", ...
    next_seq: int  # the seqs below it were had: a repeat of one is ignored


class Streams:
    """The open streams of one speaker."""

    def __init__(
        self,
        settings: StreamSettings,
        submit: Callable[[SayRequest, LiveText], None],
        report_error: Callable[[ErrorReport], None],
        *,
        remember_for: float,
    ) -> None:
        self._settings = settings
        self._submit = submit
        self._report = report_error
        self._open: dict[str, _Stream] = {}
        # id -> how it ended; an ended stream's id is kept like any request id (the dedupe window)
        self._ended: TTLCache[str, _Ended] = TTLCache(ENDED_MAX, ttl=remember_for)

    def _error(self, code: ErrorCode, message: str, stream_id: str, field: str | None = None) -> None:
        severity = "warning" if code in (ErrorCode.STREAM_TIMEOUT, ErrorCode.STREAM_GAP) else "error"
        self._report(ErrorReport(code=code, message=message, id=stream_id, field=field, severity=severity))

    # ------------------------------------------------------------------------------------ inbound

    def receive(self, chunk: StreamChunk) -> None:
        stream = self._open.get(chunk.id)
        if stream is None:
            ended = self._ended.get(chunk.id)
            if ended is not None:
                self._after_end(chunk, ended)
                return
            stream = self._open_stream(chunk)
            if stream is None or chunk.id not in self._open:  # not opened, or dropped at once (quiet, ...)
                return
        else:
            self._publish_warnings(chunk.warnings, chunk.id)
            if chunk.say_fields:
                names = ", ".join(chunk.say_fields)
                self._report(
                    ErrorReport(
                        code=ErrorCode.UNKNOWN_FIELD,
                        message=f"{names}: only the chunk that opens stream {chunk.id!r} sets these; ignored",
                        id=chunk.id,
                        field=names,
                        severity="warning",
                    )
                )
        self._arrive(stream, chunk)

    def _after_end(self, chunk: StreamChunk, ended: _Ended) -> None:
        """A chunk for a stream that has ended (or was never opened): a repeat of one it had (QoS 1 may
        deliver the last chunk twice) is ignored; anything else is not spoken, with an error."""
        if chunk.seq is not None and chunk.seq < ended.next_seq:
            LOG.debug("stream %s: seq %d again after its end, ignored", chunk.id, chunk.seq)
            return
        what = f"was {ended.how}" if ended.how.startswith("not opened") else f"has already ended ({ended.how})"
        self._error(ErrorCode.STREAM_ENDED, f"stream {chunk.id!r} {what}; this chunk is not spoken", chunk.id)

    def _open_stream(self, chunk: StreamChunk) -> _Stream | None:
        """A stream opened by `chunk`, its request submitted; None when the chunk cannot open it (the error
        said why). A stream refused for its say fields or for too many streams stays refused: its later
        chunks would otherwise open it and speak only its tail."""
        request = chunk.request
        if isinstance(request, Refusal):
            message = f"{request.message}; stream {chunk.id!r} not opened"
            self._error(ErrorCode.INVALID_REQUEST, message, chunk.id, request.field)
            self._remember(chunk.id, f"not opened: {request.message}", next_seq=0)
            return None
        if chunk.seq is not None and chunk.seq > self._settings.max_seq_ahead:
            self._seq_out_of_range(chunk, next_seq=0)
            return None
        if len(self._open) >= self._settings.max_open:
            self._error(
                ErrorCode.TOO_MANY_STREAMS,
                f"stream {chunk.id!r} not opened: {len(self._open)} streams are open already "
                f"(the limit is {self._settings.max_open})",
                chunk.id,
            )
            self._remember(chunk.id, "not opened: too many streams were open", next_seq=0)
            return None
        self._publish_warnings([*chunk.opening_warnings, *chunk.warnings], chunk.id)
        voice = request.segments[0].model_copy(update={"text": ""})
        stream = _Stream(request=request, text=LiveText(), voice=voice)
        self._open[chunk.id] = stream
        self._touch(chunk.id, stream)
        self._submit(request, stream.text)
        return stream

    def _publish_warnings(self, warnings: list[Warning_], stream_id: str) -> None:
        for warning in warnings:
            self._report(warning.report(stream_id))

    def _seq_out_of_range(self, chunk: StreamChunk, next_seq: int) -> None:
        self._error(
            ErrorCode.INVALID_REQUEST,
            f"seq: {chunk.seq} is far out of range for stream {chunk.id!r} (next expected {next_seq}, "
            f"at most {self._settings.max_seq_ahead} ahead); chunk ignored",
            chunk.id,
            "seq",
        )

    def _arrive(self, stream: _Stream, chunk: StreamChunk) -> None:
        self._touch(chunk.id, stream)
        if chunk.seq is None:
            self._apply(stream, chunk)
            return
        if chunk.seq < stream.next_seq or chunk.seq in stream.waiting:
            LOG.debug("stream %s: seq %d again, ignored", chunk.id, chunk.seq)
            return
        if chunk.seq > stream.next_seq + self._settings.max_seq_ahead:
            self._seq_out_of_range(chunk, stream.next_seq)
            return
        waiting = sum(len(early.text) for early in stream.waiting.values())
        if chunk.seq > stream.next_seq and stream.text.length + waiting + len(chunk.text) > self._settings.max_length:
            self._error(
                ErrorCode.TEXT_TOO_LONG,
                f"text: stream {chunk.id!r}: the chunks waiting for seq {stream.next_seq} would pass the limit of "
                f"{self._settings.max_length} characters; seq {chunk.seq} is not kept",
                chunk.id,
                "text",
            )
            return
        stream.waiting[chunk.seq] = chunk
        self._drain(stream)

    def _drain(self, stream: _Stream) -> None:
        while stream.next_seq in stream.waiting and stream.request.id in self._open:
            chunk = stream.waiting.pop(stream.next_seq)
            stream.next_seq += 1
            self._apply(stream, chunk)
        if stream.gap_timer is not None:
            stream.gap_timer.cancel()
            stream.gap_timer = None
        if stream.waiting and stream.request.id in self._open:
            loop = asyncio.get_running_loop()
            stream.gap_timer = loop.call_later(self._settings.gap_wait, self._skip_gap, stream)

    def _skip_gap(self, stream: _Stream) -> None:
        stream.gap_timer = None
        if not stream.waiting:
            return
        first = min(stream.waiting)
        missing = f"{stream.next_seq}" if first == stream.next_seq + 1 else f"{stream.next_seq}-{first - 1}"
        self._error(
            ErrorCode.STREAM_GAP,
            f"stream {stream.request.id!r}: seq {missing} did not come within {self._settings.gap_wait:g} s; skipped",
            stream.request.id,
            "seq",
        )
        stream.next_seq = first
        self._drain(stream)

    def _apply(self, stream: _Stream, chunk: StreamChunk) -> None:
        if chunk.emotion is not None:
            stream.voice = stream.voice.model_copy(update={"emotion": chunk.emotion})
        text = chunk.text
        room = self._settings.max_length - stream.text.length
        if len(text) > room:
            self._error(
                ErrorCode.TEXT_TOO_LONG,
                f"text: stream {chunk.id!r} passed the limit of {self._settings.max_length} characters; the first "
                f"{self._settings.max_length} are spoken, the rest ({len(text) - room} characters of this chunk "
                "and anything after it) is not",
                chunk.id,
                "text",
            )
            stream.text.append(text[: max(room, 0)], stream.voice)
            self._finish(chunk.id, "ended: too long")
            return
        if text:
            stream.text.append(text, stream.voice)
        if chunk.end:
            self._finish(chunk.id, "ended")

    def _touch(self, stream_id: str, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
        stream.timer = asyncio.get_running_loop().call_later(self._settings.timeout, self._timed_out, stream_id)

    def _timed_out(self, stream_id: str) -> None:
        if stream_id not in self._open:
            return
        self._error(
            ErrorCode.STREAM_TIMEOUT,
            f"stream {stream_id!r}: no chunk for {self._settings.timeout:g} s; ended as if 'end' had come",
            stream_id,
        )
        self._finish(stream_id, "ended: timed out")

    def _finish(self, stream_id: str, how: str) -> None:
        """No more text for this stream (what has arrived is still spoken)."""
        stream = self._open.pop(stream_id, None)
        if stream is None:
            return
        for timer in (stream.timer, stream.gap_timer):
            if timer is not None:
                timer.cancel()
        stream.waiting.clear()
        if not stream.text.ended:
            stream.text.end()
        self._remember(stream_id, how, stream.next_seq)

    def _remember(self, stream_id: str, how: str, next_seq: int) -> None:
        self._ended[stream_id] = _Ended(how, next_seq)  # the oldest is forgotten first when ENDED_MAX are kept

    # ----------------------------------------------------------------------------------- outbound

    def on_event(self, event: Event) -> None:
        """A stream's request ended (finished, interrupted, dropped, failed): the stream ends with it."""
        if event.event_type not in TERMINAL_EVENTS:
            return
        if event.id in self._open:
            self._finish(event.id, event.event_type.value)
        elif (ended := self._ended.get(event.id)) is not None:  # ended by `end` or the timeout; now its request too
            self._remember(event.id, event.event_type.value, ended.next_seq)

    def close(self) -> None:
        for stream_id in list(self._open):
            self._finish(stream_id, "shut down")
