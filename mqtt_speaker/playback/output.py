"""Playback: how an utterance is played, whatever plays it (the sound server, PortAudio, WAV files).

One loop (`play_utterance`) serves every output: it reads the utterance's chunks as they arrive, resamples
them to the device's rate at the playback's volume, and hands them to the device's `Sink`, waiting for
room past a bound; at the end it waits until the last sample was heard, and on a stop it lets the sink
fade out. The devices differ only in their sink (pulse.py, portaudio.py, wav.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mqtt_speaker.playback.pcm import Feed
from mqtt_speaker.speech.audio import AudioChunk, Pcm

DEFAULT_RATE = 44100


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


@dataclass
class StartGate:
    """One announcement's start instant, and how late its first sample reached the DAC.

    The speaker makes it, the player fills `late` (seconds; 0 or less: on time) once the first sample is
    placed. Lives on the event loop only.
    """

    at: float  # wall clock, epoch seconds
    late: float | None = None
    moved: float = 0.0  # seconds the instant was moved on before the first sample (a late shared broadcast)

    def move_to(self, later: float) -> None:
        """A later instant, agreed by every room (the house's audio came late): counted as lateness."""
        if later > self.at and self.late is None:
            self.moved += later - self.at
            self.at = later

    @property
    def late_ms(self) -> int | None:
        """Milliseconds late, never negative (on time, or placed early by a rounding: 0), from the instant
        first given."""
        return None if self.late is None else max(0, round((self.late + self.moved) * 1000))


def frames_before_start(start: float, dac_time: float, rate: int) -> int:
    """Frames of silence to put before the first sample, when the next frame reaches the DAC at
    `dac_time` (the same clock as `start`), so that the first sample reaches it at `start`. Negative:
    that many frames late (start at once)."""
    return round((start - dac_time) * rate)


@dataclass(frozen=True)
class Playback:
    """How one utterance is to be played."""

    name: str
    on_first_audio: Callable[[], None]  # called as the first speech (not the chime) plays (and is placed)
    stop: asyncio.Event  # set it to fade out and return early
    gain: float = 1.0
    start: StartGate | None = None  # a synchronized start: the first sample reaches the DAC at start.at
    engine: str = ""  # the engine whose audio this is (its name)
    identity: str = ""  # ... and what of its configuration changes the sound (its cache key's part)


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


class Announcer:
    """Calls the playback's on_first_audio once the first speech has been handed over and, for a
    synchronized start, the first sample has been placed on the device's clock (its lateness known).
    Speech behind a chime is announced when the chime has played out: when the speech is heard."""

    def __init__(self, playback: Playback, loop: asyncio.AbstractEventLoop) -> None:
        self._playback = playback
        self._loop = loop
        self._speech = False
        self._done = False
        self._began: float | None = None  # loop time the first sound is heard from (a synchronized start's instant)
        self._ahead = 0.0  # seconds of sound before the first speech (a chime)
        self._due: asyncio.TimerHandle | None = None  # speech behind a chime: when the chime has played out

    def handed_over(self, chunk: AudioChunk) -> None:
        """A chunk went to the device: a chime's adds to what plays before the speech; the first speech's
        is announced once what plays before it has been heard."""
        if self._began is None:
            start = self._playback.start
            self._began = self._loop.time() + (max(0.0, start.at - time.time()) if start else 0.0)
        if not chunk.is_speech:
            self._ahead += chunk.samples.size / chunk.sample_rate
            return
        if self._speech or self._due is not None:
            return
        after = self._began + self._ahead - self._loop.time()
        if self._ahead and after > 0:
            self._due = self._loop.call_later(after, self._heard)
        else:
            self._heard()

    def _heard(self) -> None:
        self._speech = True
        self._announce()

    def end(self, *, heard: bool) -> None:
        """The utterance is over: speech still due to be announced was `heard` (played out) or not (stopped
        during the chime: no announcement)."""
        if self._due is not None and not self._speech:
            self._due.cancel()
            if heard:
                self._heard()

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


class Sink(Protocol):
    """One utterance on a device while it plays: what the play loop hands over, and asks for."""

    @property
    def rate(self) -> int:
        """The device's rate: what the samples handed over are resampled to."""
        ...

    @property
    def queued(self) -> int:
        """Frames handed over that the device has not taken yet."""
        ...

    def put(self, samples: Pcm) -> None:
        """Hand samples over (at once; AudioDeviceError if the device failed)."""

    async def room(self, below: int, stopping: asyncio.Future[Any]) -> None:
        """Until fewer than `below` frames wait; Stopped when a stop comes first."""

    async def finish(self, stopping: asyncio.Future[Any]) -> float:
        """Everything is handed over: until the last sample was heard; seconds heard. Stopped on a stop."""
        ...

    async def fade(self) -> float:
        """A stop: fade out what is being heard (a few milliseconds, no click); seconds heard."""
        ...

    def abandon(self) -> None:
        """An error: drop whatever waits."""


class Device(Protocol):
    """What a player offers the play loop: a sink per utterance."""

    async def open_sink(self, playback: Playback, announcer: Announcer) -> Sink:
        """The sink for this utterance (AudioDeviceError when the device cannot be opened)."""
        ...

    def turn_over(self) -> None:
        """The utterance is over (played, stopped or failed): the device may close itself when idle."""


async def play_utterance(
    device: Device, chunks: AsyncIterator[AudioChunk], playback: Playback, max_buffer_seconds: float
) -> Played:
    """The play loop of every output: chunks to the device's sink as they arrive; Played when the last
    sample was heard, or at once (faded) on a stop."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.ensure_future(playback.stop.wait())
    announcer = Announcer(playback, loop)
    sink: Sink | None = None
    feed: Feed | None = None
    limit = 0
    heard = False
    try:
        while (chunk := await next_chunk(chunks, stopping)) is not None:
            if not chunk.samples.size:
                continue
            if sink is None or feed is None:
                sink = await device.open_sink(playback, announcer)
                feed = Feed(sink.rate, playback.gain)
                limit = int(max_buffer_seconds * sink.rate)
            for samples in feed(chunk):
                sink.put(samples)
            announcer.handed_over(chunk)
            if sink.queued > limit:
                await sink.room(limit // 2, stopping)
        if sink is None or feed is None:
            return Played(0.0)
        sink.put(feed.end())
        played = Played(await sink.finish(stopping))
        heard = True
        return played
    except Stopped:
        if sink is None:
            return Played(0.0, interrupted=True)
        return Played(await sink.fade(), interrupted=True)
    except BaseException:
        if sink is not None:
            sink.abandon()
        raise
    finally:
        announcer.end(heard=heard)
        stopping.cancel()
        device.turn_over()
