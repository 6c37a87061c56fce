"""Cartesia over one warm WebSocket, through the official SDK (AsyncCartesia).

The SDK never reconnects a TTS socket and its async receive() hangs when the socket closes, so this
engine owns the socket's life: it watches it close, reopens it before it goes stale, times out every
wait, and treats a context that ends without `done` as a failure. One context per segment (Cartesia's
advice for emotion changes), several in flight at once so that the next segment's audio is ready
when the previous one ends: the joins are gapless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import string
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from cartesia import AsyncCartesia
from cartesia.resources.tts import AsyncTTSResourceConnection
from cartesia.types import GenerationConfigParam
from websockets.exceptions import InvalidStatus, WebSocketException

from mqtt_speaker.engines.base import AudioChunk, Pcm, PcmAssembler, SynthesisError, Voicing
from mqtt_speaker.models import ErrorCode, SayRequest, Segment
from mqtt_speaker.settings import CartesiaSettings

LOG = logging.getLogger(__name__)
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
BACKOFF_MAX = 60.0
STABLE_AFTER = 10.0  # a socket the service closes sooner, before any `done`, counts as a failed attempt


def output_rate(device_rate: int) -> int:
    """The rate to ask Cartesia for: the device's own when Cartesia offers it, so nothing is resampled."""
    return device_rate if device_rate in SAMPLE_RATES else 48000


def _closed_waiter(ws: AsyncTTSResourceConnection) -> asyncio.Task[None]:
    """A task that ends when the socket closes.

    The SDK has no public hook for this; `_connection` is its websockets ClientConnection.
    """
    return asyncio.ensure_future(ws._connection.wait_closed())


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


def _error_frame(event: Any) -> SynthesisError:
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
    return SynthesisError(ErrorCode.SYNTHESIS_FAILED, message)


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


async def _release(events: AsyncIterator[Any]) -> None:
    """Let the SDK's receive() run on past its last event: only then does it drop the context's queue
    (closed where it stands, it keeps one per context for the life of the socket)."""
    with contextlib.suppress(StopAsyncIteration):
        await anext(events)


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
        self._client = AsyncCartesia(api_key=key, websocket_base_url=settings.url)
        self._ws: AsyncTTSResourceConnection | None = None
        self._closed: asyncio.Task[None] | None = None
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
        }
        try:
            ws = await self._client.tts.websocket_connect(websocket_connection_options=options).enter()
        except (OSError, TimeoutError, WebSocketException) as exc:
            raise self._failed_attempt(_handshake_error(exc)) from exc
        if self._failures:
            LOG.info("Cartesia socket open again after %d failed attempts", self._failures)
        self._last_error = None
        self._ws = ws
        self._closed = _closed_waiter(ws)
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

    # -------------------------------------------------------------- synthesis

    async def synthesize(
        self, request: SayRequest, voicing: Voicing, sample_rate: int
    ) -> AsyncGenerator[AudioChunk, None]:
        """Every segment's audio in order. A socket lost before a segment's first audio is retried once,
        on a fresh socket, from that segment on; one lost in the middle of a segment is a failure."""
        resume = 0
        for attempt in (1, 2):
            try:
                async for chunk in self._stream(request, voicing, sample_rate, resume, fresh=attempt > 1):
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
                resume = lost.segment
                LOG.info("Cartesia %s before segment %d spoke; retrying on a fresh socket", lost.reason, resume)

    def _context(self, ws: AsyncTTSResourceConnection, segment: Segment, voicing: Voicing, rate: int) -> Any:
        config: GenerationConfigParam = {"emotion": segment.emotion or voicing.emotion}
        if segment.speed is not None:
            config["speed"] = segment.speed
        if segment.volume is not None:
            config["volume"] = segment.volume
        return ws.context(
            f"mqtt-speaker-{uuid.uuid4().hex}",
            model_id=self._settings.model,
            voice=voicing.voice,
            output_format={"container": "raw", "encoding": "pcm_s16le", "sample_rate": rate},
            language=voicing.language,
            generation_config=config,
            max_buffer_delay_ms=0,
            add_timestamps=True,  # word ends: where a fallback engine goes on if the socket is lost
        )

    async def _stream(
        self, request: SayRequest, voicing: Voicing, sample_rate: int, first: int, fresh: bool
    ) -> AsyncGenerator[AudioChunk, None]:
        rate = output_rate(sample_rate)
        ws = await self._socket(fresh=fresh)
        closed = self._closed
        assert closed is not None
        segments = request.segments
        in_flight: deque[tuple[int, Any]] = deque()
        upcoming = first

        async def open_next() -> None:
            nonlocal upcoming
            if upcoming < len(segments):
                ctx = self._context(ws, segments[upcoming], voicing, rate)
                in_flight.append((upcoming, ctx))
                upcoming += 1
                await ctx.push(segments[upcoming - 1].text, continue_=False)

        try:
            try:
                for _ in range(self._settings.prefetch_segments):
                    await open_next()
                while in_flight:
                    index, ctx = in_flight[0]
                    async for audio in self._receive(ctx, closed, index, segments[index].text, rate):
                        self._last_used = time.monotonic()
                        yield AudioChunk(samples=audio, sample_rate=rate, segment=index)
                    in_flight.popleft()
                    await open_next()
            except WebSocketException as exc:
                raise _Lost(in_flight[0][0] if in_flight else upcoming, False, f"closed the socket ({exc})") from exc
        finally:
            self._last_used = time.monotonic()
            for _, ctx in in_flight:
                try:
                    await ctx.cancel()
                except (OSError, WebSocketException) as exc:
                    LOG.debug("cancelling context: %s", exc)

    async def _receive(
        self, ctx: Any, closed: asyncio.Task[None], segment: int, text: str, rate: int
    ) -> AsyncIterator[Pcm]:
        """The PCM of one context until its `done`; _Lost or SynthesisError otherwise."""
        events = ctx.receive()
        pcm = PcmAssembler()
        heard = False
        received = 0  # samples
        words: list[tuple[str, float]] = []  # (word, end in seconds), from the timestamps events

        def lost(reason: str) -> _Lost:
            whole = [word for word, end in words if end * rate <= received]
            return _Lost(segment, heard, reason, spoken_prefix(text, whole))

        while True:
            timeout = self._settings.chunk_timeout if heard else self._settings.first_chunk_timeout
            step = asyncio.ensure_future(anext(events))
            try:
                finished, _ = await asyncio.wait({step, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if step not in finished and closed in finished:
                    # The SDK's reader has stopped: whatever it queued for this context is there already.
                    finished, _ = await asyncio.wait({step}, timeout=0.05)
            finally:
                if not step.done():  # timed out, or we were cancelled (the request was interrupted)
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
            if step.cancelled():
                if closed.done():
                    raise lost("closed the socket")
                if heard:
                    raise lost(f"sent no audio for {timeout:.0f} s")
                # Silent before any audio: retried once on a fresh socket, like a socket lost then.
                raise _Lost(segment, False, f"sent no audio within {timeout:.0f} s", code=ErrorCode.SYNTHESIS_TIMEOUT)
            try:
                event = step.result()
            except StopAsyncIteration:
                raise lost("ended a context without 'done'") from None
            kind = getattr(event, "type", None)
            if kind == "chunk" and event.audio:
                heard = True
                samples = pcm.feed(event.audio)
                received += samples.size
                yield samples
            elif kind == "timestamps" and event.word_timestamps is not None:
                words += zip(event.word_timestamps.words, event.word_timestamps.end, strict=False)
            elif kind == "done":
                self._proven = True
                await _release(events)
                return
            elif kind == "error":
                await _release(events)
                raise _error_frame(event)
