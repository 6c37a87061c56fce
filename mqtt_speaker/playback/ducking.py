"""Ducking: while we speak, every other playback stream on our sink is lowered, and brought back after.

The sound server (PulseAudio, or PipeWire through pipewire-pulse) is driven with `pulsectl` (libpulse
through ctypes). Its calls block, so one worker thread owns the connection; the event loop only sets
what it wants (how many dB down) and is told through call_soon_threadsafe when that was reached.

- `hold(depth)` as a request (with its chime) begins: the other streams fade down over FADE_DOWN, while
  the speech is being synthesized. The returned Lowering says when the first sample may play: once the
  others are down, at once when nothing else is audible (nothing else plays, or what plays is silence:
  snapclient and MPD keep a stream open playing zeros), and never later than HOLD_MOST. Whether
  a stream plays anything but silence is read from its peaks (`_Meter`), measured while it is on our
  sink. A synchronized start (`at`) is not held: its instant holds it, and the others begin to go down
  AT_LEAD before the instant, not while it waits.
- `release()` after it ends: LINGER later (the next queued request begins within it and keeps them
  down), they fade up over FADE_UP to exactly the volume each had, unless someone changed a stream's
  volume meanwhile (it is then not what we set): that change stands and the stream is left alone.
- A stream that appears (or is moved onto our sink) while we hold is lowered at once (on the server's event).
- What was lowered is written to a small file before it is lowered (in the worker thread), and
  forgotten once restored: after a crash, a SIGKILL, a power cut or a restart of the sound server, what
  is still lower than it was is restored (see `_restore_leftovers`), also a stream that comes back later.
- The worker listens to the server also while idle, so a connection the server dropped (a restart) is
  noticed at once and made again, not at the next announcement.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import select
import threading
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from mqtt_speaker.files import write_atomically
from mqtt_speaker.futures import settle_threadsafe
from mqtt_speaker.speech.audio import AudioChunk

LOG = logging.getLogger(__name__)
# 0.12 s: the emulator's (and the fastest real service's) first audio comes about as late, so on a cache miss
# synthesis hides most of the fade; 12 dB over five or six of the server's mixing blocks is a glide, not a switch.
FADE_DOWN = 0.12  # seconds
HOLD_MOST = FADE_DOWN + 0.05  # seconds the first sample waits at most: the fade, and the worker starting it
FADE_UP = 0.4  # seconds: a little slower on the way back
LINGER = 0.1  # seconds the music stays down after the last word: the next queued request begins well within it
AT_LEAD = 0.25  # seconds before a synchronized start's fade begins, beyond the fade (the sink's own latency)
STEP = 0.01  # seconds between two volume steps of a fade (the server applies them per mixing block)
HELD_POLL = 0.5  # seconds: a held duck looks at least this often (the loop's wishes and server events wake it)
TOLERANCE = 0.002  # of full volume: a stream further than this from what we set was changed by someone else
SILENT = 0.001  # of full scale (-60 dB): a stream whose peaks stay under this plays silence
METER_RATE = 10  # peaks a second of a stream, each the loudest sample of its 0.1 s
METER_RECENT = 3  # the last peaks (0.3 s of what the sink took of it) that decide whether it plays silence
RETRY = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)  # seconds between attempts to reach a server that went away, then 5 s
LEFTOVER_WAIT = 300.0  # seconds a stream lowered before its server went away is looked for as it comes back


def tag_own_stream(role: str) -> None:
    """Give the daemon's own playback stream media.role=<role> through PULSE_PROP, which libpulse (here:
    ALSA's pulse plugin under PortAudio) reads for every stream it opens; a role set there already stays."""
    current = os.environ.get("PULSE_PROP", "")
    if "media.role" not in current:
        os.environ["PULSE_PROP"] = f"{current} media.role={role}".strip()


def factor(depth_db: float) -> float:
    """PulseAudio volumes are cubic: lowering the sound by `depth_db` scales the volume by this."""
    return float(10 ** (-depth_db / 60))


def describe_server() -> str:
    """One line on the sound server and what ducking does there; ConnectionError when there is none."""
    pulse = _connect("mqtt-speaker-check")
    try:
        info = pulse.server_info()
        sink = os.environ.get("PULSE_SINK") or info.default_sink_name
        return f"{info.server_name} {info.server_version}, sink {sink}"
    finally:
        pulse.close()


def _connect(name: str) -> Any:
    """A connected pulsectl.Pulse; ConnectionError saying why not."""
    try:
        import pulsectl
    except (ImportError, OSError) as exc:  # OSError: libpulse itself is missing
        raise ConnectionError(f"libpulse is not installed ({exc})") from exc
    pulse = pulsectl.Pulse(name, connect=False)
    try:  # no timeout: pulsectl then waits all of it even when connected; a missing server fails at once
        pulse.connect(autospawn=False)
    except pulsectl.PulseError as exc:
        pulse.close()
        where = os.environ.get("PULSE_SERVER") or f"{os.environ.get('XDG_RUNTIME_DIR', '(no XDG_RUNTIME_DIR)')}/pulse"
        raise ConnectionError(f"no PulseAudio or pipewire-pulse answers at {where}: {exc}") from exc
    return pulse


class _Lowered(BaseModel):
    """One stream we lowered, as kept in the file: enough to find it again and put it back."""

    index: int
    pid: str | None
    app: str | None
    role: str | None = None
    original: list[float]
    floor: list[float]  # the lowest we may have set: below it, someone else changed it

    def allows(self, now: list[float]) -> bool:
        """Whether `now` is a volume we could have set: between the floor and the original, per channel."""
        return len(now) == len(self.original) and all(
            lo - TOLERANCE <= v <= hi + TOLERANCE for v, lo, hi in zip(now, self.floor, self.original, strict=True)
        )


class _Record(BaseModel):
    streams: list[_Lowered]


@dataclass
class _Stream:
    index: int
    pid: str | None
    app: str | None
    role: str | None
    original: list[float]
    set_to: list[float] | None = None  # what we last set (None: not touched yet)
    deepest: float = 0.0  # dB: the lowest we have taken it

    def lowered(self) -> _Lowered:
        floor = [v * factor(self.deepest) for v in self.original]
        return _Lowered(
            index=self.index, pid=self.pid, app=self.app, role=self.role, original=self.original, floor=floor
        )


@dataclass(frozen=True)
class Lowering:
    """The others are being lowered: `done` once the first sample may play (they are down, or nothing else
    is audible); never waited for past `deadline` (loop time: HOLD_MOST after it began)."""

    done: asyncio.Future[None]
    deadline: float

    async def wait(self) -> None:
        timeout = self.deadline - asyncio.get_running_loop().time()
        if not self.done.done() and timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.done), timeout)


@dataclass
class _Fade:
    from_db: float
    to_db: float
    began: float
    seconds: float
    progress: float = 0.0

    def advance(self) -> float:
        """Move on with the clock, but by at most a few steps' worth: after a stall (a busy machine) the
        fade goes on smoothly instead of jumping (it then takes a little longer)."""
        due = (time.monotonic() - self.began) / self.seconds if self.seconds > 0 else 1.0
        self.progress = min(1.0, due, self.progress + 3 * STEP / self.seconds)
        return self.progress


@dataclass
class _Wanted:
    depth: float = 0.0  # dB the loop wants the others down by now
    closing: bool = False
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = field(default_factory=list)


class _Meter:
    """The peaks of one stream, as the sink takes it (METER_RATE a second: libpulse's peak detection on the
    sink's monitor, for that stream alone, as pavucontrol's meters), read on the worker's connection as its
    loop runs. It does not ask the sink for a lower latency, nor keep it from suspending. Says whether the
    stream plays anything but silence."""

    def __init__(self, pulse: Any, stream: int, sink: int, monitor: str) -> None:
        from pulsectl import _pulsectl as c

        self.sink = sink
        self._peaks: collections.deque[float] = collections.deque(maxlen=METER_RECENT)
        spec = c.PA_SAMPLE_SPEC(format=c.PA_SAMPLE_FLOAT32NE, rate=METER_RATE, channels=1)
        # pavucontrol's id keeps it out of mixers' lists of recording streams, as pulsectl's own peak reading does
        props = c.pa.proplist_from_string("application.id=org.PulseAudio.pavucontrol media.name=ducking-meter")
        context = pulse._ctx  # noqa: SLF001 - pulsectl's connection: the meter shares it (and its loop)
        self._stream = c.pa.stream_new_with_proplist(context, b"ducking meter", c.byref(spec), None, props)
        c.pa.proplist_free(props)
        self._read = c.PA_STREAM_REQUEST_CB_T(self._on_read)  # kept: libpulse calls it for as long as the stream
        c.pa.stream_set_read_callback(self._stream, self._read, None)
        c.pa.stream_set_monitor_stream(self._stream, stream)
        flags = c.PA_STREAM_DONT_MOVE | c.PA_STREAM_PEAK_DETECT | c.PA_STREAM_DONT_INHIBIT_AUTO_SUSPEND
        try:  # every peak as it comes (fragsize: one float); no ADJUST_LATENCY: the sink keeps its own latency
            c.pa.stream_connect_record(
                self._stream, monitor.encode(), c.PA_BUFFER_ATTR(fragsize=4, maxlength=2**32 - 1), flags
            )
        except c.pa.CallError:
            c.pa.stream_unref(self._stream)
            raise

    def _on_read(self, stream: Any, _size: int, _userdata: Any) -> None:
        from pulsectl import _pulsectl as c

        data, size = c.c_void_p(), c.c_int(0)
        c.pa.stream_peek(stream, data, c.byref(size))
        try:
            if data and size.value >= 4:
                peaks = c.cast(data, c.POINTER(c.c_float))
                self._peaks.extend(float(peaks[i]) for i in range(size.value // 4))
        finally:
            if size.value:  # libpulse: not to be dropped when empty
                c.pa.stream_drop(stream)

    @property
    def audible(self) -> bool:
        """Something above silence in the last peaks; or no peaks yet (not known: taken as audible)."""
        return not self._peaks or max(self._peaks) > SILENT

    def close(self) -> None:
        from pulsectl import _pulsectl as c

        with contextlib.suppress(c.pa.CallError):  # the server removed it already
            c.pa.stream_disconnect(self._stream)
        c.pa.stream_unref(self._stream)


class Ducker:
    """Lowers the other streams while held. hold()/release() from the event loop; the rest in a thread."""

    def __init__(self, record_path: Path) -> None:
        self._path = record_path
        self._wanted = _Wanted()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._later: asyncio.TimerHandle | None = None  # a synchronized start's hold, due AT_LEAD before it
        self._wake_r, self._wake_w = os.pipe()  # the loop's nudge, polled with the server's socket
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pulse: Any = None
        self._available: bool | None = None  # None: not tried yet
        self._failures = 0  # in a row, since the server last answered a whole look (worker thread)
        self._retry_at: float | None = None  # monotonic: when to try to reach it again, once lost (worker thread)
        self._streams: dict[int, _Stream] = {}
        self._gone: list[_Stream] = []  # lowered streams that ended while we hold (see _inherited)
        self._leftovers: list[_Lowered] = []  # lowered before the server went away, not back yet (worker)
        self._leftovers_until = 0.0  # monotonic: when they are given up
        self._seen: set[int] = set()  # sink inputs seen on this connection: the others are new (worker)
        self._meters: dict[int, _Meter] = {}  # of the other streams on our sink, by sink input (worker thread)
        self._level = 0.0  # dB the others are down by now (worker thread)
        self._steady: float | None = None  # dB the others are held down by, no fade under way (under _cond)
        # Look again after this many seconds even without a server event (worker thread): PipeWire sends
        # none when it links a new stream to a sink, nor, it seems, when it then sets its volume.
        self._recheck: float | None = None
        self._event_seen = True  # a sink input came, went or changed since the last look (worker thread)
        self._nudged = False  # the loop changed what it wants since the worker last looked (under _cond)
        self._left_alone: set[int] = set()  # streams whose volume someone else changed while held (worker)
        self._pid = str(os.getpid())

    # ----------------------------------------------------------------------------- event loop side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ducking", daemon=True)
        self._thread.start()

    def hold(self, depth_db: float, at: float | None = None) -> Lowering:
        """Lower the others by `depth_db`; what the first sample waits for. `at`: a synchronized start's
        instant (wall clock): they go down shortly before it, and the first sample does not wait."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._later is not None:
            self._later.cancel()
            self._later = None
        due = None if at is None else at - time.time() - FADE_DOWN - AT_LEAD
        if due is not None and due > 0:
            self._later = loop.call_later(due, self._hold_now, depth_db, done)
        else:
            self._hold_now(depth_db, done)
        return Lowering(done, loop.time() + (0.0 if at is not None else HOLD_MOST))

    def _hold_now(self, depth_db: float, done: asyncio.Future[None]) -> None:
        self._later = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        with self._cond:
            self._wanted.depth = depth_db
            if self._steady == depth_db:  # already down (the one before is lingering): nothing to wait for
                done.set_result(None)
            else:
                self._wanted.waiters.append((asyncio.get_running_loop(), done))
            self._nudge()

    def release(self) -> None:
        """Bring the others back up, LINGER from now unless held again before (a hold still due is dropped)."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._linger is not None:
            self._linger.cancel()
        self._linger = asyncio.get_running_loop().call_later(LINGER, self._set_depth, 0.0)

    def _set_depth(self, depth_db: float) -> None:
        self._linger = None
        with self._cond:
            self._wanted.depth = depth_db
            self._nudge()

    def _nudge(self) -> None:
        """Wake the worker to look at what the loop wants now (called with the condition held): the flag, then
        a byte on the pipe its poll watches beside the server's socket. A byte is never lost, whenever it comes
        (pulsectl's own event_listen_stop is, when it comes just before the wait begins)."""
        self._nudged = True
        self._cond.notify()
        with contextlib.suppress(BlockingIOError):  # full: a wakeup is pending anyway
            os.write(self._wake_w, b"!")

    async def close(self) -> None:
        """Bring everything back now (a short fade) and end the thread."""
        for timer in (self._linger, self._later):
            if timer is not None:
                timer.cancel()
        with self._cond:
            self._wanted.depth = 0.0
            self._wanted.closing = True
            self._nudge()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, FADE_UP + 5)
            if self._thread.is_alive():
                return
        os.close(self._wake_r)
        os.close(self._wake_w)

    # --------------------------------------------------------------------------------- worker thread

    def _run(self) -> None:
        fade: _Fade | None = None
        while True:
            try:
                fade, done = self._step(fade)
            except Exception as exc:
                # The server went away (its streams with it), or refused a call: connect again at once, then
                # after each of RETRY (a server that keeps failing is not hammered). What we had lowered is
                # still in the file, which the reconnection restores.
                LOG.warning("ducking: the sound server connection failed (%s); connecting again", exc)
                self._drop_connection()
                self._retry_at, fade, done = time.monotonic() + self._backoff(), None, False
            if done:
                break
        self._drop_connection()

    def _step(self, fade: _Fade | None) -> tuple[_Fade | None, bool]:
        """One step towards what the loop wants: (the fade under way, True when closed)."""
        with self._cond:
            self._nudged = False
            target, closing = self._wanted.depth, self._wanted.closing
            if closing and target == self._level == 0.0 and fade is None:
                return None, True
            if target != self._level:
                self._steady = None
        if not self._ensure_connected():
            return None, self._unreachable(target)
        if target != self._level:
            starting = fade is None or fade.to_db != target
            if fade is None or fade.to_db != target:
                seconds = (FADE_DOWN if target > self._level else FADE_UP) * (0.25 if closing else 1.0)
                fade = _Fade(self._level, target, time.monotonic(), seconds)
            progress = fade.advance()
            self._level = fade.to_db if progress >= 1.0 else fade.from_db + (fade.to_db - fade.from_db) * progress
            audible = self._apply(max(fade.from_db, fade.to_db))
            if starting and target > fade.from_db and not audible:  # nothing to hear under the first word
                with self._cond:
                    self._resolve(self._wanted)
            if not self._streams:  # nothing else plays: no fade (speech need not wait; a stream that starts
                self._level, progress = fade.to_db, 1.0  # later is lowered all the way at once)
            if progress < 1.0:
                time.sleep(STEP)
                return fade, False
        if self._level > 0 and (self._steady != self._level or self._event_seen or self._recheck is not None):
            # Held and the server reported no change (no stream came, went or changed): not asked again.
            self._event_seen = False
            self._apply(self._level)
        elif self._level == 0 and (self._event_seen or self._recheck is not None):
            self._event_seen = False
            self._track()
        with self._cond:
            self._resolve(self._wanted)
            self._steady = self._level if self._level == self._wanted.depth else None
        self._failures = 0  # a whole look went through
        if self._level > 0:
            self._listen(self._recheck or HELD_POLL)
        else:  # a stream being linked (PipeWire) is looked at again, less often: its peaks are for later
            self._listen(None if self._recheck is None else HELD_POLL)
        return None, False

    def _backoff(self) -> float:
        """Seconds until the next attempt after one more failure in a row: none for the first."""
        self._failures += 1
        return 0.0 if self._failures == 1 else RETRY[min(self._failures - 2, len(RETRY) - 1)]

    def _unreachable(self, target: float) -> bool:
        """No server: speech goes on without ducking. Wait for the loop's next wish, or the next attempt to
        reach a server that went away (one that never answered is tried again at the next request). True
        once closed."""
        self._level = 0.0
        with self._cond:
            self._resolve(self._wanted)
            if self._wanted.closing:
                return True
            if not self._nudged and self._wanted.depth == target:
                wait = None if self._retry_at is None else max(0.0, self._retry_at - time.monotonic())
                self._cond.wait(wait)
        return False

    def _resolve(self, wanted: _Wanted) -> None:
        """Tell the loop the first sample may play (called with the condition held)."""
        for loop, future in wanted.waiters:
            settle_threadsafe(loop, future)
        wanted.waiters.clear()

    def _ensure_connected(self) -> bool:
        if self._pulse is not None:
            return True
        if self._retry_at is not None and time.monotonic() < self._retry_at and not self._wanted.depth:
            return False
        first = self._available is None
        try:
            pulse = _connect("mqtt-speaker-ducking")
        except ConnectionError as exc:
            if first or self._available:  # said once: at start (plain ALSA: expected), or when it goes away
                LOG.log(
                    logging.INFO if first else logging.WARNING,
                    "ducking is not available: %s; other audio is not lowered while speaking",
                    exc,
                )
            else:
                LOG.debug("ducking still not available: %s", exc)
            if self._retry_at is not None:  # it went away: tried again after each of RETRY
                self._retry_at = time.monotonic() + max(RETRY[0], self._backoff())
            self._available = False
            return False
        try:
            pulse.set_poll_func(self._poll)
            pulse.event_mask_set("sink_input")
            pulse.event_callback_set(self._on_event)
            info = pulse.server_info()
        except Exception as exc:
            LOG.warning("ducking is not available: the sound server refused events: %s", exc)
            pulse.close()
            self._available = False
            return False
        self._pulse = pulse
        LOG.info("ducking %s: %s %s", "works" if first else "works again", info.server_name, info.server_version)
        self._available, self._retry_at = True, None
        self._restore_leftovers()
        return True

    def _drop_connection(self) -> None:
        with self._cond:
            self._steady = None
            pulse, self._pulse = self._pulse, None
        self._event_seen = True
        self._streams.clear()
        self._left_alone.clear()  # the indices of a server we connect to again may be another's
        self._seen.clear()
        self._level = 0.0
        meters, self._meters = self._meters, {}
        if pulse is not None:
            with contextlib.suppress(Exception):
                for meter in meters.values():
                    meter.close()
                pulse.close()

    def _poll(self, fds: list[Any], timeout: float) -> int:
        """libpulse's poll (pulsectl's hook), which also wakes on the loop's nudge: the byte on our pipe stops
        the worker's wait for server events. `timeout` in seconds, negative: none. The count of libpulse's
        descriptors that are ready."""
        poller = select.poll()
        for fd in fds:
            poller.register(fd.fd, fd.events)
        poller.register(self._wake_r, select.POLLIN)
        ready = dict(poller.poll(None if timeout < 0 else timeout * 1000))
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 64)
            self._pulse.event_listen_stop()  # in this thread: the wait stops once this turn is dispatched
        for fd in fds:
            fd.revents = ready.get(fd.fd, 0)
        return sum(1 for fd in fds if fd.revents)

    def _on_event(self, _event: Any) -> None:
        import pulsectl

        self._event_seen = True
        raise pulsectl.PulseLoopStop

    def _listen(self, timeout: float | None) -> None:
        """Wait for a sink input event (a new stream: lowered at once while held, measured while not), the
        loop's nudge, or `timeout` (None: none). A server that went away raises PulseDisconnected here, so
        it is noticed when it happens, not at the next announcement."""
        with self._cond:
            if self._nudged or self._wanted.closing:  # closing: the next step ends it, no event is waited for
                return
        if self._leftovers:  # looked for until given up (then forgotten, also in the file)
            left = self._leftovers_until - time.monotonic()
            if left <= 0:
                self._give_up_leftovers()
            else:
                timeout = min(timeout or left, left)
        self._pulse.event_listen(timeout=timeout)

    def _look(self) -> tuple[list[Any], int | None]:
        """The server's sink inputs and our sink; a meter on each other stream on our sink."""
        inputs = self._pulse.sink_input_list()
        sinks = self._pulse.sink_list()
        sink = self._our_sink(inputs, sinks)
        linked = {int(s.index) for s in sinks}
        # A stream on no sink yet is being linked (PipeWire): look again soon.
        self._recheck = STEP if any(int(s.sink) not in linked for s in inputs) else None
        others = {
            int(s.index)
            for s in inputs
            if int(s.sink) == sink and s.proplist.get("application.process.id") != self._pid
        }
        for index in [i for i, meter in self._meters.items() if i not in others or meter.sink != sink]:
            self._meters.pop(index).close()
        if sink is not None and others - self._meters.keys():
            monitor = next(s.monitor_source_name for s in sinks if int(s.index) == sink)
            for index in others - self._meters.keys():
                self._meters[index] = _Meter(self._pulse, index, sink, monitor)
        return inputs, sink

    def _track(self) -> None:
        """While not held: keep the meters, and put back a stream that comes back lowered (see _leftovers)."""
        inputs, _ = self._look()
        self._track_new(inputs)

    def _track_new(self, inputs: list[Any]) -> None:
        """Each stream new to us that is a leftover is put back to its own volume."""
        for info in inputs:
            index = int(info.index)
            if index not in self._seen:
                self._seen.add(index)
                left = self._leftover_of(info)
                if left is not None:
                    self._set_volume(index, left.original)
                    LOG.info(
                        "ducking: restored %s, which came (back) at the volume %s had been lowered to",
                        _name(info.proplist),
                        left.app,
                    )

    def _our_sink(self, inputs: Iterable[Any], sinks: list[Any]) -> int | None:
        """The sink we play to: our own stream's, else $PULSE_SINK, else the server's default sink. (A stream
        just created may not be on a sink yet: PipeWire shows it on none until WirePlumber links it.)"""
        indices = {int(sink.index) for sink in sinks}
        for stream in inputs:
            if stream.proplist.get("application.process.id") == self._pid and int(stream.sink) in indices:
                return int(stream.sink)
        name = os.environ.get("PULSE_SINK") or self._pulse.server_info().default_sink_name
        return next((int(sink.index) for sink in sinks if sink.name == name), None)

    def _apply(self, deepest: float) -> bool:  # noqa: PLR0912, PLR0915 - one pass over the server's streams, each case in the order it must be decided
        """Set every other stream on our sink to its original volume, `self._level` dB down (on the way to
        at most `deepest` dB down: what the file says it may be at, if we are killed meanwhile). Whether any
        of them may be heard (playing, and not silence)."""
        inputs, sink = self._look()
        present = {int(s.index) for s in inputs}
        changed = False
        for gone in [i for i in self._streams if i not in present]:
            self._gone = [*self._gone[-15:], self._streams.pop(gone)]
            changed = True
        updates: list[tuple[_Stream, list[float]]] = []
        self._left_alone &= present
        playing = False
        for info in inputs:
            index = int(info.index)
            props = info.proplist
            new = index not in self._seen
            self._seen.add(index)
            if props.get("application.process.id") == self._pid or index in self._left_alone:
                continue
            now = list(info.volume.values)
            stream = self._streams.get(index)
            if stream is not None and stream.set_to is not None and not _close(now, stream.set_to):
                LOG.info("ducking: %s's volume was changed meanwhile; left as it is now", _name(props))
                del self._streams[index]
                self._left_alone.add(index)
                changed = True
                continue
            if int(info.sink) != sink:  # moved to another sink: it is no longer ours to lower
                if stream is not None:
                    updates.append((stream, stream.original))
                    del self._streams[index]
                    changed = True
                continue
            if stream is None:
                if self._level == 0:
                    continue
                if not any(now):  # nothing to lower; and on PipeWire a new stream shows at 0 for a moment
                    self._recheck = self._recheck or HELD_POLL  # before its own volume is set (taken as its
                    continue  # volume, it would come back at 0): looked at again until it has one
                app, role = props.get("application.name"), props.get("media.role")
                left = self._leftover_of(info) if new else None
                original = left.original if left is not None else (self._inherited(app, role, now) or now)
                stream = _Stream(index, props.get("application.process.id"), app, role, original)
                self._streams[index] = stream
                changed = True
            meter = self._meters.get(index)
            playing = playing or (not info.corked and (meter is None or meter.audible))
            if deepest > stream.deepest:
                stream.deepest = deepest
                changed = True
            want = stream.original if self._level == 0 else [v * factor(self._level) for v in stream.original]
            if stream.set_to is None or not _close(want, stream.set_to, 1e-6):
                updates.append((stream, want))
            if self._level == 0:
                del self._streams[index]
                changed = True
        if self._level == 0:
            self._gone.clear()
            self._left_alone.clear()
        if changed:
            self._save()  # before lowering: a SIGKILL right after must still find what to restore
        for stream, want in updates:
            self._set_volume(stream.index, want)
            stream.set_to = want
        return playing

    def _set_volume(self, index: int, volume: list[float]) -> None:
        import pulsectl

        with contextlib.suppress(pulsectl.PulseOperationFailed):  # it ended just now
            self._pulse.sink_input_volume_set(index, pulsectl.PulseVolumeInfo(volume))

    def _inherited(self, app: str | None, role: str | None, now: list[float]) -> list[float] | None:
        """The volume a stream starting while we hold really had, when it came in at the volume we had set on
        a stream of the same application (or role) that ended meanwhile: the server remembered that volume
        for it (PulseAudio's module-stream-restore, WirePlumber's restore-stream; a player that opens a new
        stream per track). None when it is a volume of its own."""
        for gone in reversed(self._gone):
            same = (app is not None and gone.app == app) or (role is not None and gone.role == role)
            if same and gone.set_to is not None and _close(now, gone.set_to):
                LOG.info("ducking: %s started at the volume we had lowered it to; it goes back to its own", app)
                return gone.original
        return None

    def _save(self) -> None:
        """The file of what is lowered now, and of what is still looked for (removed when neither); atomic, and a
        failure only logged."""
        try:
            streams = [s.lowered() for s in self._streams.values()] + self._leftovers
            if not streams:
                self._path.unlink(missing_ok=True)
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self._path, _Record(streams=streams).model_dump_json().encode(), prefix=".ducked-")
        except OSError as exc:
            LOG.warning("ducking: cannot write %s: %s", self._path, exc)

    def _restore_leftovers(self) -> None:
        """Streams that were lowered when the last connection ended (a crash, a SIGKILL, a power cut, the
        sound server restarted) and could not be restored. The same stream, still there (same index, process
        and application), is put back if its volume is still one we could have set (between its floor and its
        original), else left as someone changed it. A stream of the same application or role at such a volume,
        there now or coming back within LEFTOVER_WAIT, is put back too: a player reconnecting after the server
        restarted gets the lowered volume the server remembered for it (module-stream-restore, WirePlumber)."""
        try:
            record = _Record.model_validate_json(self._path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValidationError, ValueError) as exc:
            LOG.warning("ducking: ignoring %s: %s", self._path, str(exc).splitlines()[0])
            self._path.unlink(missing_ok=True)
            return
        inputs = self._pulse.sink_input_list()
        by_index = {int(s.index): s for s in inputs}
        self._leftovers = []
        for left in record.streams:
            info = by_index.get(left.index)
            props = info.proplist if info is not None else {}
            if info is not None and (props.get("application.process.id"), props.get("application.name")) == (
                left.pid,
                left.app,
            ):
                if left.allows(list(info.volume.values)):
                    self._set_volume(left.index, left.original)
                    LOG.info("ducking: restored %s, lowered by a run that ended before it could", left.app)
                else:
                    LOG.info("ducking: %s was changed since the restart; left as it is", left.app)
                self._seen.add(left.index)
            else:
                self._leftovers.append(left)
        self._leftovers_until = time.monotonic() + LEFTOVER_WAIT
        for gone in self._leftovers:
            LOG.info(
                "ducking: stream %d (%s) lowered before is gone; looked for as it comes back", gone.index, gone.app
            )
        self._track_new(inputs)  # the others: a stream of the same application or role, at a volume we could have set
        self._save()

    def _leftover_of(self, info: Any) -> _Lowered | None:
        """The leftover that a stream new to us is (then no longer looked for): of the same application or role
        (module-stream-restore remembers a volume per role, then per application), at a volume that leftover
        allows. None when there is none (or they were given up: LEFTOVER_WAIT passed)."""
        if self._leftovers and time.monotonic() > self._leftovers_until:
            self._give_up_leftovers()
        props = info.proplist
        app, role, now = props.get("application.name"), props.get("media.role"), list(info.volume.values)
        for left in self._leftovers:
            same = (app is not None and left.app == app) or (role is not None and left.role == role)
            if same and left.allows(now):
                self._leftovers.remove(left)
                self._save()
                return left
        return None

    def _give_up_leftovers(self) -> None:
        LOG.info("ducking: %d stream(s) lowered before did not come back; no longer looked for", len(self._leftovers))
        self._leftovers = []
        self._save()


def _close(a: list[float], b: list[float], tolerance: float = TOLERANCE) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=tolerance) for x, y in zip(a, b, strict=True))


def _name(props: dict[str, str]) -> str:
    return props.get("application.name") or props.get("media.name") or "a stream"


async def once_lowered(
    lowering: Lowering, chunks: AsyncGenerator[AudioChunk, None]
) -> AsyncGenerator[AudioChunk, None]:
    """`chunks`, the first one held back until it may play (see Lowering), at most HOLD_MOST."""
    try:
        first = True
        async for chunk in chunks:
            if first:
                first = False
                await lowering.wait()
            yield chunk
    finally:
        await chunks.aclose()


def record_path(state_file: Path) -> Path:
    """Where what is lowered now is kept: beside the runtime state file (state.json: state-ducked.json)."""
    return state_file.with_name(f"{state_file.stem}-ducked.json")
