"""A local emulator of Cartesia's TTS WebSocket (`/tts/websocket`), for tests and benchmarks.

It speaks the real protocol (bearer auth at the handshake, JSON generation requests, `chunk` / `done` /
`error` frames with base64 PCM, `timestamps` frames with word ends when `add_timestamps` is set, cancel,
the 5-minute idle close) and input streaming as documented: continuations (`continue: true` inputs on one
context, the tone going on where it stopped), `max_buffer_delay_ms` holding text that has no sentence end
yet (default 3000, 0 speaks at once), `flush` answered by `flush_done`, a context expiring 1 s after its
last audio when it has nothing left to say (input sent to it later is ignored and counted in
`late_inputs`). A generation that starts on a context with nothing left to say waits `first_chunk_delay`.
It makes audio a test can check:
each context is a sine tone whose pitch encodes the requested emotion, whose length follows the
transcript's length and speed, and whose amplitude follows the generation volume.

Faults for tests: a first chunk that never comes, a socket dropped after N chunks (TCP abort, close
1011, close 1000, or silence), handshake rejections (401, 429) and error frames.

It runs on its own event loop in a background thread of the test process, on a free loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import random
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from mqtt_speaker.speech.emotions import EMOTIONS

FaultKind = Literal["abort", "close_1011", "close_1000", "silent"]
TEST_API_KEY = "sk_car_emulator_test_key"
DEFAULT_BUFFER_DELAY_MS = 3000  # the service's default for max_buffer_delay_ms
SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(\s+|$)")


def frequency_for(emotion: str | None) -> float:
    """The tone (Hz) the emulator speaks an emotion with; neutral (or none) is 200 Hz, angry 620 Hz."""
    index = EMOTIONS.index(emotion) if emotion in EMOTIONS else 0
    return 200.0 + 20.0 * index


@dataclass
class Fault:
    kind: FaultKind
    after_chunks: int = 2
    transcript: str | None = None  # only a context whose text contains this (any context when None)


@dataclass
class ContextLog:
    context_id: str
    emotion: str | None
    transcript: str = ""
    samples_sent: int = 0
    sample_rate: int = 0
    done: bool = False
    cancelled: bool = False
    first_chunk_at: float | None = None
    done_at: float | None = None
    inputs: int = 0
    last_output_at: float | None = None
    expired: bool = False
    expired_at: float | None = None
    late_inputs: list[dict[str, Any]] = field(default_factory=list)  # sent after it expired or was done


@dataclass
class _Voicing:
    """How a context speaks (from its inputs; they must all agree) and how far its tone has got."""

    position: int
    pace: float = 1.0  # this context's own pace: its audio lasts this many times the nominal
    rate: int = 44100
    encoding: str = "pcm_f32le"
    speed: float = 1.0
    volume: float = 1.0
    emotion: str | None = None
    timed: bool = False

    def update(self, message: dict[str, Any]) -> None:
        fmt = message.get("output_format") or {}
        config = message.get("generation_config") or {}
        self.rate = int(fmt.get("sample_rate", 44100))
        self.encoding = fmt.get("encoding", "pcm_f32le")
        self.speed = float(config.get("speed", 1.0))
        self.volume = float(config.get("volume", 1.0))
        self.emotion = config.get("emotion")
        self.timed = bool(message.get("add_timestamps"))


@dataclass
class Behaviour:
    """What the emulator does; tests change it between requests."""

    api_key: str = TEST_API_KEY
    first_chunk_delay: float = 0.0
    real_time_factor: float = 0.2  # seconds spent generating one second of audio
    jitter: float = 0.0  # seconds: each chunk's pacing varies by up to this much either way (mean unchanged)
    first_chunk_jitter: float = 0.0  # seconds: each context's first chunk comes up to this much later (uniform)
    ms_per_char: float = 40.0
    pace_spread: float = 0.0  # each context speaks up to this share slower or faster (a generative voice's pace)
    chunk_ms: float = 20.0
    amplitude: float = 0.3
    idle_timeout: float = 300.0
    context_expiry: float = 1.0  # a context with nothing left to say expires this long after its last audio
    handshake_status: int | None = None
    stall: bool = False
    close_at_once: bool = False  # accept the socket, then close it (1011) before anything is asked
    faults: list[Fault] = field(default_factory=list)  # each one is used once, in order


def _tone(frequency: float, rate: int, start: int, count: int, amplitude: float) -> np.ndarray:
    n = np.arange(start, start + count, dtype=np.float64)
    return amplitude * np.sin(2 * math.pi * frequency * n / rate)


def _encode(samples: np.ndarray, encoding: str) -> bytes:
    if encoding == "pcm_f32le":
        data: bytes = samples.astype("<f4").tobytes()
    else:
        data = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return data


class CartesiaEmulator:
    def __init__(self, behaviour: Behaviour | None = None, tls: tuple[Path, Path] | None = None) -> None:
        """tls: a certificate and its key, to serve wss:// as the real service does (ws:// without)."""
        self.behaviour = behaviour or Behaviour()
        self._tls = tls
        self.frames: list[dict[str, Any]] = []
        self.contexts: dict[str, ContextLog] = {}
        self.handshakes: list[dict[str, str]] = []
        self.handshake_times: list[float] = []  # time.monotonic() of each
        self.closes: list[tuple[int | None, str]] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[ServerConnection] = set()
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"{'wss' if self._tls else 'ws'}://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------------------ control

    def start(self, port: int = 0) -> CartesiaEmulator:
        self._thread = threading.Thread(target=self._run, args=(port,), name="cartesia-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Cartesia emulator did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._thread.join(10)
        self._loop = None

    def drop_connections(self, code: int = 1000, reason: str = "connection idle timeout") -> None:
        """Close every open socket from the server side (like the service's idle close)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._close_all(code, reason), self._loop).result(10)

    def open_connections(self) -> int:
        return len(self._connections)

    def contexts_for(self, text_fragment: str) -> list[ContextLog]:
        return [c for c in list(self.contexts.values()) if text_fragment in c.transcript]

    # --------------------------------------------------------------------------------- the server

    def _run(self, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve(port))
        self._loop.close()

    async def _serve(self, port: int) -> None:
        self._stopped = asyncio.Event()
        context = None
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self._tls)
        async with serve(self._handler, "127.0.0.1", port, process_request=self._handshake, ssl=context) as server:
            self._server = server
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stopped.wait()

    async def _shutdown(self) -> None:
        await self._close_all(1001, "going away")
        self._stopped.set()

    async def _close_all(self, code: int, reason: str) -> None:
        for ws in list(self._connections):
            with contextlib.suppress(ConnectionClosed):
                await ws.close(code, reason)

    def _handshake(self, _connection: ServerConnection, request: Request) -> Response | None:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        self.handshakes.append({"path": request.path, **headers})
        self.handshake_times.append(time.monotonic())
        if not request.path.rstrip("/").endswith("/tts/websocket"):
            return self._reject(404, "not_found", "Not found")
        status = self.behaviour.handshake_status
        if status == 429:
            return self._reject(429, "concurrency_limited", "Too many connections")
        if status is not None:
            return self._reject(status, "error", f"HTTP {status}")
        if headers.get("authorization") != f"Bearer {self.behaviour.api_key}":
            return self._reject(401, "invalid_api_key", "Invalid API key")
        return None

    @staticmethod
    def _reject(status: int, code: str, message: str) -> Response:
        body = json.dumps({"error_code": code, "title": message, "message": message, "request_id": "emu"}).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return Response(status, message, headers, body)

    async def _handler(self, ws: ServerConnection) -> None:
        self._connections.add(ws)
        tasks: dict[str, asyncio.Task[None]] = {}
        inputs: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        activity = asyncio.Event()
        idle = asyncio.create_task(self._idle_close(ws, activity))
        try:
            if self.behaviour.close_at_once:
                await ws.close(1011, "overloaded")
            async for raw in ws:
                activity.set()
                message = json.loads(raw)
                message["_received_at"] = time.monotonic()
                self.frames.append(message)
                context_id = str(message.get("context_id"))
                if message.get("cancel"):
                    if context_id in self.contexts:
                        self.contexts[context_id].cancelled = True
                    if context_id in tasks:
                        tasks[context_id].cancel()
                    continue
                if context_id not in inputs:
                    inputs[context_id] = asyncio.Queue()
                    config = message.get("generation_config") or {}
                    self.contexts[context_id] = ContextLog(context_id, config.get("emotion"))
                    tasks[context_id] = asyncio.create_task(self._generate(ws, context_id, inputs[context_id]))
                log = self.contexts[context_id]
                if log.expired or log.done:  # undefined at Cartesia: here the input is ignored, and counted
                    log.late_inputs.append(message)
                    continue
                inputs[context_id].put_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            self.closes.append((ws.close_code, ws.close_reason or ""))
            idle.cancel()
            for task in tasks.values():
                task.cancel()
            self._connections.discard(ws)

    async def _idle_close(self, ws: ServerConnection, activity: asyncio.Event) -> None:
        while True:
            activity.clear()
            try:
                await asyncio.wait_for(activity.wait(), self.behaviour.idle_timeout)
            except TimeoutError:
                await ws.close(1000, "connection idle timeout")
                return

    async def _generate(self, ws: ServerConnection, context_id: str, inputs: asyncio.Queue[dict[str, Any]]) -> None:  # noqa: PLR0912, PLR0915 - the service's context lifecycle, step by step
        """One context: its inputs (continuations) in order. Text is held while `max_buffer_delay_ms`
        allows (up to the last sentence end it is spoken at once), a flush or the last input speaks it
        all; a context with nothing left to say expires `context_expiry` after its last audio."""
        log = self.contexts[context_id]
        spread = self.behaviour.pace_spread
        stream = _Voicing(position=0, pace=random.uniform(1 - spread, 1 + spread))
        pending = ""
        pending_since = 0.0
        delay = 0.0
        flush_id = 1
        try:
            while True:
                now = time.monotonic()
                if pending:
                    timeout: float | None = max(0.0, pending_since + delay - now)
                else:
                    timeout = max(0.0, (log.last_output_at or now) + self.behaviour.context_expiry - now)
                try:
                    message = await asyncio.wait_for(inputs.get(), timeout)
                except TimeoutError:
                    if pending:
                        await self._speak(ws, log, stream, pending, flush_id)
                        pending = ""
                        continue
                    log.expired = True
                    log.expired_at = time.monotonic()
                    return
                error = self._error_for(message)
                if error is not None:
                    await ws.send(json.dumps({**error, "type": "error", "context_id": context_id, "done": True}))
                    log.done = True
                    return
                stream.update(message)
                transcript = message.get("transcript") or ""
                log.transcript += transcript
                log.inputs += 1
                if transcript and not pending:
                    pending_since = time.monotonic()
                pending += transcript
                delay = float(message.get("max_buffer_delay_ms", DEFAULT_BUFFER_DELAY_MS)) / 1000
                if delay <= 0 or message.get("flush") or message.get("continue") is False:
                    ready, pending = pending, ""
                else:  # managed buffering: whole sentences go at once, the rest waits for more or the delay
                    cut = max((m.end() for m in SENTENCE_END.finditer(pending)), default=0)
                    ready, pending = pending[:cut], pending[cut:]
                if ready:
                    await self._speak(ws, log, stream, ready, flush_id)
                if message.get("flush"):
                    frame = {"type": "flush_done", "context_id": context_id, "status_code": 206, "done": False}
                    await ws.send(json.dumps({**frame, "flush_done": True, "flush_id": flush_id}))
                    flush_id += 1
                if message.get("continue") is False:
                    await ws.send(
                        json.dumps({"type": "done", "context_id": context_id, "status_code": 206, "done": True})
                    )
                    log.done = True
                    log.done_at = time.monotonic()
                    return
        except ConnectionClosed:
            return

    async def _speak(self, ws: ServerConnection, log: ContextLog, stream: _Voicing, text: str, flush_id: int) -> None:
        """The audio of `text`, continuing the context's tone; the first chunk after `first_chunk_delay`
        when the context had nothing left to say (a new generation), then paced by the real-time factor."""
        b = self.behaviour
        rate = stream.rate
        log.sample_rate = rate
        total = int(len(text) * b.ms_per_char * stream.pace / 1000 / stream.speed * rate)
        # Word timings follow the tone: each character lasts ms_per_char (at speed 1, at its pace).
        per_char = b.ms_per_char * stream.pace / 1000 / stream.speed
        start = stream.position / rate
        words = [
            (m.group(), start + m.start() * per_char, start + m.end() * per_char) for m in re.finditer(r"\S+", text)
        ]
        chunk = max(1, int(b.chunk_ms / 1000 * rate))
        frequency = frequency_for(stream.emotion)
        fresh = True
        while total > 0:
            await self._maybe_fault(ws, log)
            if fresh:
                if b.stall:
                    await asyncio.Event().wait()
                await asyncio.sleep(b.first_chunk_delay + random.uniform(0.0, b.first_chunk_jitter))
            count = min(chunk, total)
            samples = _tone(frequency, rate, stream.position, count, min(1.0, b.amplitude * stream.volume))
            if not fresh:  # the first chunk comes right after first_chunk_delay
                pace = count / rate * b.real_time_factor + random.uniform(-b.jitter, b.jitter)
                await asyncio.sleep(max(0.0, pace))
            fresh = False
            await ws.send(
                json.dumps(
                    {
                        "type": "chunk",
                        "context_id": log.context_id,
                        "status_code": 206,
                        "done": False,
                        "data": base64.b64encode(_encode(samples, stream.encoding)).decode(),
                        "step_time": 5.0,
                        "flush_id": flush_id,
                    }
                )
            )
            log.last_output_at = time.monotonic()
            if log.first_chunk_at is None:
                log.first_chunk_at = log.last_output_at
            stream.position += count
            total -= count
            log.samples_sent += count
            if stream.timed:
                words = await self._send_timestamps(ws, log.context_id, words, stream.position / rate)
        if stream.timed:
            await self._send_timestamps(ws, log.context_id, words, math.inf)

    @staticmethod
    async def _send_timestamps(
        ws: ServerConnection, context_id: str, words: list[tuple[str, float, float]], until: float
    ) -> list[tuple[str, float, float]]:
        """Send the timestamps of the words whose audio has been sent (ending by `until`); return the rest."""
        ready = [w for w in words if w[2] <= until + 1e-9]
        if ready:
            timestamps = {"words": [w[0] for w in ready], "start": [w[1] for w in ready], "end": [w[2] for w in ready]}
            frame = {"type": "timestamps", "context_id": context_id, "status_code": 206, "done": False}
            await ws.send(json.dumps({**frame, "flush_id": 1, "word_timestamps": timestamps}))
        return words[len(ready) :]

    def _error_for(self, message: dict[str, Any]) -> dict[str, Any] | None:
        voice = message.get("voice")
        voice_id = voice.get("id") if isinstance(voice, dict) else voice
        if voice_id == "invalid-voice":
            return {"status_code": 404, "error_code": "voice_not_found", "title": "Voice not found",
                    "message": f"Voice '{voice_id}' was not found", "request_id": "emu"}  # fmt: skip
        if voice_id == "over-quota":  # a frame, not the handshake: the plan's limit reached mid-session
            return {"status_code": 429, "error_code": "rate_limited", "title": "Too many requests",
                    "message": "Concurrency limit reached", "request_id": "emu"}  # fmt: skip
        if voice_id == "key-revoked":
            return {"status_code": 401, "error_code": "unauthorized", "title": "Unauthorized",
                    "message": "The API key was revoked", "request_id": "emu"}  # fmt: skip
        if message.get("model_id") == "unknown-model":
            return {"status_code": 400, "error_code": "invalid_model", "title": "Invalid model",
                    "message": "Model 'unknown-model' does not exist", "request_id": "emu"}  # fmt: skip
        return None

    async def _maybe_fault(self, ws: ServerConnection, log: ContextLog) -> None:
        faults = self.behaviour.faults
        if not faults:
            return
        fault = faults[0]
        if fault.transcript is not None and fault.transcript not in log.transcript:
            return
        chunks = log.samples_sent // max(1, int(self.behaviour.chunk_ms / 1000 * log.sample_rate))
        if chunks < fault.after_chunks:
            return
        faults.pop(0)
        if fault.kind == "abort":
            ws.transport.abort()
        elif fault.kind == "close_1011":
            await ws.close(1011, "internal error")
        elif fault.kind == "close_1000":
            await ws.close(1000, "bye")
        await asyncio.Event().wait()  # "silent" (and the closed ones): nothing more for this context
