"""Playback: a PortAudio output stream fed as chunks arrive, or WAV files for machines without sound.

The PortAudio callback is the only code that runs on the audio thread. It reads from a FIFO that the
event loop fills, and hands back "room again" and "drained" through call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import statistics
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import soxr

from mqtt_speaker.engines.base import AudioChunk, Pcm
from mqtt_speaker.settings import AudioSettings
from mqtt_speaker.sync import StartGate, frames_before_start

LOG = logging.getLogger(__name__)
Samples = npt.NDArray[np.float32]
DEFAULT_RATE = 44100
AHEAD_HISTORY = 15  # callbacks whose DAC distance is smoothed (a median), for synchronized starts
REINIT_INTERVAL = 10.0  # seconds: PortAudio is restarted (every ALSA device listed) at most this often


class AudioDeviceError(Exception):
    """The sound device cannot be opened or stopped working; `played`: seconds of the utterance that had
    been played by then."""

    def __init__(self, message: str, played: float = 0.0) -> None:
        super().__init__(message)
        self.played = played


@dataclass(frozen=True)
class Played:
    seconds: float
    interrupted: bool = False


@dataclass(frozen=True)
class Playback:
    """How one utterance is to be played."""

    name: str
    on_first_audio: Callable[[], None]  # called as the first speech (segment >= 0, not the chime) plays (and is placed)
    stop: asyncio.Event  # set it to fade out and return early
    gain: float = 1.0
    start: StartGate | None = None  # a synchronized start: the first sample reaches the DAC at start.at


class Output(Protocol):
    @property
    def sample_rate(self) -> int:
        """The rate audio is best delivered at (no resampling)."""
        ...

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        """Play (or write) chunks as they arrive; return when the last sample has been heard or on stop."""
        ...

    async def close(self) -> None: ...


class Stopped(Exception):
    """The playback's stop event was set."""


async def next_chunk(chunks: AsyncIterator[AudioChunk], stopping: asyncio.Future[Any]) -> AudioChunk | None:
    """The next chunk, None at the end; Stopped when stop comes first (the pending read is cancelled)."""
    step = asyncio.ensure_future(anext(chunks))
    await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not step.done():
        step.cancel()
        await asyncio.gather(step, return_exceptions=True)
        raise Stopped
    try:
        return step.result()
    except StopAsyncIteration:
        return None


class Resampler:
    """Streaming band-limited resampler (soxr) for speech from 22.05 kHz engines onto a 44.1/48 kHz device.

    It keeps a few milliseconds of state between chunks, so a stream is resampled without seams;
    flush() returns what it still holds at the end of a stream.
    """

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.source_rate = source_rate
        self._stream = (
            None
            if source_rate == target_rate
            else soxr.ResampleStream(source_rate, target_rate, 1, dtype="int16", quality="HQ")
        )

    def __call__(self, pcm: Pcm) -> Pcm:
        if self._stream is None or pcm.size == 0:
            return pcm
        out: Pcm = self._stream.resample_chunk(pcm)
        return out

    def flush(self) -> Pcm:
        if self._stream is None:
            return _EMPTY
        out: Pcm = self._stream.resample_chunk(_EMPTY, last=True)
        return out


class Feed:
    """An utterance's chunks as samples at the device's rate and the playback's gain: one resampler per
    source rate (the chime's may differ from the voice's), flushed when the rate changes and at the end."""

    def __init__(self, rate: int, gain: float) -> None:
        self._rate = rate
        self._gain = gain
        self._resampler: Resampler | None = None

    def __call__(self, chunk: AudioChunk) -> list[Pcm]:
        out: list[Pcm] = []
        if self._resampler is None or chunk.sample_rate != self._resampler.source_rate:
            if self._resampler is not None:
                out.append(scaled(self._resampler.flush(), self._gain))
            self._resampler = Resampler(chunk.sample_rate, self._rate)
        out.append(scaled(self._resampler(chunk.samples), self._gain))
        return out

    def end(self) -> Pcm:
        return _EMPTY if self._resampler is None else scaled(self._resampler.flush(), self._gain)


def to_float(samples: Pcm) -> Samples:
    return (samples.astype(np.float32) / 32768.0).astype(np.float32)


class _Fifo:
    """Samples waiting for the PortAudio callback. Written by the event loop, read by the audio thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blocks: collections.deque[Samples] = collections.deque()
        self._head = 0
        self.buffered = 0
        self.played = 0
        self.ended = True
        self.on_drained: Callable[[], None] | None = None
        self.on_room: Callable[[], None] | None = None
        self.room_below = 0
        self._start: tuple[float, int, Callable[[float], None]] | None = None  # (wall clock, rate, on_placed)

    def begin(self, on_drained: Callable[[], None]) -> None:
        with self._lock:
            self._blocks.clear()
            self._head = 0
            self.buffered = 0
            self.played = 0
            self.ended = False
            self.on_drained = on_drained
            self._start = None

    def hold_until(self, start: float, rate: int, on_placed: Callable[[float], None]) -> None:
        """Keep what is written silent until the wall-clock instant `start` reaches the DAC; then tell
        `on_placed` (on the audio thread) how late the first sample was, in seconds."""
        with self._lock:
            self._start = (start, rate, on_placed)

    def holding(self) -> float | None:
        """The instant the first sample waits for (wall clock), while it waits."""
        with self._lock:
            return self._start[0] if self._start else None

    def write(self, samples: Samples) -> None:
        with self._lock:
            self._blocks.append(samples)
            self.buffered += samples.size

    def end(self) -> None:
        with self._lock:
            self.ended = True
            if self.buffered == 0:
                self._fire_drained()

    def fade_out(self, samples: int, on_drained: Callable[[], None]) -> None:
        """Keep only the next `samples`, ramped down to silence; drop the rest (all of it, if still held)."""
        with self._lock:
            if self._start is not None:
                self._start, samples = None, 0
            kept: list[Samples] = []
            need, head = samples, self._head
            for block in self._blocks:
                part = block[head : head + need]
                kept.append(part)
                need -= part.size
                head = 0
                if need <= 0:
                    break
            tail = np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)
            tail = (tail * np.linspace(1.0, 0.0, tail.size, dtype=np.float32)).astype(np.float32)
            self._blocks = collections.deque([tail]) if tail.size else collections.deque()
            self._head = 0
            self.buffered = tail.size
            self.ended = True
            self.on_drained = on_drained
            if self.buffered == 0:
                self._fire_drained()

    def abandon(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._head = 0
            self.buffered = 0
            self.ended = True
            self.on_drained = None

    def _fire_drained(self) -> None:
        callback, self.on_drained = self.on_drained, None
        if callback is not None:
            callback()

    def read_into(self, out: Samples, dac_time: float | None = None) -> None:
        """Fill `out` (audio thread), whose first frame reaches the DAC at `dac_time` (wall clock; None:
        now): queued samples first, silence after; while held, silence before them up to the instant."""
        with self._lock:
            if self._start is not None and self._blocks:
                start, rate, on_placed = self._start
                dac_time = time.time() if dac_time is None else dac_time
                pad = max(0, frames_before_start(start, dac_time, rate))
                out[: min(pad, out.size)] = 0.0
                if pad >= out.size:
                    return
                self._start = None
                on_placed(dac_time + pad / rate - start)
                out = out[pad:]
            filled = 0
            while filled < out.size and self._blocks:
                block = self._blocks[0]
                take = min(out.size - filled, block.size - self._head)
                out[filled : filled + take] = block[self._head : self._head + take]
                filled += take
                self._head += take
                if self._head == block.size:
                    self._blocks.popleft()
                    self._head = 0
            self.buffered -= filled
            self.played += filled
            if self.on_room is not None and self.buffered < self.room_below:
                callback, self.on_room = self.on_room, None
                callback()
            if self.ended and self.buffered == 0:
                self._fire_drained()
        out[filled:] = 0.0


def _sound_devices_seen() -> tuple[tuple[str, ...], bool]:
    """What a new sound device or a sound server that started would change, cheaply: the ALSA device
    nodes, and whether the PulseAudio/PipeWire socket exists (a directory listing and a stat)."""
    try:
        nodes = tuple(sorted(os.listdir("/dev/snd")))
    except OSError:
        nodes = ()
    server = os.environ.get("PULSE_SERVER", "").removeprefix("unix:")
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    sockets = [server] if server.startswith("/") else []
    sockets += [os.path.join(runtime, "pulse", "native"), os.path.join(runtime, "pipewire-0")] if runtime else []
    return nodes, any(os.path.exists(path) for path in sockets)


def _release_alsa_probes() -> None:
    """Unload what PortAudio's device listing made ALSA load; call it while no stream is open.

    To list devices PortAudio opens every PCM that ALSA's configuration defines, so ALSA loads every
    plugin installed (with libasound2-plugins: the a52 encoder and its libavcodec, jack, speex, ...) and
    keeps them, and its parsed configuration, for the life of the process: about 10 MB resident, a
    quarter of the daemon's idle memory. Freeing ALSA's global configuration also unloads the plugins
    no open PCM holds. Opening the stream later reads the configuration again and loads only the
    plugin it uses (measured: no slower, 2 to 5 ms either way).
    """
    name = ctypes.util.find_library("asound")
    if name is None:
        return  # not ALSA (or not Linux): nothing was loaded
    try:
        result = ctypes.CDLL(name).snd_config_update_free_global()
    except (OSError, AttributeError) as exc:
        LOG.debug("cannot free ALSA's configuration: %s", exc)
        return
    LOG.debug("freed ALSA's configuration and unused plugins (%d)", result)


class SoundDevicePlayer:
    """One PortAudio output stream, opened on the first utterance and closed after `idle_close` of silence.

    Between utterances a running stream plays silence, so the next one starts without the cost of
    opening the device; stopping a stream while audio is buffered would cut the tail, so it never is.
    """

    def __init__(self, settings: AudioSettings) -> None:
        import sounddevice

        self._sd: Any = sounddevice
        self._settings = settings
        self._stream: Any = None
        self._fifo = _Fifo()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._rate = settings.sample_rate or self._device_rate()
        self._latency = 0.0  # the open stream's, for hosts that report no DAC times
        self._ahead: collections.deque[float] = collections.deque(maxlen=AHEAD_HISTORY)  # audio thread only
        self._reinitialized = -REINIT_INTERVAL
        self._devices_seen = _sound_devices_seen()
        _release_alsa_probes()

    def _device_rate(self) -> int:
        try:
            info = self._sd.query_devices(self._settings.device, "output")
            return int(info["default_samplerate"])
        except (self._sd.PortAudioError, ValueError) as exc:
            LOG.warning("cannot query the output device (%s); assuming %d Hz", exc, DEFAULT_RATE)
            return DEFAULT_RATE

    @property
    def sample_rate(self) -> int:
        return self._rate

    def _open(self) -> Any:
        if self._stream is not None and self._stream.active:
            return self._stream
        self._close_stream()
        try:
            return self._start_stream()
        except AudioDeviceError as exc:
            # PortAudio lists devices once, when it starts: one plugged in (or a sound server started)
            # since then is only seen after a restart of PortAudio. Listing every ALSA device is slow,
            # so it is done when the devices or the sound server's socket changed, and else at most once
            # per REINIT_INTERVAL: not for every request while a speaker stays unplugged. (It runs in a
            # worker thread, never on the event loop.)
            seen = _sound_devices_seen()
            if seen == self._devices_seen and time.monotonic() - self._reinitialized < REINIT_INTERVAL:
                raise
            LOG.info("%s; restarting PortAudio and trying again", exc)
            self._reinitialized, self._devices_seen = time.monotonic(), seen
            self._sd._terminate()
            self._sd._initialize()
            self._rate = self._settings.sample_rate or self._device_rate()
            _release_alsa_probes()
            return self._start_stream()

    def probe(self) -> str:
        """Open the output device and close it again without playing anything."""
        stream = self._open()
        description = f"{self._settings.device or 'default device'} opens at {self._rate} Hz"
        self._close_stream()
        return f"{description}, latency {stream.latency * 1000:.0f} ms"

    def _start_stream(self) -> Any:
        try:
            stream = self._sd.OutputStream(
                samplerate=self._rate,
                channels=1,
                dtype="float32",
                device=self._settings.device,
                latency=self._settings.latency,
                callback=self._callback,
            )
            stream.start()
        except (self._sd.PortAudioError, ValueError) as exc:
            device = self._settings.device if self._settings.device is not None else "(default)"
            raise AudioDeviceError(f"cannot open the output device {device}: {exc}") from exc
        LOG.debug("output stream open: %d Hz, latency %.1f ms", self._rate, stream.latency * 1000)
        self._stream = stream
        self._latency = stream.latency
        self._ahead.clear()
        return stream

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        # How far ahead of now this buffer reaches the DAC, on PortAudio's clock, put on the wall clock.
        # The median of the last callbacks': through ALSA's pulse plugin one in twenty or so reports a
        # few milliseconds less (measured: 2 ms instead of 8.7), which would place a start that early.
        reported = time_info.outputBufferDacTime - time_info.currentTime if time_info.currentTime else self._latency
        self._ahead.append(reported)
        self._fifo.read_into(outdata[:, 0], time.time() + statistics.median(self._ahead))

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(self._sd.PortAudioError):
                stream.close()

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        loop, stopping, feed, announcer, limit = Turn.begin(playback, self._rate, self._settings, self._idle_timer)
        fifo = self._fifo
        stream: Any = None
        drained = loop.create_future()
        try:
            while (chunk := await next_chunk(chunks, stopping)) is not None:
                if not chunk.samples.size:
                    continue
                first = stream is None
                if first:
                    stream = await asyncio.to_thread(self._open)  # opening lists devices at worst: not on the loop
                    fifo.begin(lambda: _resolve_threadsafe(loop, drained))
                    if playback.start is not None:
                        fifo.hold_until(playback.start.at, self._rate, announcer.placed_threadsafe)
                for samples in feed(chunk):
                    fifo.write(to_float(samples))
                if chunk.segment >= 0:
                    announcer.speech()
                if fifo.buffered > limit:
                    await self._wait_for_room(loop, limit // 2, stream, stopping)
            if stream is None:
                return Played(0.0)
            fifo.write(to_float(feed.end()))
            fifo.end()
            await self._wait_playing(drained, stream, fifo.buffered / self._rate, stopping)
            # The last samples have left our buffer; let them pass PortAudio's own latency too.
            await asyncio.sleep(stream.latency)
            return Played(fifo.played / self._rate)
        except Stopped:
            if stream is None:
                return Played(0.0, interrupted=True)
            await self._fade(loop, stream)
            return Played(fifo.played / self._rate, interrupted=True)
        except BaseException:
            fifo.abandon()
            raise
        finally:
            stopping.cancel()
            self._idle_timer = loop.call_later(self._settings.idle_close, self._close_stream)

    async def _fade(self, loop: asyncio.AbstractEventLoop, stream: Any) -> None:
        """A short ramp to silence instead of a click; returns once it has been heard."""
        faded = loop.create_future()
        self._fifo.fade_out(int(self._settings.fade_ms / 1000 * self._rate), lambda: _resolve_threadsafe(loop, faded))
        never = loop.create_future()
        try:
            await self._wait_playing(faded, stream, self._settings.fade_ms / 1000, never)
        finally:
            never.cancel()
        await asyncio.sleep(stream.latency)

    async def _wait_for_room(
        self, loop: asyncio.AbstractEventLoop, below: int, stream: Any, stopping: asyncio.Future[Any]
    ) -> None:
        room = loop.create_future()
        self._fifo.room_below = below
        self._fifo.on_room = lambda: _resolve_threadsafe(loop, room)
        await self._wait_playing(room, stream, self._settings.max_buffer_seconds, stopping)

    async def _wait_playing(
        self, future: asyncio.Future[None], stream: Any, expected: float, stopping: asyncio.Future[Any]
    ) -> None:
        """Wait for the callback to signal; Stopped on stop; a stream that stopped calling back is a failure.
        Audio held for a synchronized start is expected that much later."""
        held = self._fifo.holding()
        deadline = time.monotonic() + expected + 2.0 + stream.latency + (max(0.0, held - time.time()) if held else 0.0)
        while not future.done():
            if stopping.done():
                raise Stopped
            timeout = deadline - time.monotonic()
            if timeout <= 0 or not stream.active:
                self._close_stream()
                raise AudioDeviceError("the output device stopped playing", played=self._fifo.played / self._rate)
            await asyncio.wait({future, stopping}, timeout=min(timeout, 1.0), return_when=asyncio.FIRST_COMPLETED)

    async def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._close_stream()


class Turn(NamedTuple):
    """What one `play` call works with, the same for both players."""

    loop: asyncio.AbstractEventLoop
    stopping: asyncio.Future[Any]  # done once the playback is to stop
    feed: Feed
    announcer: Announcer
    limit: int  # frames buffered beyond which `play` waits for room

    @classmethod
    def begin(cls, playback: Playback, rate: int, settings: AudioSettings, idle: asyncio.TimerHandle | None) -> Turn:
        """The turn of `playback`; `idle`, the player's timer that would close its idle output, is cancelled."""
        if idle is not None:
            idle.cancel()
        loop = asyncio.get_running_loop()
        stopping = asyncio.ensure_future(playback.stop.wait())
        limit = int(settings.max_buffer_seconds * rate)
        return cls(loop, stopping, Feed(rate, playback.gain), Announcer(playback, loop), limit)


class Announcer:
    """Calls the playback's on_first_audio once the first speech has been handed over and, for a
    synchronized start, the first sample has been placed on the device's clock (its lateness known)."""

    def __init__(self, playback: Playback, loop: asyncio.AbstractEventLoop) -> None:
        self._playback = playback
        self._loop = loop
        self._speech = False
        self._done = False

    def speech(self) -> None:
        self._speech = True
        self._announce()

    def placed_threadsafe(self, late: float) -> None:
        """Called on the audio thread."""
        self._loop.call_soon_threadsafe(self.placed, late)

    def placed(self, late: float) -> None:
        assert self._playback.start is not None
        self._playback.start.late = late
        self._announce()

    def _announce(self) -> None:
        start = self._playback.start
        if self._speech and not self._done and (start is None or start.late is not None):
            self._done = True
            self._playback.on_first_audio()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_threadsafe(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    """Called on the audio thread: wake the event loop."""
    loop.call_soon_threadsafe(_resolve, future)


def scaled(samples: Pcm, gain: float) -> Pcm:
    if gain == 1.0:
        return samples
    return (samples * gain).astype(np.int16)


def _write_wav(writer: wave.Wave_write, samples: Pcm) -> int:
    writer.writeframes(samples.astype("<i2").tobytes())
    return samples.size


_EMPTY: Pcm = np.zeros(0, dtype=np.int16)


class WavWriter:
    """Writes each utterance to <output_dir>/<time>-<id>.wav instead of playing it."""

    def __init__(self, directory: Path, sample_rate: int = DEFAULT_RATE) -> None:
        self._dir = directory
        self._rate = sample_rate

    @property
    def sample_rate(self) -> int:
        return self._rate

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AudioDeviceError(f"cannot create the output directory {self._dir}: {exc}") from exc
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
        path = self._dir / f"{stamp}-{re.sub(r'[^A-Za-z0-9_.-]', '_', playback.name)[:80]}.wav"
        frames = 0
        writer: wave.Wave_write | None = None
        resampler: Resampler | None = None
        stopping = asyncio.ensure_future(playback.stop.wait())
        interrupted = False
        announced = False
        try:
            while (chunk := await next_chunk(chunks, stopping)) is not None:
                if writer is None:
                    writer = wave.open(str(path), "wb")  # noqa: SIM115 - opened on the first chunk, closed below
                    writer.setnchannels(1)
                    writer.setsampwidth(2)
                    writer.setframerate(chunk.sample_rate)
                if chunk.segment >= 0 and not announced:
                    announced = True
                    playback.on_first_audio()
                if resampler is None or chunk.sample_rate != resampler.source_rate:
                    resampler = Resampler(chunk.sample_rate, writer.getframerate())
                frames += _write_wav(writer, scaled(resampler(chunk.samples), playback.gain))
        except Stopped:
            interrupted = True
        except OSError as exc:
            raise AudioDeviceError(f"cannot write {path}: {exc}") from exc
        finally:
            stopping.cancel()
            if writer is not None:
                if resampler is not None:
                    frames += _write_wav(writer, scaled(resampler.flush(), playback.gain))
                writer.close()
        rate = writer.getframerate() if writer else self._rate
        LOG.info("wrote %s (%.2f s)", path, frames / rate)
        return Played(frames / rate, interrupted)

    async def close(self) -> None:
        """Nothing is held open between utterances."""
