"""Playback: a PortAudio output stream fed as chunks arrive, or WAV files for machines without sound.

A writer thread owns the stream and writes 16-bit blocks into it (blocking PortAudio I/O, no Python
callback per period); the event loop hands blocks over and hears back "room again", "played" and
"stopped" through call_soon_threadsafe. See _Writer for the buffering and docs/performance.md for why.
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
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soxr

from mqtt_speaker.engines.base import AudioChunk, Pcm
from mqtt_speaker.settings import AudioSettings
from mqtt_speaker.sync import StartGate, frames_before_start

LOG = logging.getLogger(__name__)
Samples = npt.NDArray[np.float32]
DEFAULT_RATE = 44100
# Seconds from a frame leaving PortAudio's buffer to it being heard: the sound server's own latency.
# An estimate (blocking PortAudio cannot report it). The writer's clock leaves it out, so that it errs
# towards "the device holds less" and tops up early; `finished`, a stop's fade and delay() add it.
SERVER_DELAY = 0.020
IDLE_LEVEL = 0.012  # seconds of silence kept queued while no speech is: what the next speech waits behind
REINIT_INTERVAL = 10.0  # seconds: while no device or sound server comes or goes, PortAudio restarts this seldom


class AudioDeviceError(Exception):
    """The sound device cannot be opened or stopped working."""


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
    start: StartGate | None = None  # a synchronized start: the first sample (the chime's) is heard at start.at


class Output(Protocol):
    @property
    def sample_rate(self) -> int:
        """The rate audio is best delivered at (no resampling)."""
        ...

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        """Play (or write) chunks as they arrive; return when the last sample has been heard or on stop."""
        ...

    async def close(self) -> None: ...


class _Stopped(Exception):
    """The playback's stop event was set."""


async def _next_chunk(chunks: AsyncIterator[AudioChunk], stopping: asyncio.Future[Any]) -> AudioChunk | None:
    """The next chunk, None at the end; _Stopped when stop comes first (the pending read is cancelled)."""
    step = asyncio.ensure_future(anext(chunks))
    await asyncio.wait({step, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not step.done():
        step.cancel()
        await asyncio.gather(step, return_exceptions=True)
        raise _Stopped
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


@dataclass
class _Feeding:
    writer: _Writer | None = None  # set once the first chunk opened the stream


class _Writer:
    """Owns one PortAudio output stream on a thread of its own, and writes speech into it in large blocks.

    The stream is opened with a large buffer (`AudioSettings.latency`, 0.4 s): while speaking, the writer
    keeps it nearly full, so PortAudio, libpulse and this thread wake up a few dozen times a second, not
    hundreds, and a process held to a small CPU quota can be paused longer than a quota period without
    a gap. Between utterances it keeps only IDLE_LEVEL of silence queued, so the next speech starts
    after a few milliseconds: the buffer is short at the start and grows while speaking. (The stream
    never runs dry while open: PortAudio restarts a dry stream only once a whole period, a quarter of
    the buffer, has been written, which would delay the start.) A stop flushes the stream (`abort`)
    and writes a short fade of what was being heard in its place.

    Where the speaker is comes from the writer's own clock, set when the stream starts: PortAudio's
    blocking API cannot tell (through libpulse write_available moves in steps of ~140 ms and exceeds
    the buffer). The event loop hands blocks over with put(); the state is guarded by one condition
    variable; answers go back to the loop through call_soon_threadsafe.
    """

    def __init__(
        self, reopen: Callable[[], Any], stream: Any, rate: int, fade_frames: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._reopen = reopen  # a fresh stream: one reliably starts once a period has been written
        self._stream = stream
        self._rate = rate
        self._fade = fade_frames
        self._loop = loop
        self._cond = threading.Condition()
        self._buffer = max(1, int(stream.latency * rate))  # how far ahead of the speaker we write, in frames
        self._period = self._buffer // 4 + 1  # written at once, a stream that is not running starts
        self._idle = max(1, int(IDLE_LEVEL * rate))
        self._pending: collections.deque[Pcm] = collections.deque()  # handed over, not yet written
        self.pending_frames = 0
        self._recent: collections.deque[Pcm] = collections.deque()  # written lately: a stop fades from here
        self._recent_frames = 0
        self._written = 0  # frames written since the stream was opened (silence too)
        self._anchor_time = 0.0  # time.monotonic() at which frame `_anchor_frame` was heard
        self._anchor_frame = 0
        self._began: int | None = None  # frame of the current utterance's first sample, once written
        self._audio_end = 0  # frame after the last sample of speech written
        self._room: tuple[int, asyncio.Future[None]] | None = None  # (pending below, future)
        self._finish: asyncio.Future[int] | None = None
        self._stop: asyncio.Future[int] | None = None
        self._closing = False
        self._hungry = False  # the writer waits for the next block, to write it at once
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="audio-writer", daemon=True)
        self._thread.start()

    # -- event loop side ---------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None and not self._closing

    @property
    def latency(self) -> float:
        """Seconds of audio the device buffer holds (what a write may run ahead of the speaker)."""
        return self._buffer / self._rate

    def delay(self) -> float:
        """Seconds until a frame handed over now is heard: the hook for starting at a given instant.

        Audio put() now is written after what is pending and heard after what is queued in the device;
        to start at `when` (time.monotonic()), hand over int((when - now - delay()) * rate) frames of
        silence first. (Between utterances the device holds IDLE_LEVEL and nothing is pending.)
        """
        with self._cond:
            return (self._queued() + self.pending_frames) / self._rate + SERVER_DELAY

    def begin(self) -> None:
        with self._cond:
            self._began = None

    def put(self, samples: Pcm) -> None:
        with self._cond:
            block = self._buffer // 4  # see _step
            crossed = self.pending_frames < block <= self.pending_frames + samples.size
            self._pending.append(samples)
            self.pending_frames += samples.size
            if self._hungry or crossed:
                self._cond.notify()

    def wait_room(self, below: int) -> asyncio.Future[None]:
        """A future resolved once fewer than `below` frames wait to be written."""
        room: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            if self.pending_frames < below:
                room.set_result(None)
            else:
                self._room = (below, room)
        return room

    def finish(self) -> asyncio.Future[int]:
        """A future of the utterance's frames, resolved once they have all been heard."""
        future: asyncio.Future[int] = self._loop.create_future()
        with self._cond:
            self._finish = future
            self._cond.notify()
        return future

    def stop(self) -> asyncio.Future[int]:
        """Drop what is not yet heard but a short fade; the future (frames played) resolves when it is written."""
        future: asyncio.Future[int] = self._loop.create_future()
        with self._cond:
            self._finish = None
            self._stop = future
            self._cond.notify()
        return future

    def close(self) -> None:
        """Let the thread close the stream (a close can take a while; the loop does not wait for it)."""
        with self._cond:
            self._closing = True
            self._pending.clear()
            self.pending_frames = 0
            self._cond.notify()

    def join(self) -> None:
        self._thread.join()

    # -- writer thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except Exception as exc:  # the device failed: every waiter hears of it
            LOG.debug("output stream failed: %s", exc)
            with self._cond:
                self.error = exc
                self._pending.clear()
                self.pending_frames = 0
                waiters = [self._finish, self._stop, self._room[1] if self._room else None]
                self._finish = self._stop = self._room = None
            for future in waiters:
                if future is not None:
                    self._loop.call_soon_threadsafe(_fail, future, exc)
        finally:
            with contextlib.suppress(Exception):
                self._stream.close()

    def _step(self) -> bool:
        """Write one block (speech or idle silence), or answer a finish or a stop, or wait.

        While the device holds less than half its buffer every block of speech is written at once;
        after that blocks are gathered into quarter buffers, so the writer, PortAudio and libpulse each
        wake about four times per buffer. Without speech to write, silence keeps IDLE_LEVEL queued.
        """
        with self._cond:
            if self._closing:
                return False
            if self._stop is not None:
                stop, self._stop = self._stop, None
                faded = self._stop_tail()
                block, speech = None, False
            else:
                stop, faded = None, _EMPTY
                block, speech, timeout = self._next_block()
                if block is None:
                    self._hungry = not self._pending
                    self._cond.wait(timeout)
                    self._hungry = False
                    return True
        if stop is not None:
            self._do_stop(stop, faded)
        elif block is not None:
            self._write(block, speech)
        return True

    def _next_block(self) -> tuple[Pcm | None, bool, float | None]:
        """(block to write, is it speech, else how long to wait) (lock held)."""
        queued = self._queued()
        free = self._buffer - queued
        low, block_frames = self._buffer // 2, self._buffer // 4
        final = self._finish is not None
        if self._pending and free > 0:
            enough = self.pending_frames >= block_frames or final
            if queued < low or (free >= block_frames and enough):
                return self._take(free), True, None
        server = int(SERVER_DELAY * self._rate)
        if self._finish is not None and not self._pending and self._heard() >= self._audio_end + server:
            finish, self._finish = self._finish, None
            played = 0 if self._began is None else self._audio_end - self._began
            self._loop.call_soon_threadsafe(_resolve_value, finish, played)
        if not self._pending and queued < self._idle // 2:
            return np.zeros(self._idle - queued, dtype=np.int16), False, None
        # Wait for new work, the device running low, room for a block, or the end being heard.
        waits = [(queued - self._idle // 2) / self._rate]
        if self._pending:
            if self.pending_frames < block_frames and not final:
                waits = [(queued - low) / self._rate]
            else:
                waits = [(block_frames - free) / self._rate]
        if self._finish is not None and not self._pending:
            waits.append((self._audio_end + server - self._heard()) / self._rate)
        return None, False, max(min(waits), 0.001)

    def _take(self, frames: int) -> Pcm:
        """Up to `frames` of speech from the pending blocks, as one array (lock held)."""
        parts: list[Pcm] = []
        while self._pending and frames > 0:
            head = self._pending[0]
            if head.size <= frames:
                parts.append(self._pending.popleft())
            else:
                parts.append(head[:frames])
                self._pending[0] = head[frames:]
            frames -= parts[-1].size
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self.pending_frames -= block.size
        if self._room is not None and self.pending_frames < self._room[0]:
            room, self._room = self._room[1], None
            self._loop.call_soon_threadsafe(_resolve, room)
        return block

    def _write(self, block: Pcm, speech: bool, restarted: bool = False) -> None:
        """Write a block that fits (does not block).

        A stream that is not running starts only once a whole period is written, so a block into one gets
        silence before it to make up the period (after it, for a stop's fade, which must be heard at once).
        One that ran dry is restarted first: through libpulse a starved stream may otherwise wait for far
        more than a period, while the writer's clock (which errs towards "less queued") went on."""
        restart = False
        with self._cond:
            if self._queued() == 0:
                restart = self._written > 0 and not restarted
                pad = np.zeros(max(0, self._period - block.size), dtype=np.int16)
                block = np.concatenate((block, pad) if restarted else (pad, block)) if pad.size else block
                pad = pad[:0] if restarted else pad
                self._anchor_time, self._anchor_frame = time.monotonic(), self._written
                if speech and self._began is None:
                    self._began = self._written + pad.size
            elif speech and self._began is None:
                self._began = self._written
            self._written += block.size
            if speech:
                self._audio_end = self._written
            self._recent.append(block)
            self._recent_frames += block.size
            while self._recent_frames - self._recent[0].size >= self._buffer + self._fade:
                self._recent_frames -= self._recent.popleft().size
        if restart:
            LOG.debug("the output stream ran dry; opening it again")
            self._fresh_stream()
        if self._stream.write(block):
            self._recover(block, speech)

    def _recover(self, block: Pcm, speech: bool) -> None:
        """PortAudio found the stream starved (the sound server ran dry though the clock said it had not)
        and prepared it again: it would now wait for a period, while the clock ran on. Restart it, and
        write the block again after a period of silence, with the clock set from here."""
        LOG.debug("the output stream underflowed; restarting it")
        with self._cond:
            pad = np.zeros(max(0, self._period - block.size), dtype=np.int16)
            self._anchor_time, self._anchor_frame = time.monotonic(), self._written - block.size
            self._written += pad.size
            if self._began is not None and self._began >= self._anchor_frame:
                self._began += pad.size
            if speech:
                self._audio_end = self._written
        self._fresh_stream()
        self._stream.write(np.concatenate((pad, block)) if pad.size else block)

    def _fresh_stream(self) -> None:
        """Close the stream and open a new one (a starved one, restarted, was seen to stay silent well
        past a period, with the clock running on; a new one starts at a period)."""
        self._stream.close()
        self._stream = self._reopen()

    def _heard(self) -> int:
        """The frame being heard now, by the writer's clock (lock held)."""
        elapsed = int((time.monotonic() - self._anchor_time) * self._rate)
        return min(self._written, self._anchor_frame + elapsed)

    def _queued(self) -> int:
        """Frames written and not yet heard (lock held)."""
        return self._written - self._heard()

    def _stop_tail(self) -> Pcm:
        """The `fade` frames that were to be heard next, faded; forgets everything else (lock held)."""
        playing = max(self._heard() - int(SERVER_DELAY * self._rate), self._written - self._recent_frames)
        start = self._written - self._recent_frames
        upcoming = [*self._recent, *self._pending]
        tail = np.concatenate(upcoming)[playing - start : playing - start + self._fade] if upcoming else _EMPTY
        self._pending.clear()
        self.pending_frames = 0
        self._recent.clear()
        self._recent_frames = 0
        self._finish = None
        if self._began is not None:
            self._audio_end = min(self._audio_end, playing + tail.size)
        self._written = playing  # the stream's own count restarts at the flush; ours stays continuous
        self._anchor_time, self._anchor_frame = time.monotonic(), playing  # nothing queued: not running
        return (tail * np.linspace(1.0, 0.0, tail.size)).astype(np.int16)

    def _do_stop(self, stop: asyncio.Future[int], faded: Pcm) -> None:
        """Flush the device (silence at once) and write the fade in place of what it held."""
        self._stream.abort()
        self._stream.start()
        self._write(faded, speech=False, restarted=True)
        with self._cond:
            played = 0 if self._began is None else max(0, self._audio_end - self._began)
            self._began = None
        self._loop.call_soon_threadsafe(_resolve_value, stop, played)


_EMPTY: Pcm = np.zeros(0, dtype=np.int16)


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


class _HeldPlayback:
    """One synchronized announcement, on a PortAudio callback stream of its own: only a callback is told
    when the buffer it fills reaches the DAC (outputBufferDacTime), so only there can the first sample be
    placed on the device's own clock, to the sample (docs/sync.md). The writer's blocking stream cannot
    tell; it is closed meanwhile, and reopened by the next plain request. The callback's cost (it wakes
    for every period) is paid during synchronized announcements only."""

    AHEAD_HISTORY = 15  # callbacks whose DAC distance is smoothed (a median)

    def __init__(self, sd: Any, settings: AudioSettings, rate: int) -> None:
        self._sd = sd
        self._settings = settings
        self._rate = rate
        self._fifo = _Fifo()
        self._ahead: collections.deque[float] = collections.deque(maxlen=self.AHEAD_HISTORY)
        self._latency = 0.0

    def _callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        # How far ahead of now this buffer reaches the DAC, on PortAudio's clock, put on the wall clock.
        # The median of the last callbacks': through ALSA's pulse plugin one in twenty or so reports a
        # few milliseconds less (measured: 2 ms instead of 8.7), which would place a start that early.
        reported = time_info.outputBufferDacTime - time_info.currentTime if time_info.currentTime else self._latency
        self._ahead.append(reported)
        self._fifo.read_into(outdata[:, 0], time.time() + statistics.median(self._ahead))

    def _open(self) -> Any:
        try:
            stream = self._sd.OutputStream(
                samplerate=self._rate,
                channels=1,
                dtype="float32",
                device=self._settings.device,
                latency="low",  # a stop is silent within the fade, as for any request
                callback=self._callback,
            )
            stream.start()
        except (self._sd.PortAudioError, ValueError) as exc:
            device = self._settings.device if self._settings.device is not None else "(default)"
            raise AudioDeviceError(f"cannot open the output device {device}: {exc}") from exc
        self._latency = stream.latency
        return stream

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        start = playback.start
        assert start is not None
        loop = asyncio.get_running_loop()
        fifo = self._fifo
        drained: asyncio.Future[None] = loop.create_future()
        announcer = _Announcer(playback, loop)
        fifo.begin(lambda: _resolve_threadsafe(loop, drained))
        fifo.hold_until(start.at, self._rate, announcer.placed_threadsafe)
        stream = await asyncio.to_thread(self._open)
        stopping = asyncio.ensure_future(playback.stop.wait())
        resampler: Resampler | None = None
        limit = int(self._settings.max_buffer_seconds * self._rate)
        try:
            while (chunk := await _next_chunk(chunks, stopping)) is not None:
                if not chunk.samples.size:
                    continue
                if resampler is None or chunk.sample_rate != resampler.source_rate:
                    resampler = Resampler(chunk.sample_rate, self._rate)
                fifo.write(_to_float(scaled(resampler(chunk.samples), playback.gain)))
                if chunk.segment >= 0:
                    announcer.speech()
                if fifo.buffered > limit:
                    await self._wait_for(loop, stream, limit // 2, stopping)
            if resampler is not None:
                fifo.write(_to_float(scaled(resampler.flush(), playback.gain)))
            fifo.end()
            await self._wait_playing(drained, stream, fifo.buffered / self._rate, stopping)
            await asyncio.sleep(stream.latency)  # the last samples pass PortAudio's own latency too
            return Played(fifo.played / self._rate)
        except _Stopped:
            faded: asyncio.Future[None] = loop.create_future()
            fifo.fade_out(int(self._settings.fade_ms / 1000 * self._rate), lambda: _resolve_threadsafe(loop, faded))
            never: asyncio.Future[None] = loop.create_future()
            try:
                await self._wait_playing(faded, stream, self._settings.fade_ms / 1000, never)
            finally:
                never.cancel()
            await asyncio.sleep(stream.latency)
            return Played(fifo.played / self._rate, interrupted=True)
        except BaseException:
            fifo.abandon()
            raise
        finally:
            stopping.cancel()
            await asyncio.to_thread(stream.close)

    async def _wait_for(
        self, loop: asyncio.AbstractEventLoop, stream: Any, below: int, stopping: asyncio.Future[Any]
    ) -> None:
        room: asyncio.Future[None] = loop.create_future()
        self._fifo.room_below = below
        self._fifo.on_room = lambda: _resolve_threadsafe(loop, room)
        await self._wait_playing(room, stream, self._settings.max_buffer_seconds, stopping)

    async def _wait_playing(
        self, future: asyncio.Future[None], stream: Any, expected: float, stopping: asyncio.Future[Any]
    ) -> None:
        """Wait for the callback to signal; _Stopped on stop; a stream that stopped calling back is a failure.
        Audio held for the instant is expected that much later."""
        held = self._fifo.holding()
        deadline = time.monotonic() + expected + 2.0 + stream.latency + (max(0.0, held - time.time()) if held else 0.0)
        while not future.done():
            if stopping.done():
                raise _Stopped
            timeout = deadline - time.monotonic()
            if timeout <= 0 or not stream.active:
                raise AudioDeviceError("the output device stopped playing")
            await asyncio.wait({future, stopping}, timeout=min(timeout, 1.0), return_when=asyncio.FIRST_COMPLETED)


class _Announcer:
    """Calls the playback's on_first_audio once the first speech has been handed over and the first
    sample has been placed on the device's clock (its lateness known)."""

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


def _to_float(samples: Pcm) -> Samples:
    return (samples.astype(np.float32) / 32768.0).astype(np.float32)


def _resolve_threadsafe(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
    """Called on the audio thread: wake the event loop."""
    loop.call_soon_threadsafe(_resolve, future)


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

    Opening (and, when that fails, restarting PortAudio, which lists every ALSA device) runs in a worker
    thread, never on the event loop, and PortAudio is restarted only when something changed (see _open_stream).
    """

    def __init__(self, settings: AudioSettings) -> None:
        import sounddevice

        self._sd: Any = sounddevice
        self._settings = settings
        self._writer: _Writer | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._rate = settings.sample_rate or self._device_rate()
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

    def _open_stream(self) -> Any:
        """A started output stream (blocking: runs in a worker thread, or in `check`)."""
        try:
            return self._start_stream()
        except AudioDeviceError as exc:
            # PortAudio lists devices once, when it starts: one plugged in (or a sound server started)
            # since then is only seen after a restart of PortAudio. Listing every ALSA device is slow,
            # so it is done when the devices or the sound server's socket changed, and else at most once
            # per REINIT_INTERVAL: not for every request while a speaker stays unplugged.
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
        stream = self._open_stream()
        description = f"{self._settings.device or 'default device'} opens at {self._rate} Hz"
        latency = stream.latency
        stream.close()
        return f"{description}, buffer {latency * 1000:.0f} ms"

    def _start_stream(self) -> Any:
        try:
            stream = self._sd.OutputStream(
                samplerate=self._rate,
                channels=1,
                dtype="int16",
                device=self._settings.device,
                latency=self._settings.latency,
            )
            stream.start()
        except (self._sd.PortAudioError, ValueError) as exc:
            device = self._settings.device if self._settings.device is not None else "(default)"
            raise AudioDeviceError(f"cannot open the output device {device}: {exc}") from exc
        LOG.debug("output stream open: %d Hz, buffer %.1f ms", self._rate, stream.latency * 1000)
        return stream

    async def _open(self) -> _Writer:
        if self._writer is not None and self._writer.alive:
            return self._writer
        old, self._writer = self._writer, None
        if old is not None:
            old.close()

        def start() -> Any:
            if old is not None:
                old.join()  # its stream is closed before PortAudio may be restarted
            return self._open_stream()

        stream = await asyncio.to_thread(start)
        fade = int(self._settings.fade_ms / 1000 * self._rate)
        self._writer = _Writer(self._start_stream, stream, self._rate, fade, asyncio.get_running_loop())
        return self._writer

    def _close_stream(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        loop = asyncio.get_running_loop()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if playback.start is not None:  # a synchronized start, placed on the device's clock
            writer, self._writer = self._writer, None
            if writer is not None:  # its stream is closed first (a plain ALSA device takes one at a time)
                writer.close()
                await asyncio.to_thread(writer.join)
            return await _HeldPlayback(self._sd, self._settings, self._rate).play(chunks, playback)
        state = _Feeding()
        feeding = asyncio.ensure_future(self._feed(chunks, playback, state))
        stopping = asyncio.ensure_future(playback.stop.wait())
        try:
            await asyncio.wait({feeding, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if feeding.done():
                return Played(feeding.result() / self._rate)
            feeding.cancel()  # stopped: the engine's pending read is cancelled with it
            await asyncio.gather(feeding, return_exceptions=True)
            if state.writer is None:
                return Played(0.0, interrupted=True)
            frames = await self._wait(state.writer.stop(), self._settings.fade_ms / 1000)
            await asyncio.sleep(self._settings.fade_ms / 1000)  # the fade is written, now let it be heard
            return Played(frames / self._rate, interrupted=True)
        except BaseException:
            feeding.cancel()
            self._close_stream()
            raise
        finally:
            stopping.cancel()
            self._idle_timer = loop.call_later(self._settings.idle_close, self._close_stream)

    async def _feed(self, chunks: AsyncIterator[AudioChunk], playback: Playback, state: _Feeding) -> int:
        """Hand the chunks to the writer as they arrive; the frames played once all have been heard.

        The stream is opened (or kept) before the first chunk is asked for: a stream that is not running
        starts only after a period of silence, which then passes while the engine works."""
        writer = state.writer = await self._open()
        writer.begin()
        announced = False
        resampler: Resampler | None = None
        limit = int(self._settings.max_buffer_seconds * self._rate)
        async for chunk in chunks:
            if not chunk.samples.size:
                continue
            if resampler is None or chunk.sample_rate != resampler.source_rate:
                if resampler is not None:
                    writer.put(scaled(resampler.flush(), playback.gain))
                resampler = Resampler(chunk.sample_rate, self._rate)
            writer.put(scaled(resampler(chunk.samples), playback.gain))
            if chunk.segment >= 0 and not announced:
                announced = True
                playback.on_first_audio()
            if writer.pending_frames > limit:
                await self._wait(writer.wait_room(limit // 2), self._settings.max_buffer_seconds)
        if resampler is not None:
            writer.put(scaled(resampler.flush(), playback.gain))
        played: int = await self._wait(writer.finish(), writer.delay() + writer.latency)
        return played

    async def _wait(self, future: asyncio.Future[Any], expected: float) -> Any:
        """The writer's answer; a device that fails, or stops playing for 2 s, is an AudioDeviceError."""
        try:
            await asyncio.wait_for(asyncio.shield(future), expected + 2.0)
        except TimeoutError:
            self._close_stream()
            raise AudioDeviceError("the output device stopped playing") from None
        except Exception as exc:
            self._close_stream()
            raise AudioDeviceError(f"the output device stopped playing: {exc}") from exc
        finally:
            future.cancel()
        return future.result()

    async def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            await asyncio.to_thread(writer.join)


def scaled(samples: Pcm, gain: float) -> Pcm:
    if gain == 1.0:
        return samples
    return (samples * gain).astype(np.int16)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_value(future: asyncio.Future[int], value: int) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _write_wav(writer: wave.Wave_write, samples: Pcm) -> int:
    writer.writeframes(samples.astype("<i2").tobytes())
    return samples.size


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
            while (chunk := await _next_chunk(chunks, stopping)) is not None:
                if writer is None:
                    writer = wave.open(str(path), "wb")  # noqa: SIM115 - opened on the first chunk, closed below
                    writer.setnchannels(1)
                    writer.setsampwidth(2)
                    writer.setframerate(chunk.sample_rate)
                if chunk.segment >= 0 and not announced:
                    announced = True
                    playback.on_first_audio()
                if resampler is None or chunk.sample_rate != resampler.source_rate:
                    if resampler is not None:
                        frames += _write_wav(writer, scaled(resampler.flush(), playback.gain))
                    resampler = Resampler(chunk.sample_rate, writer.getframerate())
                frames += _write_wav(writer, scaled(resampler(chunk.samples), playback.gain))
            if writer is not None and resampler is not None:
                frames += _write_wav(writer, scaled(resampler.flush(), playback.gain))
        except _Stopped:
            interrupted = True
        except OSError as exc:
            raise AudioDeviceError(f"cannot write {path}: {exc}") from exc
        finally:
            stopping.cancel()
            if writer is not None:
                writer.close()
        rate = writer.getframerate() if writer else self._rate
        LOG.info("wrote %s (%.2f s)", path, frames / rate)
        return Played(frames / rate, interrupted)

    async def close(self) -> None:
        """Nothing is held open between utterances."""
