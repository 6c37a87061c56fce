"""Playback through the sound server's own client library: libpulse's simple API (PulseAudio, and
PipeWire's pulse server), called through ctypes.

Why not PortAudio here: through ALSA's pulse plugin, a PortAudio stream that starts at once needs a
buffer of a few milliseconds, and keeping it full wakes two threads about 2,500 times a second
(docs/performance.md). Here the server holds the buffer: a writer thread keeps up to `audio.buffer`
seconds queued and tops it up half a buffer at a time, so it wakes about five times a second, and a stream
that ran dry starts again as soon as `audio.prebuffer` seconds are written, so speech still starts at
once.

How much fits is the server's own flow control (`room`: what libpulse may write without waiting, which
grows as the server consumes), never the delay: a stream that ran dry reports the sink's own latency
from then on, frozen, and a sink whose latency is larger than the top-up point (a null sink, Bluetooth,
a timer-scheduled ALSA sink: 0.2 s and more) would never be written to again. The delay (how long until
a sample written now is heard) places a synchronized start, tells when the last sample was heard, and
finds what is being heard when a stop flushes the buffer and fades out from there. A server that stops
taking audio (nothing of ours consumed for STALL seconds) fails the utterance instead of holding it.

All calls on a stream are made from its writer thread. The event loop hands audio over through a
lock-protected deque and is woken through call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mqtt_speaker.futures import settle
from mqtt_speaker.playback.output import (
    DEFAULT_RATE,
    Announcer,
    AudioDeviceError,
    Playback,
    Played,
    Sink,
    Stopped,
    play_utterance,
)
from mqtt_speaker.playback.portaudio import SoundDevicePlayer
from mqtt_speaker.settings import AudioSettings
from mqtt_speaker.speech.audio import AudioChunk, Pcm

LOG = logging.getLogger(__name__)

_PA_STREAM_PLAYBACK = 1
_PA_SAMPLE_S16LE = 3
_PA_DEFAULT = 0xFFFFFFFF  # (uint32_t) -1: the server chooses
FLUSH_LEAD = 0.003  # seconds the flush takes to reach the server: the fade starts that much later (without a report)
QUOTA_MARGIN = 0.02  # seconds queued beyond the longest pause a CPU quota can impose
PLACE_MARGIN = 0.05  # seconds: a synchronized start is placed in two steps, the second this far ahead
TOP_UP = 0.5  # the server's buffer is filled up again once it holds less than this share of it
STALL = 3.0  # seconds without the server consuming any of our queued audio: the sound server stopped
LOOK_AGAIN = 1.0  # seconds: the writer looks at the server at least this often while audio is queued there
_PA_STREAM_READY = 2
_PA_OPERATION_RUNNING = 0
TIMING_WAIT = 0.1  # seconds: the most a fresh timing report is waited for


def cpu_quota_pause(cgroup_root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> float:
    """How long (seconds) a CPU quota on this process's cgroup, or a parent's, can pause it: the quota
    period minus the quota, for the strictest one (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`); 0 without.
    A systemd unit's CPUQuota=, or a container's CPU limit, sets one."""
    pause = 0.0
    files: tuple[str, ...]
    try:
        lines = own.read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, files = cgroup_root, ("cpu.max",)
        elif "cpu" in controllers.split(","):
            base, files = cgroup_root / controllers, ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            if not base.exists():
                base = cgroup_root / "cpu"
        else:
            continue
        group = base / path.lstrip("/")
        while True:
            pause = max(pause, _pause_of(group, files))
            if group == base or base not in group.parents:
                break
            group = group.parent
    return pause


def _pause_of(group: Path, files: tuple[str, ...]) -> float:
    try:
        if len(files) == 1:
            quota_text, period_text = (group / files[0]).read_text().split()
        else:
            quota_text, period_text = ((group / name).read_text().strip() for name in files)
        quota, period = int(quota_text), int(period_text)
    except (OSError, ValueError):  # no such file, or "max": no quota
        return 0.0
    return max(0, period - quota) / 1e6 if quota > 0 else 0.0


class _SampleSpec(ctypes.Structure):
    _fields_ = [("format", ctypes.c_int), ("rate", ctypes.c_uint32), ("channels", ctypes.c_uint8)]


class _BufferAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("maxlength", "tlength", "prebuf", "minreq", "fragsize")]


class _TimingInfo(ctypes.Structure):
    """pa_timing_info."""

    _fields_ = [
        ("timestamp_sec", ctypes.c_long),  # struct timeval: when the report was current (wall clock)
        ("timestamp_usec", ctypes.c_long),
        ("synchronized_clocks", ctypes.c_int),
        ("sink_usec", ctypes.c_uint64),
        ("source_usec", ctypes.c_uint64),
        ("transport_usec", ctypes.c_uint64),
        ("playing", ctypes.c_int),
        ("write_index_corrupt", ctypes.c_int),
        ("write_index", ctypes.c_int64),
        ("read_index_corrupt", ctypes.c_int),
        ("read_index", ctypes.c_int64),
        ("configured_sink_usec", ctypes.c_uint64),
        ("configured_source_usec", ctypes.c_uint64),
        ("since_underrun", ctypes.c_int64),
    ]


@functools.cache
def _libraries() -> tuple[Any, Any] | None:
    """libpulse-simple and libpulse (for pa_strerror), or None when they are not installed."""
    simple_name, pulse_name = ctypes.util.find_library("pulse-simple"), ctypes.util.find_library("pulse")
    if simple_name is None or pulse_name is None:
        return None
    try:
        simple, pulse = ctypes.CDLL(simple_name), ctypes.CDLL(pulse_name)
    except OSError:
        return None
    error = ctypes.POINTER(ctypes.c_int)
    simple.pa_simple_new.restype = ctypes.c_void_p
    simple.pa_simple_new.argtypes = [
        ctypes.c_char_p,  # server (NULL: the default, PULSE_SERVER included)
        ctypes.c_char_p,  # application name
        ctypes.c_int,  # direction
        ctypes.c_char_p,  # sink (NULL: the default, PULSE_SINK included)
        ctypes.c_char_p,  # stream name
        ctypes.POINTER(_SampleSpec),
        ctypes.c_void_p,  # channel map (NULL: the default for mono)
        ctypes.POINTER(_BufferAttr),
        error,
    ]
    simple.pa_simple_write.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, error]
    simple.pa_simple_flush.argtypes = [ctypes.c_void_p, error]
    simple.pa_simple_get_latency.restype = ctypes.c_uint64
    simple.pa_simple_get_latency.argtypes = [ctypes.c_void_p, error]
    simple.pa_simple_free.argtypes = [ctypes.c_void_p]
    pulse.pa_strerror.restype = ctypes.c_char_p
    pulse.pa_strerror.argtypes = [ctypes.c_int]
    for name in ("pa_threaded_mainloop_lock", "pa_threaded_mainloop_unlock"):
        getattr(pulse, name).argtypes = [ctypes.c_void_p]
    pulse.pa_stream_writable_size.restype = ctypes.c_size_t
    pulse.pa_stream_writable_size.argtypes = [ctypes.c_void_p]
    pulse.pa_stream_get_buffer_attr.restype = ctypes.POINTER(_BufferAttr)
    pulse.pa_stream_get_buffer_attr.argtypes = [ctypes.c_void_p]
    pulse.pa_stream_get_state.argtypes = [ctypes.c_void_p]
    pulse.pa_stream_get_context.restype = ctypes.c_void_p
    pulse.pa_stream_get_context.argtypes = [ctypes.c_void_p]
    pulse.pa_stream_update_timing_info.restype = ctypes.c_void_p
    pulse.pa_stream_update_timing_info.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    pulse.pa_operation_unref.argtypes = [ctypes.c_void_p]
    pulse.pa_operation_get_state.argtypes = [ctypes.c_void_p]
    pulse.pa_stream_get_timing_info.restype = ctypes.POINTER(_TimingInfo)
    pulse.pa_stream_get_timing_info.argtypes = [ctypes.c_void_p]
    return simple, pulse


def available() -> bool:
    """Whether libpulse is installed (not whether a server answers)."""
    return _libraries() is not None


class PulseStream:
    """One playback stream on the sound server (libpulse simple API). Not thread-safe: one thread only."""

    def __init__(self, *, rate: int, buffer: float, prebuffer: float, sink: str | None, name: str) -> None:
        libraries = _libraries()
        if libraries is None:
            raise AudioDeviceError("libpulse is not installed (Debian: libpulse0)")
        self._lib, self._pulse = libraries
        self.rate = rate
        spec = _SampleSpec(_PA_SAMPLE_S16LE, rate, 1)
        # `minreq` is left to the server (20 ms): a quarter of the buffer woke libpulse's thread five times
        # less often, but under a CPU quota speech broke up (docs/performance.md).
        attr = _BufferAttr(_PA_DEFAULT, int(buffer * rate) * 2, int(prebuffer * rate) * 2, _PA_DEFAULT, _PA_DEFAULT)
        error = ctypes.c_int(0)
        self._handle = self._lib.pa_simple_new(
            None,
            b"mqtt-speaker",
            _PA_STREAM_PLAYBACK,
            sink.encode() if sink else None,
            name.encode(),
            ctypes.byref(spec),
            None,
            ctypes.byref(attr),
            ctypes.byref(error),
        )
        if not self._handle:
            raise AudioDeviceError(f"cannot open a stream on the sound server: {self._error(error)}")
        # libpulse-simple's pa_simple starts with its threaded main loop, its context and its stream (the
        # same layout since 2006): the stream is asked how much fits, under the main loop's lock.
        self._mainloop, context, self._stream = ctypes.cast(self._handle, ctypes.POINTER(ctypes.c_void_p * 3))[0]
        with self._locked():
            usable = (
                self._pulse.pa_stream_get_context(self._stream) == context
                and self._pulse.pa_stream_get_state(self._stream) == _PA_STREAM_READY
            )
        if not usable:
            self.close()
            raise AudioDeviceError("this libpulse-simple is not laid out as expected: its stream cannot be asked")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._pulse.pa_threaded_mainloop_lock(self._mainloop)
        try:
            yield
        finally:
            self._pulse.pa_threaded_mainloop_unlock(self._mainloop)

    def room(self) -> tuple[int, int]:
        """(frames that can be written now without waiting, frames the server's buffer holds for us): the
        server's own flow control, which grows as it consumes what we wrote (and is whole once it ran dry)."""
        with self._locked():
            writable = self._pulse.pa_stream_writable_size(self._stream)
            attr = self._pulse.pa_stream_get_buffer_attr(self._stream)
            size = attr[0].tlength if attr else 0
        if writable == ctypes.c_size_t(-1).value or not size:
            raise AudioDeviceError("the sound server does not answer")
        return writable // 2, size // 2

    def _error(self, error: ctypes.c_int) -> str:
        return str(self._pulse.pa_strerror(error.value).decode(errors="replace"))

    def write(self, samples: Pcm) -> None:
        """Queue samples (int16); returns at once while they fit in the server's buffer."""
        error = ctypes.c_int(0)
        data = np.ascontiguousarray(samples, dtype="<i2")
        if self._lib.pa_simple_write(self._handle, data.ctypes.data, data.nbytes, ctypes.byref(error)) < 0:
            raise AudioDeviceError(f"the sound server stopped taking audio: {self._error(error)}")

    def delay(self, *, fresh: bool = False) -> float:
        """Seconds until a sample written now is heard (what is queued plus the sink's own delay)."""
        return max(0.0, self.heard_at(fresh=fresh) - time.time())

    def heard_at(self, *, fresh: bool = False) -> float:
        """When a sample written now is heard (wall clock), from the server's last timing report (`fresh`:
        a report asked for now). An instant, not a delay: the time this thread loses before it acts on it
        (to another thread, to a busy machine) does not move it.

        Not pa_simple_get_latency (only until the server has sent a first report): libpulse keeps the
        stream's clock from running backwards, so on a stream that has just started after a pause its
        latency stands still for as long as the pause was (measured: 0.1 s after a 0.1 s pause), which
        misplaced a synchronized start by that much."""
        if fresh:
            self._update_timing()
        info = self._timing()
        if info is None:  # none yet (a new stream), or one a flush made out of date: ask for one
            self._update_timing()
            if (info := self._timing()) is None:
                return time.time() + self._simple_latency()
        queued = (info.write_index - info.read_index) / (2 * self.rate)
        # When the report was current, a sample read then was heard sink_usec later (and the report took
        # transport_usec to reach us); a playing stream has moved on with the clock since.
        now = time.time()
        current = info.timestamp_sec + info.timestamp_usec / 1e6 if info.playing else now
        transport = 0.0 if info.synchronized_clocks else info.transport_usec / 1e6
        return max(now, float(current + queued + info.sink_usec / 1e6 - transport))

    def _timing(self) -> _TimingInfo | None:
        """The server's last timing report, if it can be used."""
        with self._locked():
            pointer = self._pulse.pa_stream_get_timing_info(self._stream)
            info = _TimingInfo.from_buffer_copy(pointer[0]) if pointer else None
        return None if info is None or info.write_index_corrupt or info.read_index_corrupt else info

    def _simple_latency(self) -> float:
        error = ctypes.c_int(0)
        microseconds = self._lib.pa_simple_get_latency(self._handle, ctypes.byref(error))
        if microseconds == 2**64 - 1:  # (pa_usec_t) -1
            raise AudioDeviceError(f"the sound server does not answer: {self._error(error)}")
        return float(microseconds) / 1e6

    def _update_timing(self) -> None:
        """Ask the server for its timing and wait for the answer (a millisecond or so; at most TIMING_WAIT)."""
        with self._locked():
            operation = self._pulse.pa_stream_update_timing_info(self._stream, None, None)
        if not operation:
            raise AudioDeviceError("the sound server does not answer (timing)")
        try:
            deadline = time.monotonic() + TIMING_WAIT
            while time.monotonic() < deadline:
                with self._locked():
                    if self._pulse.pa_operation_get_state(operation) != _PA_OPERATION_RUNNING:
                        return
                time.sleep(0.0005)
        finally:
            with self._locked():
                self._pulse.pa_operation_unref(operation)

    def read_position(self) -> int | None:
        """Frames of the stream the server has read (mixed into the sink) so far: where it reads on, from a
        report asked for now; None when it cannot say."""
        self._update_timing()
        info = self._timing()
        return None if info is None else int(info.read_index) // 2

    def flush(self) -> None:
        """Drop everything queued: silence at once."""
        error = ctypes.c_int(0)
        if self._lib.pa_simple_flush(self._handle, ctypes.byref(error)) < 0:
            raise AudioDeviceError(f"the sound server does not answer: {self._error(error)}")

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle:
            self._lib.pa_simple_free(handle)


class _Utterance:
    """What the writer knows of the utterance being played; shared state, guarded by the writer's lock."""

    def __init__(self, start: float | None, on_placed: Callable[[float], None]) -> None:
        self.start = start  # a synchronized start's instant (wall clock), until placed
        self.on_placed = on_placed
        self.speech_at: int | None = None  # stream position (frames written) of its first sample
        self.written = 0  # frames of it written
        self.ended = False  # no more audio will come
        self.fade: int | None = None  # frames to fade out over: a stop was asked for
        self.done: Callable[[float], None] | None = None  # called once heard (or faded), with seconds heard
        self.end_at: float | None = None  # monotonic: when its last sample is heard, once everything is written


class _Writer:
    """A thread that owns one PulseStream: keeps up to `buffer` seconds queued, topping it up half a
    buffer at a time; ends or fades utterances; closes the stream when told to."""

    def __init__(self, settings: AudioSettings, rate: int, loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self._rate = rate
        self._loop = loop
        self._cond = threading.Condition()
        self._queue: collections.deque[Pcm] = collections.deque()
        self.queued = 0  # frames waiting here (not yet at the server)
        self._utterance: _Utterance | None = None
        self._closing = False
        self._waiting_for_audio = False
        self._on_room: tuple[int, Callable[[], None]] | None = None
        self.failure: AudioDeviceError | None = None
        self._history: collections.deque[tuple[int, Pcm]] = collections.deque()  # (position, block) written
        self._position = 0  # frames written to the stream
        self._consumed = 0  # frames the server had consumed of them when last looked
        self._consumed_at = 0.0  # monotonic: when that last changed (the watchdog)
        self.opened: asyncio.Future[None] = loop.create_future()
        self._prebuffer = settings.prebuffer  # set again by the writer thread before it opens the stream
        self._prebuffer_frames = int(self._prebuffer * rate)
        self._thread = threading.Thread(target=self._run, name="mqtt-speaker-writer", daemon=True)
        self._thread.start()

    # --- event loop side -------------------------------------------------------------------------

    def begin(self, start: float | None, on_placed: Callable[[float], None]) -> None:
        with self._cond:
            self._queue.clear()
            self.queued = 0
            self._utterance = _Utterance(start, on_placed)

    def put(self, samples: Pcm) -> None:
        if not samples.size:
            return
        with self._cond:
            self._queue.append(samples)
            self.queued += samples.size
            if self._waiting_for_audio:
                self._cond.notify()

    def when_room(self, below: int, callback: Callable[[], None]) -> None:
        with self._cond:
            if self.queued < below:
                callback()
            else:
                self._on_room = (below, callback)

    def end(self, done: Callable[[float], None]) -> None:
        self._tell(lambda utterance: setattr(utterance, "ended", True), done)

    def fade(self, frames: int, done: Callable[[float], None]) -> None:
        self._tell(lambda utterance: setattr(utterance, "fade", frames), done)

    def _tell(self, change: Callable[[_Utterance], None], done: Callable[[float], None]) -> None:
        with self._cond:
            utterance = self._utterance
            if utterance is None:
                done(0.0 if self.failure is None else -1.0)
                return
            change(utterance)
            utterance.done = done
            self._cond.notify()

    def abandon(self) -> None:
        """Drop the utterance (an exception in the player): flush what is queued."""
        self.fade(0, lambda _seconds: None)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    # --- writer thread ---------------------------------------------------------------------------

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self._loop.call_soon_threadsafe(callback, *args)

    def _run(self) -> None:
        settings = self._settings
        # Speech starts once this much is queued. Held to a CPU quota, the process can be paused for
        # most of the quota's period (97 ms of every 100 at 3 %), the writer with it: what is queued
        # must outlast that, or the first words break up. (Read here: files, not on the event loop.)
        pause = cpu_quota_pause()
        self._prebuffer = min(max(settings.prebuffer, pause + QUOTA_MARGIN if pause else 0.0), settings.buffer / 2)
        self._prebuffer_frames = int(self._prebuffer * self._rate)
        if pause:
            LOG.info("a CPU quota can pause us for %.0f ms: speech starts once %.0f ms are queued", pause * 1000,
                     self._prebuffer * 1000)  # fmt: skip
        try:
            stream = PulseStream(
                rate=self._rate,
                buffer=settings.buffer,
                prebuffer=self._prebuffer,
                sink=settings.sink,
                name=settings.role,
            )
        except AudioDeviceError as exc:
            self.failure = exc
            self._call(settle, self.opened, None, exc)
            return
        self._call(settle, self.opened)
        try:
            while self._step(stream):
                pass
        except Exception as exc:
            if isinstance(exc, AudioDeviceError):
                LOG.warning("%s", exc)
            else:
                LOG.exception("the writer failed")
            with self._cond:
                utterance, self._utterance = self._utterance, None
            start = utterance.speech_at if utterance is not None else None
            played = max(0, self._consumed - start) / self._rate if start is not None else 0.0
            self.failure = AudioDeviceError(
                str(exc) if isinstance(exc, AudioDeviceError) else f"the writer failed: {exc!r}", played
            )
            if utterance is not None and utterance.done is not None:
                self._call(utterance.done, -1.0)
        finally:
            stream.close()

    def _step(self, stream: PulseStream) -> bool:
        """One turn: write, place, end or fade; else wait. False once closed."""
        room, size = stream.room()
        self._watch(size - room)
        top_up = int(size * (1 - TOP_UP))  # written to once this much fits: half a buffer at a time
        wait: float | None = None  # seconds to wait for something to do (None: until woken)
        with self._cond:
            if self._closing:
                return False
            utterance = self._utterance
            blocks: list[Pcm] = []
            if utterance is not None and utterance.fade is not None:
                self._queue.clear()
                self.queued = 0
            elif utterance is None or (not self._queue and not utterance.ended):
                utterance = None  # nothing to do until audio comes, or a request
            elif utterance.start is None and self._queue:
                if room >= min(top_up, self.queued):
                    blocks = self._take(room)
                else:
                    wait = (min(top_up, self.queued) - room) / self._rate
                    utterance = None
            if utterance is None:
                if size - room >= self._prebuffer_frames:  # audio of ours at the server: keep an eye on it
                    wait = min(wait or LOOK_AGAIN, LOOK_AGAIN)
                self._waiting_for_audio = not self._queue
                self._cond.wait(None if wait is None else max(0.005, wait))
                self._waiting_for_audio = False
                return True
        if utterance.fade is not None:
            self._fade(stream, utterance, stream.delay())
        elif blocks:
            self._write(stream, utterance, blocks)
        elif utterance.start is not None:
            self._wait(self._place(stream, utterance, room, size, top_up))
        else:
            self._finish(stream, utterance)
        return True

    def _watch(self, level: int) -> None:
        """The watchdog: audio of ours queued at the server (at least the prebuffer, which the server waits
        for before it plays) of which nothing was consumed for STALL seconds fails the stream."""
        consumed = self._position - level
        now = time.monotonic()
        if consumed != self._consumed or level < self._prebuffer_frames:
            self._consumed, self._consumed_at = consumed, now
        elif now - self._consumed_at > STALL:
            raise AudioDeviceError(f"the sound server stopped taking audio: none was played for {STALL:.0f} s")

    def _wait(self, seconds: float | None) -> None:
        """Wait up to `seconds` (None: not at all) or until the loop asks for something (a stop)."""
        if seconds is not None:
            with self._cond:
                if self._utterance is not None and self._utterance.fade is None and not self._closing:
                    self._cond.wait(max(0.005, min(seconds, LOOK_AGAIN)))

    def _take(self, frames: int) -> list[Pcm]:
        """Up to `frames` of what waits (lock held); tells the loop when there is room again."""
        blocks: list[Pcm] = []
        while self._queue and frames > 0:
            block = self._queue.popleft()
            if block.size > frames:
                self._queue.appendleft(block[frames:])
                block = block[:frames]
            blocks.append(block)
            frames -= block.size
            self.queued -= block.size
        if self._on_room is not None and self.queued < self._on_room[0]:
            self._call(self._on_room[1])
            self._on_room = None
        return blocks

    def _write(self, stream: PulseStream, utterance: _Utterance, blocks: list[Pcm]) -> None:
        """Write (outside the lock: the utterance's counters are only touched by this thread)."""
        samples = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        if utterance.speech_at is None:
            utterance.speech_at = self._position
        self._send(stream, samples)
        utterance.written += samples.size

    def _send(self, stream: PulseStream, samples: Pcm) -> None:
        stream.write(samples)
        self._history.append((self._position, samples))
        self._position += samples.size
        keep = self._position - int((self._settings.buffer + 1.0) * self._rate)
        while self._history and self._history[0][0] + self._history[0][1].size < keep:
            self._history.popleft()

    def _silence(self, stream: PulseStream, frames: int) -> None:
        if frames > 0:
            self._send(stream, np.zeros(frames, dtype=np.int16))

    def _place(self, stream: PulseStream, utterance: _Utterance, room: int, size: int, top_up: int) -> float | None:
        """A synchronized start: silence until the first sample is heard at the instant. Nothing is written
        until the instant is a buffer away; then the silence, as the server takes it (a stop is heard
        between two writes, never after the whole wait); the last part with the server's delay measured
        on the running stream. The seconds to wait before the next step, or None."""
        assert utterance.start is not None
        ahead = utterance.start - stream.heard_at()
        buffer = size / self._rate
        if ahead > buffer + PLACE_MARGIN * 2:
            return ahead - buffer - PLACE_MARGIN * 2
        if ahead > PLACE_MARGIN * 2:
            frames = int((ahead - PLACE_MARGIN) * self._rate)
            if room < min(top_up, frames):
                return (min(top_up, frames) - room) / self._rate
            self._silence(stream, min(room, frames))
            return None
        ahead = utterance.start - stream.heard_at(fresh=True)  # the last step: to the sample
        frames = max(0, round(ahead * self._rate))
        if frames > room:
            return (frames - room) / self._rate
        self._silence(stream, frames)
        late, utterance.start = max(0.0, -ahead), None
        self._call(utterance.on_placed, late)
        return None

    def _finish(self, stream: PulseStream, utterance: _Utterance) -> None:
        """Everything is written: pad with the prebuffer's silence once (a stream that ran dry plays only once
        that much is queued), then wait until the last sample is heard: when the server's timing (a report
        asked for then) says, once. (Asked again later, a stream that ran dry reports the sink's delay,
        frozen: waiting for it to go down held the end, and a stop, by up to twice the sink's latency.)"""
        if utterance.speech_at is None:  # nothing was written
            self._done(utterance, 0)
            return
        if utterance.end_at is None:
            if self._position == utterance.speech_at + utterance.written:
                self._silence(stream, self._prebuffer_frames)
            tail = (self._position - utterance.speech_at - utterance.written) / self._rate
            utterance.end_at = time.monotonic() + stream.delay(fresh=True) - tail
        left = utterance.end_at - time.monotonic()
        if left > 0.002:
            with self._cond:
                if utterance.fade is None and not self._closing:
                    self._cond.wait(left)
            return
        self._done(utterance, utterance.written)

    def _fade(self, stream: PulseStream, utterance: _Utterance, delay: float) -> None:
        """Stop: flush the server's buffer and queue, in its place, `fade` frames of what would have been heard
        next, ramped down to silence; report the seconds heard.

        What the flush dropped begins where the server reads our stream next (its report, asked for after
        the flush): a sink that cannot take back what it holds (a pipe, a network tunnel, Bluetooth) still
        plays that, and the fade goes on from its end. (Faded from what was being heard, as before, such a
        sink played its last 0.2 s twice.) Without a report: from what was being heard."""
        frames = utterance.fade or 0
        heard = self._position - int(delay * self._rate)
        stream.flush()
        resume = stream.read_position()
        if resume is None or not heard - self._rate * 0.01 <= resume <= self._position:
            resume = min(heard + int(FLUSH_LEAD * self._rate), self._position)
        # Only its own audio is faded (what is queued before it, a synchronized start's silence, is not).
        speech_at = utterance.speech_at if utterance.speech_at is not None else self._position
        start = max(resume, speech_at)
        end_of_speech = speech_at + utterance.written
        tail = self._recent(start, min(frames, max(0, end_of_speech - start)))
        self._rewind(resume)  # the server writes on from there
        if tail.size:
            ramp = np.linspace(1.0, 0.0, tail.size, dtype=np.float32)
            self._send(stream, (tail * ramp).astype(np.int16))
        with self._cond:
            utterance.fade = None
            utterance.ended = True
            utterance.end_at = None
            utterance.start = None  # a start still waiting for its instant is never placed
        utterance.written = max(0, min(start, end_of_speech) - speech_at) + tail.size
        # What is queued now is the fade: the utterance "ends" where the fade does (nothing was: at once).
        utterance.speech_at = self._position - utterance.written if utterance.written else None

    def _rewind(self, position: int) -> None:
        """The server's write index went back to `position` (a flush): so does ours, and what we wrote past it
        is forgotten."""
        while self._history and self._history[-1][0] >= position:
            self._history.pop()
        if self._history and (over := self._history[-1][0] + self._history[-1][1].size - position) > 0:
            start, block = self._history.pop()
            self._history.append((start, block[: block.size - over]))
        self._position = position

    def _recent(self, start: int, frames: int) -> Pcm:
        """`frames` of what was written from stream position `start` on (empty if no longer kept)."""
        parts = [
            block[max(0, start - position) : start + frames - position]
            for position, block in self._history
            if position + block.size > start and position < start + frames
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)

    def _done(self, utterance: _Utterance, frames: int) -> None:
        with self._cond:
            if self._utterance is utterance:
                self._utterance = None
        if utterance.done is not None:
            self._call(utterance.done, frames / self._rate)


class PulsePlayer:
    """Plays utterances on the sound server; opens its stream on the first one, closes it after
    `idle_close` of silence. Without a server it hands the utterance to `fallback` (PortAudio)."""

    def __init__(self, settings: AudioSettings, fallback: Callable[[], SoundDevicePlayer] | None = None) -> None:
        self._settings = settings
        self._rate = settings.sample_rate or DEFAULT_RATE
        self._writer: _Writer | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._fallback_factory = fallback
        self._fallback: SoundDevicePlayer | None = None
        self._announcing: asyncio.TimerHandle | None = None  # a synchronized start's "started", at its instant
        self._elsewhere = False  # this utterance went to the fallback (no sound server answered)

    @property
    def sample_rate(self) -> int:
        return self._rate

    def probe(self) -> str:
        """Open a stream and close it again without playing anything (PortAudio's, without a server)."""
        try:
            stream = self._probe_stream()
        except AudioDeviceError:
            if self._fallback_factory is None:
                raise
            return f"no sound server answers; PortAudio: {self._fallback_factory().probe()}"
        try:
            delay = stream.delay()
        finally:
            stream.close()
        sink = self._settings.sink or "the default sink"
        return f"the sound server's {sink} opens at {self._rate} Hz (delay {delay * 1000:.0f} ms)"

    def _probe_stream(self) -> PulseStream:
        return PulseStream(
            rate=self._rate, buffer=self._settings.buffer, prebuffer=self._settings.prebuffer,
            sink=self._settings.sink, name="probe",
        )  # fmt: skip

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Writer:
        writer = self._writer
        if writer is None or not writer.alive:
            writer = self._writer = _Writer(self._settings, self._rate, loop)
        await writer.opened
        return writer

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        return await play_utterance(self, chunks, playback, self._settings.max_buffer_seconds)

    async def open_sink(self, playback: Playback, announcer: Announcer) -> Sink:
        """This utterance's sink on the sound server; without a server (and with PortAudio as the fallback),
        PortAudio's."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        loop = asyncio.get_running_loop()
        writer = self._writer
        try:
            if writer is None or not writer.alive:
                writer = self._writer = _Writer(self._settings, self._rate, loop)
            await writer.opened
        except AudioDeviceError:
            if self._fallback_factory is None:
                raise
            if self._fallback is None:
                LOG.info("no sound server answers; playing through PortAudio")
                self._fallback = self._fallback_factory()
            self._elsewhere = True
            return await self._fallback.open_sink(playback, announcer)
        start = playback.start.at if playback.start is not None else None
        writer.begin(start, functools.partial(self._placed, loop, start, announcer))
        return _WriterSink(writer, self._rate, self._settings.fade_ms)

    def turn_over(self) -> None:
        if self._announcing is not None:
            self._announcing.cancel()
            self._announcing = None
        if self._elsewhere and self._fallback is not None:
            self._elsewhere = False
            self._fallback.turn_over()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = asyncio.get_running_loop().call_later(self._settings.idle_close, self._close_writer)

    def _placed(self, loop: asyncio.AbstractEventLoop, start: float | None, announcer: Announcer, late: float) -> None:
        """A synchronized start was placed (on the loop): its first sample is heard at the instant, so that
        is when it starts; a stop before then cancels the announcement."""
        assert start is not None
        self._announcing = loop.call_later(max(0.0, start - time.time()), announcer.placed, late)

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._close_writer()
        if self._fallback is not None:
            await self._fallback.close()


class _WriterSink:
    """One utterance on the sound server: handed to the writer thread, heard as it says."""

    def __init__(self, writer: _Writer, rate: int, fade_ms: float) -> None:
        self._writer = writer
        self.rate = rate
        self._fade_ms = fade_ms
        self._loop = asyncio.get_running_loop()

    @property
    def queued(self) -> int:
        return self._writer.queued

    def put(self, samples: Pcm) -> None:
        self._writer.put(samples)
        if self._writer.failure is not None:
            raise self._writer.failure

    async def room(self, below: int, stopping: asyncio.Future[Any]) -> None:
        room: asyncio.Future[None] = self._loop.create_future()
        self._writer.when_room(below, functools.partial(settle, room))
        await self._until(room, stopping)

    async def finish(self, stopping: asyncio.Future[Any]) -> float:
        heard: asyncio.Future[float] = self._loop.create_future()
        self._writer.end(functools.partial(_heard, heard))
        return float(await self._until(heard, stopping))

    async def fade(self) -> float:
        faded: asyncio.Future[float] = self._loop.create_future()
        self._writer.fade(int(self._fade_ms / 1000 * self.rate), functools.partial(_heard, faded))
        return float(await self._until(faded, None))

    def abandon(self) -> None:
        self._writer.abandon()

    async def _until(self, future: asyncio.Future[Any], stopping: asyncio.Future[Any] | None) -> Any:
        """The future's result; Stopped when a stop comes first; the writer's failure if it failed."""
        writer = self._writer
        waits = {future} if stopping is None else {future, stopping}
        while not future.done():
            if stopping is not None and stopping.done():
                raise Stopped
            if not writer.alive:
                raise writer.failure or AudioDeviceError("the sound server stopped playing")
            await asyncio.wait(waits, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        if writer.failure is not None and future.exception() is not None:  # say why, not only that it stopped
            raise writer.failure
        return future.result()


def _heard(future: asyncio.Future[float], seconds: float) -> None:
    """The writer's answer: seconds heard, or (negative) that the sound server stopped playing."""
    error = AudioDeviceError("the sound server stopped playing") if seconds < 0 else None
    settle(future, seconds, error)
