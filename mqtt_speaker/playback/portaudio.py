"""Playback through PortAudio (bare ALSA, no sound server): a callback stream fed from a FIFO.

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
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from mqtt_speaker.futures import settle_threadsafe
from mqtt_speaker.playback.output import (
    DEFAULT_RATE,
    Announcer,
    AudioDeviceError,
    Playback,
    Played,
    Stopped,
    frames_before_start,
    play_utterance,
)
from mqtt_speaker.playback.pcm import Samples, to_float
from mqtt_speaker.settings import AudioSettings
from mqtt_speaker.speech.audio import AudioChunk, Pcm

LOG = logging.getLogger(__name__)
AHEAD_HISTORY = 15  # callbacks whose DAC distance is smoothed (a median), for synchronized starts
REINIT_INTERVAL = 10.0  # seconds: PortAudio is restarted (every ALSA device listed) at most this often


class Fifo:
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
        self.settings = settings
        self._stream: Any = None
        self.fifo = Fifo()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._rate = settings.sample_rate or self._device_rate()
        self._latency = 0.0  # the open stream's, for hosts that report no DAC times
        self._ahead: collections.deque[float] = collections.deque(maxlen=AHEAD_HISTORY)  # audio thread only
        self._reinitialized = -REINIT_INTERVAL
        self._devices_seen = _sound_devices_seen()
        _release_alsa_probes()

    def _device_rate(self) -> int:
        try:
            info = self._sd.query_devices(self.settings.device, "output")
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
            self._sd._terminate()  # noqa: SLF001 - sounddevice's only way to list devices again
            self._sd._initialize()  # noqa: SLF001
            self._rate = self.settings.sample_rate or self._device_rate()
            _release_alsa_probes()
            return self._start_stream()

    def probe(self) -> str:
        """Open the output device and close it again without playing anything."""
        stream = self._open()
        description = f"{self.settings.device or 'default device'} opens at {self._rate} Hz"
        self._close_stream()
        return f"{description}, latency {stream.latency * 1000:.0f} ms"

    def _start_stream(self) -> Any:
        try:
            stream = self._sd.OutputStream(
                samplerate=self._rate,
                channels=1,
                dtype="float32",
                device=self.settings.device,
                latency=self.settings.latency,
                callback=self._callback,
            )
            stream.start()
        except (self._sd.PortAudioError, ValueError) as exc:
            device = self.settings.device if self.settings.device is not None else "(default)"
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
        self.fifo.read_into(outdata[:, 0], time.time() + statistics.median(self._ahead))

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(self._sd.PortAudioError):
                stream.close()

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        return await play_utterance(self, chunks, playback, self.settings.max_buffer_seconds)

    async def open_sink(self, playback: Playback, announcer: Announcer) -> _FifoSink:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        stream = await asyncio.to_thread(self._open)  # opening lists devices at worst: not on the loop
        return _FifoSink(self, stream, playback, announcer)

    def turn_over(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(self.settings.idle_close, self._close_stream)

    async def wait_playing(
        self, future: asyncio.Future[None], stream: Any, expected: float, stopping: asyncio.Future[Any] | None
    ) -> None:
        """Wait for the callback to signal; Stopped on stop; a stream that stopped calling back is a failure.
        Audio held for a synchronized start is expected that much later."""
        held = self.fifo.holding()
        deadline = time.monotonic() + expected + 2.0 + stream.latency + (max(0.0, held - time.time()) if held else 0.0)
        waits: set[asyncio.Future[Any]] = {future} if stopping is None else {future, stopping}
        while not future.done():
            if stopping is not None and stopping.done():
                raise Stopped
            timeout = deadline - time.monotonic()
            if timeout <= 0 or not stream.active:
                self._close_stream()
                raise AudioDeviceError("the output device stopped playing", played=self.fifo.played / self._rate)
            await asyncio.wait(waits, timeout=min(timeout, 1.0), return_when=asyncio.FIRST_COMPLETED)

    async def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._close_stream()


class _FifoSink:
    """One utterance on the PortAudio stream: samples into the FIFO the callback reads."""

    def __init__(self, player: SoundDevicePlayer, stream: Any, playback: Playback, announcer: Announcer) -> None:
        self._player = player
        self._stream = stream
        self._fifo = player.fifo
        self._loop = asyncio.get_running_loop()
        self.rate = player.sample_rate
        self._drained: asyncio.Future[None] = self._loop.create_future()
        self._fifo.begin(lambda: settle_threadsafe(self._loop, self._drained))
        if playback.start is not None:
            self._fifo.hold_until(playback.start.at, self.rate, announcer.placed_threadsafe)

    @property
    def queued(self) -> int:
        return self._fifo.buffered

    def put(self, samples: Pcm) -> None:
        self._fifo.write(to_float(samples))

    async def room(self, below: int, stopping: asyncio.Future[Any]) -> None:
        room: asyncio.Future[None] = self._loop.create_future()
        self._fifo.room_below = below
        self._fifo.on_room = lambda: settle_threadsafe(self._loop, room)
        await self._player.wait_playing(room, self._stream, self._player.settings.max_buffer_seconds, stopping)

    async def finish(self, stopping: asyncio.Future[Any]) -> float:
        self._fifo.end()
        await self._player.wait_playing(self._drained, self._stream, self._fifo.buffered / self.rate, stopping)
        # The last samples have left our buffer; let them pass PortAudio's own latency too.
        await asyncio.sleep(self._stream.latency)
        return self._fifo.played / self.rate

    async def fade(self) -> float:
        """A short ramp to silence instead of a click; returns once it has been heard."""
        faded: asyncio.Future[None] = self._loop.create_future()
        fade_ms = self._player.settings.fade_ms
        self._fifo.fade_out(int(fade_ms / 1000 * self.rate), lambda: settle_threadsafe(self._loop, faded))
        await self._player.wait_playing(faded, self._stream, fade_ms / 1000, None)
        await asyncio.sleep(self._stream.latency)
        return self._fifo.played / self.rate

    def abandon(self) -> None:
        self._fifo.abandon()
