"""Ducking: while we speak, every other playback stream on our sink is lowered, and brought back after.

The sound server (PulseAudio, or PipeWire through pipewire-pulse) is driven with `pulsectl` (libpulse
through ctypes). Its calls block, so one worker thread owns the connection; the event loop only sets
what it wants (how many dB down) and is told through call_soon_threadsafe when that was reached.

- `hold(depth)` as a request (with its chime) begins: the other streams fade down over FADE_DOWN; the
  returned future resolves once they are down (at once when nothing else plays), and the speaker holds
  its first sample until then: "duck first", but synthesis runs meanwhile, so speech waits at most the
  fade and usually less (the first word is never heard over full-level music).
- `release()` after it ends: LINGER later, unless held again (back-to-back requests), they fade up over
  FADE_UP to exactly the volume each had, unless someone changed a stream's volume meanwhile (it is
  then not what we set): that change stands and the stream is left alone from then on.
- A stream that appears (or is moved onto our sink) while we hold is lowered at once (on the server's event).
- What was lowered is written to a small file before it is lowered (in the worker thread), and
  forgotten once restored: after a crash, a SIGKILL or a power cut, the next start restores what is
  still lower than it was (see `_restore_leftovers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
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
FADE_DOWN = 0.25  # seconds: before the first sample (the chime's or the voice's)
FADE_UP = 0.8  # seconds: slower on the way back, as radio does
LINGER = 1.0  # seconds the music stays down after the last word, for the next request in the queue
STEP = 0.01  # seconds between two volume steps of a fade (the server applies them per mixing block)
HELD_POLL = 0.5  # seconds: a held duck looks at least this often (the loop's wishes and server events wake it)
TOLERANCE = 0.002  # of full volume: a stream further than this from what we set was changed by someone else


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
    original: list[float]
    floor: list[float]  # the lowest we may have set: below it, someone else changed it


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


@dataclass(frozen=True)
class Lowering:
    """The others are being lowered: `done` once they are down (at once when nothing else plays)."""

    done: asyncio.Future[None]
    deadline: float  # loop time: the fade's length after it began; speech never waits longer

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


class Ducker:
    """Lowers the other streams while held. hold()/release() from the event loop; the rest in a thread."""

    def __init__(self, record_path: Path) -> None:
        self._path = record_path
        self._wanted = _Wanted()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._pulse: Any = None
        self._available: bool | None = None  # None: not tried yet
        self._streams: dict[int, _Stream] = {}
        self._gone: list[_Stream] = []  # lowered streams that ended while we hold (see _inherited)
        self._level = 0.0  # dB the others are down by now (worker thread)
        self._steady: float | None = None  # dB the others are held down by, no fade under way (under _cond)
        # Look again after this many seconds even without a server event (worker thread): PipeWire sends
        # none when it links a new stream to a sink, nor, it seems, when it then sets its volume.
        self._recheck: float | None = None
        self._event_seen = True  # a sink input came, went or changed since the last look (worker thread)
        self._nudged = False  # the loop changed what it wants since the worker last looked (under _cond)
        self._listening = False  # the worker waits for server events (under _cond)
        self._left_alone: set[int] = set()  # streams whose volume someone else changed while held (worker)
        self._pid = str(os.getpid())

    # ----------------------------------------------------------------------------- event loop side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ducking", daemon=True)
        self._thread.start()

    def hold(self, depth_db: float) -> Lowering:
        """Lower the others by `depth_db`; what to wait for before the first sample."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        with self._cond:
            self._wanted.depth = depth_db
            if self._steady == depth_db:  # already down (the one before is lingering): nothing to wait for
                done.set_result(None)
            else:
                self._wanted.waiters.append((loop, done))
            self._nudge()
        return Lowering(done, loop.time() + FADE_DOWN)

    def release(self) -> None:
        """Bring the others back up, LINGER from now unless held again before."""
        if self._linger is not None:
            self._linger.cancel()
        self._linger = asyncio.get_running_loop().call_later(LINGER, self._set_depth, 0.0)

    def _set_depth(self, depth_db: float) -> None:
        self._linger = None
        with self._cond:
            self._wanted.depth = depth_db
            self._nudge()

    def _nudge(self) -> None:
        """Wake the worker to look at what the loop wants now (called with the condition held). Waiting for
        server events, it is stopped through libpulse's wakeup; pulsectl may miss one that comes just as
        it begins to wait: HELD_POLL bounds that."""
        self._nudged = True
        self._cond.notify()
        if self._listening and self._pulse is not None:
            self._pulse.event_listen_stop()

    async def close(self) -> None:
        """Bring everything back now (a short fade) and end the thread."""
        if self._linger is not None:
            self._linger.cancel()
        with self._cond:
            self._wanted.depth = 0.0
            self._wanted.closing = True
            self._nudge()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, FADE_UP + 5)

    # --------------------------------------------------------------------------------- worker thread

    def _run(self) -> None:
        try:
            self._ensure_connected(first=True)
        except Exception:
            LOG.exception("ducking: the sound server failed at start")
            self._drop_connection()
        fade: _Fade | None = None
        while True:
            try:
                fade, done = self._step(fade)
            except Exception as exc:
                # The server went away (its streams with it), or refused a call: connect again. What we
                # had lowered is still in the file, which the reconnection restores.
                LOG.warning("ducking: the sound server connection failed (%s); connecting again", exc)
                self._drop_connection()
                fade = None
                with self._cond:
                    self._resolve(self._wanted)
                    done = self._wanted.closing
                    if not done:
                        self._cond.wait(1.0)  # a server that keeps failing is not hammered
            if done:
                break
        self._drop_connection()

    def _step(self, fade: _Fade | None) -> tuple[_Fade | None, bool]:
        """One step towards what the loop wants: (the fade under way, True when closed)."""
        with self._cond:
            self._nudged = False
            wanted = self._wanted
            if not wanted.closing and wanted.depth == self._level == 0.0 and fade is None:
                self._resolve(wanted)
                self._cond.wait()
                return None, False
            target, closing = wanted.depth, wanted.closing
            if target != self._level:
                self._steady = None
        if not self._ensure_connected():
            self._level = 0.0
            with self._cond:
                self._resolve(self._wanted)
                if not self._wanted.closing and self._wanted.depth == target:
                    self._cond.wait()
                return None, self._wanted.closing
        if target != self._level:
            if fade is None or fade.to_db != target:
                seconds = (FADE_DOWN if target > self._level else FADE_UP) * (0.25 if closing else 1.0)
                fade = _Fade(self._level, target, time.monotonic(), seconds)
            progress = fade.advance()
            self._level = fade.to_db if progress >= 1.0 else fade.from_db + (fade.to_db - fade.from_db) * progress
            self._apply(max(fade.from_db, fade.to_db))
            if not self._streams:  # nothing else plays: no fade (speech need not wait; a stream that starts
                self._level, progress = fade.to_db, 1.0  # later is lowered all the way at once)
            if progress < 1.0:
                time.sleep(STEP)
                return fade, False
        if self._steady != self._level or self._event_seen or self._recheck is not None:
            # Held and the server reported no change (no stream came, went or changed): not asked again.
            self._event_seen = False
            self._apply(self._level)
        with self._cond:
            self._resolve(self._wanted)
            self._steady = self._level if self._level == self._wanted.depth else None
            if self._wanted.closing and self._level == 0.0:
                return None, True
        if self._level > 0:
            self._listen()
        return None, False

    def _resolve(self, wanted: _Wanted) -> None:
        """Tell the loop the wanted level was reached (called with the condition held)."""
        for loop, future in wanted.waiters:
            settle_threadsafe(loop, future)
        wanted.waiters.clear()

    def _ensure_connected(self, first: bool = False) -> bool:
        if self._pulse is not None:
            return True
        try:
            self._pulse = _connect("mqtt-speaker-ducking")
            self._pulse.event_mask_set("sink_input")
            self._pulse.event_callback_set(self._on_event)
        except ConnectionError as exc:
            if first or self._available:  # said once: at start (plain ALSA: expected), or when it goes away
                LOG.log(
                    logging.INFO if first else logging.WARNING,
                    "ducking is not available: %s; other audio is not lowered while speaking",
                    exc,
                )
            else:
                LOG.debug("ducking still not available: %s", exc)
            self._available = False
            return False
        except Exception as exc:
            LOG.warning("ducking is not available: the sound server refused events: %s", exc)
            self._drop_connection()
            self._available = False
            return False
        info = self._pulse.server_info()
        LOG.info("ducking %s: %s %s", "works" if first else "works again", info.server_name, info.server_version)
        self._available = True
        self._restore_leftovers()
        return True

    def _drop_connection(self) -> None:
        with self._cond:  # not while the loop may be stopping its wait
            self._steady = None
            pulse, self._pulse = self._pulse, None
        self._event_seen = True
        self._streams.clear()
        self._left_alone.clear()  # the indices of a server we connect to again may be another's
        self._level = 0.0
        if pulse is not None:
            with contextlib.suppress(Exception):
                pulse.close()

    def _on_event(self, _event: Any) -> None:
        import pulsectl

        self._event_seen = True
        raise pulsectl.PulseLoopStop

    def _listen(self) -> None:
        """While held: wait for a sink input event (a new stream: lowered at once), the loop's nudge, or
        HELD_POLL; less while a stream is being set up (see `_recheck`)."""
        with self._cond:
            if self._nudged:
                return
            self._listening = True
        try:
            self._pulse.event_listen(timeout=self._recheck or HELD_POLL)
        finally:
            with self._cond:
                self._listening = False

    def _our_sink(self, inputs: Iterable[Any], sinks: list[Any]) -> int | None:
        """The sink we play to: our own stream's, else $PULSE_SINK, else the server's default sink. (A stream
        just created may not be on a sink yet: PipeWire shows it on none until WirePlumber links it.)"""
        indices = {int(sink.index) for sink in sinks}
        for stream in inputs:
            if stream.proplist.get("application.process.id") == self._pid and int(stream.sink) in indices:
                return int(stream.sink)
        name = os.environ.get("PULSE_SINK") or self._pulse.server_info().default_sink_name
        return next((int(sink.index) for sink in sinks if sink.name == name), None)

    def _apply(self, deepest: float) -> None:  # noqa: PLR0912, PLR0915 - one pass over the server's streams, each case in the order it must be decided
        """Set every other stream on our sink to its original volume, `self._level` dB down (on the way to
        at most `deepest` dB down: what the file says it may be at, if we are killed meanwhile)."""
        import pulsectl

        inputs = self._pulse.sink_input_list()
        sinks = self._pulse.sink_list()
        sink = self._our_sink(inputs, sinks)
        linked = {int(s.index) for s in sinks}
        # A stream on no sink yet is being linked (PipeWire): look again soon.
        self._recheck = STEP if any(int(s.sink) not in linked for s in inputs) else None
        present = {int(s.index) for s in inputs}
        changed = False
        for gone in [i for i in self._streams if i not in present]:
            self._gone = [*self._gone[-15:], self._streams.pop(gone)]
            changed = True
        updates: list[tuple[_Stream, list[float]]] = []
        self._left_alone &= present
        for info in inputs:
            index = int(info.index)
            props = info.proplist
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
                original = self._inherited(app, role, now) or now
                stream = _Stream(index, props.get("application.process.id"), app, role, original)
                self._streams[index] = stream
                changed = True
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
            with contextlib.suppress(pulsectl.PulseOperationFailed):  # it ended just now
                self._pulse.sink_input_volume_set(stream.index, pulsectl.PulseVolumeInfo(want))
            stream.set_to = want

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
        """The file of what is lowered now (removed when nothing is); atomic, and a failure only logged."""
        try:
            if not self._streams:
                self._path.unlink(missing_ok=True)
                return
            record = _Record(
                streams=[
                    _Lowered(
                        index=s.index,
                        pid=s.pid,
                        app=s.app,
                        original=s.original,
                        floor=[v * factor(s.deepest) for v in s.original],
                    )
                    for s in self._streams.values()
                ]
            )
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self._path, record.model_dump_json().encode(), prefix=".ducked-")
        except OSError as exc:
            LOG.warning("ducking: cannot write %s: %s", self._path, exc)

    def _restore_leftovers(self) -> None:
        """Streams a previous run lowered and could not restore (crash, SIGKILL, power cut): each one still
        there (same index, same process and application) whose volume is still within what that run could
        have set (between its floor and its original) is put back; one changed since by someone is left."""
        import pulsectl

        try:
            record = _Record.model_validate_json(self._path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValidationError, ValueError) as exc:
            LOG.warning("ducking: ignoring %s: %s", self._path, str(exc).splitlines()[0])
            self._path.unlink(missing_ok=True)
            return
        inputs = {int(s.index): s for s in self._pulse.sink_input_list()}
        for left in record.streams:
            info = inputs.get(left.index)
            if info is None or (info.proplist.get("application.process.id"), info.proplist.get("application.name")) != (
                left.pid,
                left.app,
            ):
                LOG.info("ducking: stream %d (%s) lowered before the restart is gone", left.index, left.app)
                continue
            now = list(info.volume.values)
            within = len(now) == len(left.original) and all(
                lo - TOLERANCE <= v <= hi + TOLERANCE for v, lo, hi in zip(now, left.floor, left.original, strict=True)
            )
            if not within:
                LOG.info("ducking: %s was changed since the restart; left as it is", left.app)
                continue
            with contextlib.suppress(pulsectl.PulseOperationFailed):
                self._pulse.sink_input_volume_set(left.index, pulsectl.PulseVolumeInfo(left.original))
            LOG.info("ducking: restored %s, lowered by a run that ended before it could", left.app)
        self._path.unlink(missing_ok=True)


def _close(a: list[float], b: list[float], tolerance: float = TOLERANCE) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=tolerance) for x, y in zip(a, b, strict=True))


def _name(props: dict[str, str]) -> str:
    return props.get("application.name") or props.get("media.name") or "a stream"


async def once_lowered(
    lowering: Lowering, chunks: AsyncGenerator[AudioChunk, None]
) -> AsyncGenerator[AudioChunk, None]:
    """`chunks`, the first one held back until the other audio is down, or the fade's length has passed."""
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
