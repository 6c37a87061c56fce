"""Cartesia over one warm WebSocket, through the official SDK (AsyncCartesia).

The SDK opens the socket and sends on it; the engine reads it itself (`recv_bytes`): one reader per
socket hands each message to its context by id. (The SDK's own reader parses every message into a
model, a good part of the CPU of speaking, and its per-context receive() hangs when the socket closes.)
The engine owns the socket's life: it sees it close (its reader ends), reopens it
before it goes stale, gives every context a deadline, and treats a context whose socket closed before
`done` as lost. One context per run of equal voice settings (Cartesia's advice for emotion changes), fed
sentence by sentence with continuations as the text arrives; the next run's context opens while the
current one plays, so the joins are gapless.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import string
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import replace
from typing import Any, cast

import httpx
import numpy as np
from cartesia import AsyncCartesia
from cartesia.resources.tts import AsyncTTSResourceConnection
from cartesia.types import GenerationConfigParam, GenerationRequestParam
from websockets.exceptions import InvalidStatus, WebSocketException

from mqtt_speaker.engines.base import PcmAssembler, SynthesisError, Voicing
from mqtt_speaker.settings import CartesiaSettings
from mqtt_speaker.speech.audio import AudioChunk, Pcm
from mqtt_speaker.speech.text import Piece, Position, Script
from mqtt_speaker.speech.vocabulary import ErrorCode

LOG = logging.getLogger(__name__)
EMPTY: Pcm = np.zeros(0, dtype=np.int16)
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
BACKOFF_MAX = 60.0
CLOSE_IDLE = 0.5  # a context that has said everything is closed after this (Cartesia: it expires after 1 s)
STABLE_AFTER = 10.0  # a socket the service closes sooner, before any `done`, counts as a failed attempt
LEAD = 0.3  # seconds of audio ahead of the listener: beyond this, what arrives is handed over in batches
BATCH_MIN = 0.02  # seconds: a shorter hold is not worth a timer


def output_rate(device_rate: int) -> int:
    """The rate to ask Cartesia for: the device's own when Cartesia offers it, so nothing is resampled."""
    return device_rate if device_rate in SAMPLE_RATES else 48000


def _handshake_error(exc: BaseException) -> SynthesisError:
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace")[:200] if exc.response.body else ""
        if status in (401, 403):
            return SynthesisError(ErrorCode.CARTESIA_AUTH, f"Cartesia rejected the API key (HTTP {status}) {body}")
        if status == 429:
            return SynthesisError(
                ErrorCode.CARTESIA_RATE_LIMITED, f"Cartesia refused a new socket: too many requests {body}"
            )
        return SynthesisError(ErrorCode.CARTESIA_UNREACHABLE, f"Cartesia answered HTTP {status} {body}")
    return SynthesisError(
        ErrorCode.CARTESIA_UNREACHABLE, f"cannot reach Cartesia: {type(exc).__name__}: {exc}".strip(": ")
    )


def error_frame(event: Any) -> SynthesisError:
    status = getattr(event, "status_code", None)
    text = getattr(event, "message", None) or getattr(event, "title", None)
    extra = getattr(event, "model_extra", None) or {}
    text = text or extra.get("error") or "no message"
    code_name = getattr(event, "error_code", None)
    message = f"Cartesia error {status}{f' {code_name}' if code_name else ''}: {text}"
    if status in (401, 403):
        return SynthesisError(ErrorCode.CARTESIA_AUTH, message)
    if status == 429:
        return SynthesisError(ErrorCode.CARTESIA_RATE_LIMITED, message)
    # Another 4xx refuses what this request asked for (an unknown voice, say): the service works.
    request_only = isinstance(status, int) and 400 <= status < 500
    return SynthesisError(ErrorCode.SYNTHESIS_FAILED, message, request_only=request_only)


def spoken_prefix(text: str, words: Sequence[str]) -> int:
    """How many characters of `text` the `words` (Cartesia's word timestamps, in order) cover.

    Each word must come next in the text, with nothing but spaces and punctuation before it; at the
    first that does not (a number Cartesia spelled out, say) it stops: better a word heard twice than
    one never heard."""
    position = 0
    for word in words:
        found = text.find(word, position)
        if found < 0 or text[position:found].strip(string.whitespace + string.punctuation):
            break
        position = found + len(word)
    return position


class HttpOnDemand(httpx.AsyncBaseTransport):
    """The SDK client's HTTP transport, made at its first request. The engine only speaks over the
    WebSocket, and httpx's default transport loads its libraries and a CA bundle when the client is
    made: 3 MB of an idle speaker's memory, for nothing."""

    def __init__(self) -> None:
        self._transport: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = httpx.AsyncHTTPTransport()
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()


class _Lost(Exception):
    """The socket closed, went silent, or a context ended without `done`; `spoken_chars` of the
    segment's text had been delivered whole by then."""

    def __init__(
        self,
        segment: int,
        partial: bool,
        reason: str,
        spoken_chars: int = 0,
        code: ErrorCode = ErrorCode.CARTESIA_UNREACHABLE,  # if the retry on a fresh socket is lost too
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.segment = segment
        self.partial = partial
        self.reason = reason
        self.spoken_chars = spoken_chars


class CartesiaEngine:
    name = "cartesia"
    billed = True
    emotion_applied = True

    def __init__(self, settings: CartesiaSettings) -> None:
        self._settings = settings
        key = settings.api_key.get_secret_value() if settings.api_key else None
        http = httpx.AsyncClient(transport=HttpOnDemand())
        self._client = AsyncCartesia(api_key=key, websocket_base_url=settings.url, http_client=http)
        self._ws: AsyncTTSResourceConnection | None = None
        self._closed: asyncio.Task[None] | None = None  # the socket's reader: done once it closed
        self._contexts: dict[str, Context] = {}  # open on the socket, by id (prefetch_segments per request)
        self._last_used = 0.0
        self._opened_at = 0.0
        self._proven = False  # a context has finished on the current socket
        self._lock = asyncio.Lock()
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: SynthesisError | None = None
        self._keeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ socket

    def _is_open(self) -> bool:
        return self._ws is not None and self._closed is not None and not self._closed.done()

    async def _connect(self) -> AsyncTTSResourceConnection:
        options: Any = {
            "open_timeout": self._settings.connect_timeout,
            "ping_interval": 10,
            "ping_timeout": 10,
            "close_timeout": 2,
            "max_size": 16 * 1024 * 1024,
            # Not offered: inflating every audio message (base64 PCM, which compresses little) was a tenth of
            # the CPU of speaking; a Raspberry Pi has more bandwidth to spare than CPU (128 kB/s at 48 kHz).
            "compression": None,
        }
        try:
            ws = await self._client.tts.websocket_connect(websocket_connection_options=options).enter()
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise self._failed_attempt(_handshake_error(exc)) from exc
        if self._failures:
            LOG.info("Cartesia socket open again after %d failed attempts", self._failures)
        self._last_error = None
        self._ws = ws
        self._contexts = {}  # a new dict: the old socket's reader still ends the contexts on the old one
        self._closed = asyncio.create_task(self._read(ws, self._contexts), name="cartesia-reader")
        self._last_used = self._opened_at = time.monotonic()
        self._proven = False
        LOG.debug("Cartesia socket open")
        return ws

    def _failed_attempt(self, error: SynthesisError) -> SynthesisError:
        """Count a failed attempt and set the backoff (1 s doubling to 60 s) before the next one."""
        self._failures += 1
        delay = min(BACKOFF_MAX, 2.0 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        self._last_error = error
        LOG.warning("%s (next attempt in %.0f s)", error.message, delay)
        return error

    def _socket_closed(self) -> None:
        """The service closed the socket: after a good run that is normal (the attempts count restarts);
        soon after opening, before any context finished, once is let pass, and again it is a failed
        attempt (an overloaded or broken service may accept and close at once: without this the keeper
        would reconnect in a busy loop)."""
        lived = time.monotonic() - self._opened_at
        if self._proven or lived >= STABLE_AFTER:
            self._failures = 0
            return
        if self._failures == 0:  # the first time, reconnect at once: a close can race our open
            self._failures = 1
            return
        self._failed_attempt(
            SynthesisError(ErrorCode.CARTESIA_UNREACHABLE, f"Cartesia closed the socket {lived:.1f} s after opening it")
        )

    async def _drop_socket(self) -> None:
        ws, self._ws = self._ws, None
        if self._closed is not None:
            self._closed.cancel()
            self._closed = None
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(code=1000), timeout=3)
            except (OSError, TimeoutError, WebSocketException) as exc:
                LOG.debug("closing the Cartesia socket: %s", exc)

    async def _socket(self, fresh: bool) -> AsyncTTSResourceConnection:
        """An open socket: the warm one unless it is closed, stale or `fresh` is asked for."""
        async with self._lock:
            stale = time.monotonic() - self._last_used > self._settings.idle_reconnect
            if self._ws is not None and self._is_open() and not fresh and not stale:
                self._last_used = time.monotonic()  # or the keeper could find it stale in the meantime
                return self._ws
            await self._drop_socket()
            if self._last_error is not None and time.monotonic() < self._retry_at and not fresh:
                raise SynthesisError(
                    self._last_error.code,
                    f"{self._last_error.message} (retrying in {self._retry_at - time.monotonic():.0f} s)",
                )
            return await self._connect()

    async def _keep_warm(self) -> None:
        """Reopen the socket when it closes or before the service's idle timeout closes it."""
        while True:
            closed = self._closed
            if closed is not None and not closed.done():
                idle_left = self._settings.idle_reconnect - (time.monotonic() - self._last_used)
                await asyncio.wait({closed}, timeout=max(idle_left, 0.0))
            # Closed by the service (even before we got here to watch it), not dropped or replaced by us.
            if closed is not None and closed.done() and closed is self._closed:
                self._socket_closed()
            if not self._is_open():
                await asyncio.sleep(max(self._retry_at - time.monotonic(), 0.0))
            with contextlib.suppress(SynthesisError):  # logged by _connect; the loop waits out the backoff
                await self._socket(fresh=False)

    async def start(self) -> None:
        with contextlib.suppress(SynthesisError):
            await self._socket(fresh=False)
        self._keeper = asyncio.create_task(self._keep_warm(), name="cartesia-keep-warm")

    @property
    def identity(self) -> str:
        return f"cartesia:{self._settings.model}"

    def problem(self) -> SynthesisError | None:
        """While the socket cannot be opened and the backoff has not run out (the keeper retries)."""
        return self._last_error if time.monotonic() < self._retry_at else None

    async def probe(self) -> None:
        """Open a fresh socket (raises SynthesisError saying why it cannot be had)."""
        await self._socket(fresh=True)

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        async with self._lock:
            await self._drop_socket()
        await self._client.close()  # its HTTP transport, if a request ever made one

    # -------------------------------------------------------------- synthesis

    async def synthesize(self, script: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        """The script's audio in order, as its text arrives. A socket lost before a context's first
        audio is retried once, on a fresh socket, from that context's text on; one lost in the middle
        of a context is a failure (the caller's fallback goes on from the first word not heard)."""
        for attempt in (1, 2):
            try:
                async for chunk in self._stream(script, voicing, sample_rate, fresh=attempt > 1):
                    yield chunk
                return
            except _Lost as lost:
                if lost.partial:
                    raise SynthesisError(
                        ErrorCode.SYNTHESIS_INTERRUPTED,
                        f"Cartesia stopped in the middle of segment {lost.segment}: {lost.reason}",
                        spoken_chars=lost.spoken_chars,
                    ) from lost
                if attempt > 1:  # twice before any audio of the segment: the service, not this request
                    raise SynthesisError(
                        lost.code,
                        f"Cartesia {lost.reason} before segment {lost.segment} spoke, on a fresh socket too",
                    ) from lost
                script = replace(script, start=Position(lost.segment, lost.spoken_chars))
                LOG.info("Cartesia %s before segment %d spoke; retrying on a fresh socket", lost.reason, lost.segment)

    def _context(
        self, ws: AsyncTTSResourceConnection, contexts: dict[str, Context], piece: Piece, voicing: Voicing, rate: int
    ) -> Context:
        segment = piece.voice
        config: GenerationConfigParam = {"emotion": segment.emotion or voicing.emotion}
        if segment.speed is not None:
            config["speed"] = segment.speed
        if segment.volume is not None:
            config["volume"] = segment.volume
        context_id = f"mqtt-speaker-{uuid.uuid4().hex}"
        request: GenerationRequestParam = {
            "context_id": context_id,
            "model_id": self._settings.model,
            "voice": voicing.voice,
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": cast(Any, rate)},
            "language": voicing.language,
            "generation_config": config,  # on every input of the context, the closing one too
            "max_buffer_delay_ms": 0,  # we push whole sentences, then whole words (text.py): spoken at once
            "add_timestamps": True,  # word ends: where a fallback engine goes on if the socket is lost
            "transcript": "",
        }
        record = Context(ws, request, piece.segment, piece.offset, rate)
        contexts[context_id] = record
        record.watch = asyncio.create_task(self._watch(record), name="cartesia-context")
        return record

    async def _stream(  # noqa: PLR0915 - the feeder and the reader of one attempt share its state
        self, script: Script, voicing: Voicing, sample_rate: int, fresh: bool
    ) -> AsyncGenerator[AudioChunk, None]:
        """One context per run of equal voice settings, fed with `continue` pushes as sentences arrive
        and closed with an empty `continue: false`; the next run's context opens while this one plays.
        A context left with nothing to say is closed before Cartesia lets it expire, and the text that
        comes later goes on in a new one: nothing is ever sent to an expired context."""
        rate = output_rate(sample_rate)
        ws = await self._socket(fresh=fresh)
        closed, contexts = self._closed, self._contexts
        assert closed is not None
        ahead: asyncio.Queue[Context | BaseException | None] = asyncio.Queue()  # bounded by `in_flight`
        in_flight = asyncio.Semaphore(self._settings.prefetch_segments)  # contexts opened and not yet done
        opened: list[Context] = []
        heard_by = 0.0  # when the audio handed over so far will have been heard, at the earliest (monotonic)

        async def feed() -> None:
            current: Context | None = None
            at = script.start  # where the piece being sent starts
            try:
                async for piece in script.pieces(continuations=True):
                    at = Position(piece.segment, piece.offset)
                    if current is not None and (current.segment != piece.segment or current.closing):
                        current = None
                    if current is None:
                        if not piece.text and piece.closes:
                            continue  # nothing to say and nothing to close
                        await in_flight.acquire()
                        current = self._context(ws, contexts, piece, voicing, rate)
                        opened.append(current)
                        await ahead.put(current)
                    await current.push(piece.text, closes=piece.closes)
                await ahead.put(None)
            except asyncio.CancelledError:  # the reader is done with this attempt and cleans up
                raise
            except WebSocketException as exc:  # after what is in flight, the rest goes on from this piece
                await ahead.put(_Lost(at.segment, False, f"closed the socket ({exc})", at.offset))
            except Exception as exc:  # the cost guard refused the next piece, say: what was pushed plays first
                if current is not None and not current.closing and not closed.done():
                    with contextlib.suppress(WebSocketException):
                        await current.close()
                await ahead.put(exc)

        feeder = asyncio.create_task(feed(), name="cartesia-feed")
        record: Context | None = None
        try:
            while (item := await _next(ahead, closed, record)) is not None:
                if isinstance(item, BaseException):
                    raise item
                record = item
                handed = 0  # samples of this context handed over
                while (audio := await record.out.take(hold=heard_by - time.monotonic() - LEAD)) is not None:
                    if isinstance(audio, BaseException):
                        raise audio
                    self._last_used = now = time.monotonic()
                    heard_by = max(heard_by, now) + audio.size / rate
                    handed += audio.size
                    yield AudioChunk(audio, rate, record.segment, spoken=record.spoken(handed))
                # Its `done`: everything sent on it has been spoken.
                yield AudioChunk(EMPTY, rate, record.segment, spoken=record.offset + len(record.transcript))
                in_flight.release()
        finally:
            self._last_used = time.monotonic()
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            for context in opened:
                context.watch.cancel()
                await asyncio.gather(context.watch, return_exceptions=True)
                contexts.pop(context.id, None)
                if not context.done and not closed.done():
                    try:
                        await context.cancel()
                    except (OSError, WebSocketException) as exc:
                        LOG.debug("cancelling context: %s", exc)

    async def _read(self, ws: AsyncTTSResourceConnection, contexts: dict[str, Context]) -> None:
        """The socket's only reader (the SDK's own, started by its contexts' pushes, is not used): each
        message goes to its context as it comes, until the socket closes; then every context still open
        on it is lost. This task's end is how the engine sees the socket close."""
        reason = "closed the socket"
        try:
            while True:
                self.dispatch(ws, contexts, await ws.recv_bytes())
        except WebSocketException as exc:
            reason = f"closed the socket ({exc})"
        except Exception:
            LOG.exception("reading the Cartesia socket failed")
        finally:
            for record in list(contexts.values()):
                record.end(record.lost(record.heard, reason))
            contexts.clear()

    def dispatch(self, ws: AsyncTTSResourceConnection, contexts: dict[str, Context], raw: bytes) -> None:
        try:
            message = json.loads(raw)
            context_id, kind = message.get("context_id"), message.get("type")
        except (ValueError, AttributeError):
            LOG.warning("Cartesia sent a message that is not a JSON object: %.100r", raw)
            return
        record = contexts.get(context_id) if isinstance(context_id, str) else None
        if record is None:  # a context we cancelled or gave up on (or a stray error)
            if kind == "error":
                LOG.warning("%s (for no open context)", error_frame(ws.parse_event(raw)).message)
            return
        if record.over:  # its watch gave up on it: what comes late is not played
            del contexts[context_id]
            return
        try:
            if kind == "error":
                record.done = True
                record.end(error_frame(ws.parse_event(raw)))
            elif record.receive(kind, message):
                self._proven = True
        except (TypeError, ValueError, KeyError) as exc:
            record.end(
                SynthesisError(ErrorCode.SYNTHESIS_FAILED, f"Cartesia sent a {kind} message not understood: {exc}")
            )
        if record.over:
            del contexts[context_id]

    async def _watch(self, record: Context) -> None:
        """A context's deadlines. No audio within first_chunk_timeout of its first input: lost before it
        spoke (retried once on a fresh socket, like a socket lost then); none for chunk_timeout in the
        middle: lost. While the writer pauses (everything pushed has been spoken) no audio is due, and
        CLOSE_IDLE after its last audio the context is closed, well before the service would let it
        expire. It wakes at a deadline or when the context changes state, not per message."""
        try:
            while not record.over:
                wait: float | None = None
                if record.idle:
                    wait = record.last_audio + CLOSE_IDLE - time.monotonic()
                    if wait <= 0:
                        await record.close()
                        continue
                elif record.asked:
                    timeout = self._settings.chunk_timeout if record.heard else self._settings.first_chunk_timeout
                    wait = record.last_event + timeout - time.monotonic()
                    if wait <= 0:
                        if record.heard:
                            record.end(record.lost(True, f"sent no audio for {timeout:.0f} s"))
                        else:
                            code = ErrorCode.SYNTHESIS_TIMEOUT
                            record.end(record.lost(False, f"sent no audio within {timeout:.0f} s", code=code))
                        return
                record.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(record.changed.wait(), wait)
        except WebSocketException as exc:  # closing it found the socket closed
            record.end(record.lost(record.heard, f"closed the socket ({exc})"))


async def _next(
    ahead: asyncio.Queue[Context | BaseException | None], closed: asyncio.Task[None], last: Context | None
) -> Context | BaseException | None:
    """The next context to play (or None at the end, or why the feed stopped); _Lost if the socket
    closes while the writer pauses between contexts."""
    step = asyncio.ensure_future(ahead.get())
    try:
        await asyncio.wait({step, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not step.done():
            step.cancel()
    if step.done() and not step.cancelled():
        return step.result()
    segment, offset = (last.segment, last.offset + len(last.transcript)) if last else (0, 0)
    raise _Lost(segment, False, "closed the socket", offset)


class _Inbox:
    """What a context's reader hands to the player: PCM, then None at its `done` or the exception that
    ended it (bounded by the stream's length cap). The player takes all the PCM that has come meanwhile
    as one chunk: Cartesia sends faster than real time in small messages, and each chunk costs the
    player's path the same however long it is. While more than LEAD seconds of audio are ahead of the
    listener, the engine holds off taking (`hold`): a fast socket's audio goes up in a few large chunks,
    not fifty a second."""

    def __init__(self) -> None:
        self._items: deque[Pcm | BaseException | None] = deque()
        self._arrived = asyncio.Event()
        self._ended = asyncio.Event()  # its end is in: nothing to wait for

    def put(self, item: Pcm | BaseException | None) -> None:
        self._items.append(item)
        self._arrived.set()
        if not isinstance(item, np.ndarray):
            self._ended.set()

    async def take(self, hold: float = 0.0) -> Pcm | BaseException | None:
        """All the PCM in (merged), or the end; after `hold` seconds, or at once when the end is in."""
        if hold >= BATCH_MIN and not self._ended.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hold):
                    await self._ended.wait()
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        first = self._items.popleft()
        if not isinstance(first, np.ndarray):
            return first
        parts = [first]
        while self._items and isinstance(following := self._items[0], np.ndarray):
            parts.append(following)
            self._items.popleft()
        return first if len(parts) == 1 else np.concatenate(parts)


class Context:
    """One Cartesia context: the run it speaks (from `offset` of run `segment`), what was pushed, and
    how far the service has got (a flush after each push tells when everything pushed was spoken)."""

    def __init__(
        self, ws: AsyncTTSResourceConnection, request: GenerationRequestParam, segment: int, offset: int, rate: int
    ) -> None:
        self._ws = ws
        self._request = request
        self.id = request["context_id"]
        self.segment = segment
        self.offset = offset
        self.rate = rate
        self.transcript = ""
        self.flushes = 0
        self.flushed = 0
        self.asked = False  # its first input was sent
        self.closing = False
        self.done = False  # the service said `done` (or `error`): nothing to cancel
        self.over = False  # nothing more for the player: `out` has its end
        self.heard = False
        self.received = 0  # samples
        self.words: list[tuple[str, float]] = []  # (word, end in seconds), from the timestamps messages
        self.last_audio = self.last_event = time.monotonic()
        self.changed = asyncio.Event()  # asked, idle or over: the watch looks again
        self.out = _Inbox()
        self.watch: asyncio.Task[None]
        self._pcm = PcmAssembler()

    @property
    def idle(self) -> bool:
        """Open, and everything pushed has been spoken: it waits for the writer."""
        return not self.closing and self.flushes > 0 and self.flushed >= self.flushes

    def receive(self, kind: object, message: dict[str, Any]) -> bool:
        """One message from the service for this context; True at its `done`."""
        self.last_event = time.monotonic()
        if kind == "chunk":
            data = message.get("data")
            if data:
                samples = self._pcm.feed(binascii.a2b_base64(data))
                self.heard = True
                self.received += samples.size
                self.last_audio = self.last_event
                self.out.put(samples)
        elif kind == "timestamps":
            words = message.get("word_timestamps")
            if words:
                self.words += zip(words["words"], words["end"], strict=False)
        elif kind == "flush_done":
            self.flushed += 1
            self.last_audio = self.last_event
            self.changed.set()
        elif kind == "done":
            self.done = True
            self.end(None)
            return True
        return False

    def end(self, outcome: BaseException | None) -> None:
        """Nothing more comes: None after `done`, or why it ended."""
        if not self.over:
            self.over = True
            self.out.put(outcome)
            self.changed.set()

    async def push(self, text: str, *, closes: bool) -> None:
        # The bookkeeping first: the watch must not find the context idle while the push is on its way.
        self.transcript += text
        if closes:
            await self.close(text)
            return
        self.flushes += 1
        self._asking()
        await self._send(text, True)
        await self._send("", True, flush=True)

    async def close(self, text: str = "") -> None:
        self.closing = True
        self._asking()
        await self._send(text, False)

    async def cancel(self) -> None:
        await self._ws.send({"context_id": self.id, "cancel": True})

    def _asking(self) -> None:
        self.asked = True
        self.last_event = time.monotonic()
        self.changed.set()

    async def _send(self, transcript: str, more: bool, flush: bool = False) -> None:
        request = self._request.copy()
        request["transcript"] = transcript
        request["continue"] = more
        if flush:
            request["flush"] = True
        await self._ws.send(request)

    def spoken(self, samples: int) -> int:
        """Characters of its run (from the run's start) whose words are whole within its first `samples`
        (from the word timestamps)."""
        whole = [word for word, end in self.words if end * self.rate <= samples]
        return self.offset + spoken_prefix(self.transcript, whole)

    def lost(self, partial: bool, reason: str, code: ErrorCode = ErrorCode.CARTESIA_UNREACHABLE) -> _Lost:
        return _Lost(self.segment, partial, reason, self.spoken(self.received), code)
