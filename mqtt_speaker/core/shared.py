"""Shared audio: a broadcast synthesized once for the whole house, as this room receives it.

One room synthesizes a broadcast and publishes its audio as frames (protocol/fanout.py). Every room that
takes the broadcast, that one included, feeds the frames into the broadcast's SharedAudio here, and its
voice plays them through the SharedSource, the first engine it asks for a shared request. When the frames
stop before their end (the synthesizing room died or lost the broker, gave up, or a frame was lost), the
source fails with the point the frames had covered (a segment and the characters of it spoken whole),
and the voice's fallback goes on from the first word not heard with the room's own engine. A broadcast
received to its end is kept in this room's cache under the key its synthesizer used, so a repeat is
free wherever it is synthesized next.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from mqtt_speaker.core.cache import AudioCache, cache_key
from mqtt_speaker.engines.base import SynthesisError, Voicing
from mqtt_speaker.playback.output import StartGate
from mqtt_speaker.speech.audio import AudioChunk, Pcm
from mqtt_speaker.speech.text import Script
from mqtt_speaker.speech.vocabulary import ErrorCode, SayRequest

LOG = logging.getLogger(__name__)
SHARED_ENGINE = "shared"  # the voice's name for the shared source among its engines
STALL = 1.5  # seconds without a frame or a heartbeat from the synthesizing room: it is gone
GAP_WAIT = 0.5  # seconds a missing frame is waited for before the rest is taken over
MAX_BROADCASTS = 16  # broadcasts kept at once (the oldest are forgotten)
MAX_SECONDS = 600.0  # of audio kept for one broadcast (ten minutes): past it, the rest is not kept
MAX_AHEAD = 256  # frames kept that came before a missing one


@dataclass(frozen=True)
class Frame:
    """A piece of a broadcast's audio: `samples` at `rate`, the `position`-th sample from its first one."""

    seq: int
    position: int
    rate: int
    segment: int
    spoken: int | None  # characters of `segment` spoken whole by the end of this frame, when known
    samples: Pcm
    due: float | None = None  # when its first sample is to be heard in every room (epoch seconds), if synchronized


@dataclass(frozen=True)
class Origin:
    """Who synthesizes a broadcast, and with what (its cache key's inputs)."""

    site: str
    engine: str
    identity: str
    voicing: Voicing
    rate: int


class SharedLost(Exception):
    """The frames stopped before their end; `segment` and `spoken` say how far they had covered."""

    def __init__(self, reason: str, segment: int | None, spoken: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segment = segment
        self.spoken = spoken


@dataclass
class SharedAudio:
    """One broadcast's frames as this room receives them (event loop only; bounded)."""

    key: str
    origin: Origin | None = None  # known from the broadcast's start message
    mixed: bool = False  # more than one engine's audio: not cached under either's key
    first_by: float = field(default_factory=lambda: time.monotonic() + STALL)  # no start message by then: lost
    _ready: collections.deque[Frame] = field(default_factory=collections.deque)
    _ahead: dict[int, Frame] = field(default_factory=dict)  # frames after a missing one
    _next: int = 0
    _kept: int = 0  # samples kept
    _heard_at: float = field(default_factory=time.monotonic)  # the last frame or heartbeat
    _gap_since: float | None = None
    _ended: bool = False
    _end_at: int | None = None  # the number of frames the synthesizing room says it sent
    _lost: str | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, frame: Frame) -> None:
        """A frame, in any order; one seen before is ignored."""
        self._heard_at = time.monotonic()
        if frame.seq < self._next or frame.seq in self._ahead or self._ended or self._lost:
            return
        if len(self._ahead) >= MAX_AHEAD or self._kept + frame.samples.size > MAX_SECONDS * frame.rate:
            self.lose("more audio than a broadcast may keep")
            return
        self._ahead[frame.seq] = frame
        self._kept += frame.samples.size
        while self._next in self._ahead:
            self._ready.append(self._ahead.pop(self._next))
            self._next += 1
        self._gap_since = (self._gap_since or time.monotonic()) if self._ahead else None
        self._changed.set()

    def announce(self, origin: Origin) -> None:
        """Who synthesizes it, with what; a second one (a fallback took over there) is not cached."""
        if self.origin is not None and self.origin != origin:
            self.mixed = True
        self.origin = origin
        self._heard_at = time.monotonic()
        self._changed.set()

    def skip_to(self, seq: int) -> None:
        """Joining mid-broadcast: the frames before `seq` are past; this room starts there."""
        self._next = seq
        self._ahead = {n: frame for n, frame in self._ahead.items() if n >= seq}

    def alive(self) -> None:
        """A heartbeat: the synthesizing room is there (it may have nothing to say yet)."""
        self._heard_at = time.monotonic()
        self._changed.set()

    def end(self, frames: int) -> None:
        """The synthesizing room says it sent `frames` frames: once they are all in, it has ended."""
        self._end_at = frames
        self._heard_at = time.monotonic()
        self._changed.set()

    def lose(self, reason: str) -> None:
        """The synthesizing room is gone (its last will), or gave up: what came is played, then the rest is
        taken over."""
        if not self._ended and self._lost is None:
            LOG.info("broadcast %s: %s", self.key, reason)
            self._lost = reason
            self._changed.set()

    async def frames(self) -> AsyncGenerator[Frame, None]:
        """The frames in order, as they come; SharedLost when they stop before their end."""
        segment: int | None = None
        spoken = 0
        while True:
            while self._ready:
                frame = self._ready.popleft()
                if frame.spoken is not None or frame.segment != segment:
                    segment, spoken = frame.segment, frame.spoken or 0
                yield frame
            if self._end_at is not None and self._next >= self._end_at:
                self._ended = True
                return
            now = time.monotonic()
            reason = self._lost
            if reason is None and self.origin is None and now > self.first_by:
                reason = "no room announced the shared audio in time"
            elif reason is None and now - self._heard_at > STALL:
                reason = f"the synthesizing room sent nothing for {STALL:g} s"
            elif reason is None and self._gap_since is not None and now - self._gap_since > GAP_WAIT:
                reason = f"frame {self._next} did not come"
            if reason is not None:
                raise SharedLost(reason, segment, spoken)
            self._changed.clear()
            deadline = min(self._heard_at + STALL, self.first_by if self.origin is None else float("inf"))
            if self._gap_since is not None:
                deadline = min(deadline, self._gap_since + GAP_WAIT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - now + 0.01))


class SharedHub:
    """The broadcasts this room takes part in, by key (bounded: the oldest are forgotten)."""

    def __init__(self) -> None:
        self._broadcasts: collections.OrderedDict[str, SharedAudio] = collections.OrderedDict()

    def get(self, key: str) -> SharedAudio:
        audio = self._broadcasts.get(key)
        if audio is None:
            audio = self._broadcasts[key] = SharedAudio(key)
            while len(self._broadcasts) > MAX_BROADCASTS:
                self._broadcasts.popitem(last=False)
        return audio

    def known(self, key: str) -> SharedAudio | None:
        return self._broadcasts.get(key)

    def forget(self, key: str) -> None:
        self._broadcasts.pop(key, None)

    def lose_from(self, site: str, reason: str) -> None:
        """Every broadcast `site` synthesizes is lost (its availability went offline)."""
        for audio in self._broadcasts.values():
            if audio.origin is not None and audio.origin.site == site:
                audio.lose(reason)


class SharedSource:
    """The voice's engine for a shared broadcast: the frames another room (or this one) synthesized.
    Free (this room pays for nothing), and never cached by the voice: a broadcast heard to its end is
    kept here, under its synthesizer's key."""

    name = SHARED_ENGINE
    billed = False
    emotion_applied = True
    identity = SHARED_ENGINE

    def __init__(self, hub: SharedHub, cache: AudioCache | None) -> None:
        self._hub = hub
        self._cache = cache
        self._gates: dict[str, StartGate] = {}  # by key: the synchronized start each request plays at

    def bind(self, request: SayRequest, gate: StartGate | None) -> None:
        """The start instant the request's player places its first sample at: moved on, for every room
        alike, when the house's audio comes too late for it (the first frame says when it is due)."""
        if request.shared is not None and gate is not None:
            self._gates[request.shared] = gate

    def problem(self) -> SynthesisError | None:
        return None

    async def start(self) -> None:
        """Nothing to get ready."""

    async def close(self) -> None:
        """Nothing held."""

    def origin(self, request: SayRequest) -> Origin | None:
        audio = self._hub.known(request.shared) if request.shared else None
        return audio.origin if audio is not None else None

    async def synthesize(self, script: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        key = script.request.shared
        if key is None:
            raise SynthesisError(ErrorCode.ENGINE_UNAVAILABLE, "not a shared broadcast")
        audio = self._hub.get(key)
        live = not script.text.ended  # a stream still being written is never cached (its text is not known)
        kept: list[AudioChunk] = []
        gate = self._gates.pop(key, None)
        try:
            async for frame in audio.frames():
                if gate is not None and frame.due is not None:
                    gate.move_to(frame.due)  # the first frame's instant (the later ones follow it)
                    gate = None
                chunk = AudioChunk(frame.samples, frame.rate, frame.segment, spoken=frame.spoken)
                kept.append(chunk)
                yield chunk
        except SharedLost as lost:
            raise SynthesisError(
                ErrorCode.SYNTHESIS_INTERRUPTED,
                f"shared audio stopped: {lost.reason}",
                spoken_chars=lost.spoken,
                segment=lost.segment,
            ) from lost
        if not live and not audio.mixed:
            self._keep(script.request, audio.origin, kept, sample_rate)

    def _keep(self, request: SayRequest, origin: Origin | None, chunks: list[AudioChunk], sample_rate: int) -> None:
        """A broadcast heard whole, into the cache (in a worker thread) under the key this room would give
        its synthesizer's engine, voice and emotion at this room's rate: a repeat here is then free."""
        cache = self._cache
        if cache is None or not cache.enabled or not request.cache or origin is None or not chunks:
            return
        key = cache_key(origin.identity, request, origin.voicing, sample_rate)
        asyncio.get_running_loop().run_in_executor(None, cache.put, key, chunks)
