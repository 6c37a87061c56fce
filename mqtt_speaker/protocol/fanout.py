"""One voice for the whole house: a broadcast (all/say, group/<name>/say and their streams) is synthesized
once, by one room, and every room that takes it plays that same audio, placed at the broadcast's shared
instant on its own sound device's clock (docs/sync.md).

Who synthesizes: every room chooses the same room, with no election traffic, from what every room
already publishes retained (its availability, and in its state its engine, its groups and whether it
shares): among the rooms that take broadcasts of that scope, are online and share, those whose engine
is best (Cartesia, then Piper, then espeak-ng), and of those the one the broadcast's key ranks first
(rendezvous hashing: a room that comes or goes moves only the broadcasts it ranked first for). A room
whose view differs for a moment (one just started) still plays: it takes the frames of whichever room
announced the broadcast, and a room that gets no audio in time speaks the broadcast itself.

Transport, on the broker every room already uses: <base>/all/shared/<key>/start (JSON: who synthesizes,
with what, the request; retained while the broadcast lasts, so that a room that comes mid-broadcast can
join what is still to come) and <base>/all/shared/<key>/audio (binary frames, never retained: a header
with the sequence number, the sample position, the rate, the segment and how much of its text the audio
so far covers, then 16-bit PCM at 24 kHz). A frame that cannot be read, is too large, or belongs to
another synthesis is answered with `invalid_frame` on the error topic.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ValidationError

from mqtt_speaker.core.broadcast import Broadcaster
from mqtt_speaker.core.shared import Frame, Origin, SharedHub
from mqtt_speaker.core.speaker import Speaker
from mqtt_speaker.engines.base import Voicing
from mqtt_speaker.playback.output import Playback, Played, Stopped, next_chunk
from mqtt_speaker.playback.pcm import Feed
from mqtt_speaker.protocol.adapter import BaseAdapter
from mqtt_speaker.protocol.link import Inbound, MqttLink
from mqtt_speaker.protocol.topics import ONLINE, Topics
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.audio import AudioChunk, Pcm
from mqtt_speaker.speech.text import LiveText
from mqtt_speaker.speech.vocabulary import ENGINE_PREFERENCE, ErrorCode, ErrorReport, Event, EventType, SayRequest

LOG = logging.getLogger(__name__)
RATE = 24_000  # the shared audio's rate: Cartesia's speech at 24 kHz (48 kB/s of PCM)
FRAME_SAMPLES = 4_800  # 0.2 s: the most one frame carries
# magic, kind, seq, position, rate, segment, spoken (-1: unknown), due (epoch seconds, 0: not synchronized), take
HEADER = struct.Struct("<4sBIQIhid16s")
MAGIC = b"MSA1"
AUDIO, ALIVE, END, ABORT = 0, 1, 2, 3  # frame kinds
MAX_FRAME = HEADER.size + FRAME_SAMPLES * 2
HEARTBEAT = 0.5  # seconds between two heartbeats while a synthesis runs (a live stream may pause)
FIRST_MARGIN = 0.15  # seconds before the instant by which the first frame must be in, or a room speaks itself
MAX_ROOMS = 256  # rooms of the house remembered
JOIN_MARGIN = 0.3  # seconds: a room that joins mid-broadcast starts with the first frame due this far ahead
LATE_MARGIN = 0.3  # seconds: audio that comes after the instant is due this long after it is sent, in every room


class SharedStart(BaseModel):
    """<base>/all/shared/<key>/start: a broadcast synthesized once for the house."""

    key: str
    take: str  # this synthesis (a frame of another one is not played)
    site: str  # the room that synthesizes
    scope: str  # 'all' or 'group/<name>'
    request: SayRequest
    engine: str
    identity: str
    voice: str
    emotion: str
    language: str
    rate: int

    @property
    def origin(self) -> Origin:
        voicing = Voicing(emotion=self.emotion, voice=self.voice, language=self.language)
        return Origin(self.site, self.engine, self.identity, voicing, self.rate)


@dataclass
class _Room:
    online: bool = False
    engine: str | None = None
    groups: tuple[str, ...] = ()
    shares: bool = False  # a room of a version before shared broadcasts never synthesizes for the house


@dataclass
class _Known:
    """A broadcast this room heard of: its start, and whether this room plays it."""

    start: SharedStart | None = None
    playing: bool = False
    joining: SharedStart | None = None  # it started before this room came: join at the next frame due
    takes: set[str] = field(default_factory=set)


def key_of(scope: str, request: SayRequest, message: bytes | None) -> str:
    """The same in every room: from the request's id when it has one, else from the message itself."""
    what = request.id if request.id_given or message is None else hashlib.sha256(message).hexdigest()
    return hashlib.sha256(f"{scope}\0{what}".encode()).hexdigest()[:16]


def encode_frame(
    kind: int, seq: int, take: bytes, frame: Frame | None = None, covered: tuple[int, int] = (0, 0)
) -> bytes:
    if frame is None:
        segment, spoken = covered
        return HEADER.pack(MAGIC, kind, seq, 0, RATE, segment, spoken, 0.0, take)
    spoken = -1 if frame.spoken is None else frame.spoken
    due = frame.due or 0.0
    header = HEADER.pack(MAGIC, kind, seq, frame.position, frame.rate, frame.segment, spoken, due, take)
    return header + frame.samples.astype("<i2").tobytes()


def decode_frame(payload: bytes) -> tuple[int, bytes, Frame]:
    """(kind, take, frame) of an audio-topic payload; ValueError saying what is wrong with it."""
    if len(payload) > MAX_FRAME:
        raise ValueError(f"{len(payload)} bytes, more than a frame may have ({MAX_FRAME})")
    if len(payload) < HEADER.size or (len(payload) - HEADER.size) % 2:
        raise ValueError(f"{len(payload)} bytes is not a frame")
    magic, kind, seq, position, rate, segment, spoken, due, take = HEADER.unpack_from(payload)
    if magic != MAGIC or kind not in (AUDIO, ALIVE, END, ABORT):
        raise ValueError("not a frame of this version")
    if rate != RATE:
        raise ValueError(f"rate {rate}, not {RATE}")
    samples = np.frombuffer(payload, dtype="<i2", offset=HEADER.size).astype(np.int16)
    return kind, take, Frame(seq, position, rate, segment, None if spoken < 0 else spoken, samples, due or None)


class House(BaseAdapter):
    """The house's rooms as they say they are, the broadcasts this room shares, and their frames."""

    def __init__(  # noqa: PLR0913 - the parts it joins
        self,
        settings: Settings,
        topics: Topics,
        speaker: Speaker,
        link: MqttLink,
        hub: SharedHub,
        broadcaster: Broadcaster,
        report: Callable[[ErrorReport], None],
    ) -> None:
        self._settings = settings
        self._report = report
        self._topics = topics
        self._speaker = speaker
        self._link = link
        self._hub = hub
        self._broadcaster = broadcaster
        self._rooms: dict[str, _Room] = {}
        self._known: dict[str, _Known] = {}  # by key (bounded like the hub)
        self._stopped = False

    # ------------------------------------------------------------------------------ subscriptions

    def subscriptions(self) -> list[str]:
        return [*self._topics.house, self._topics.shared] if self._settings.sync.share else []

    def on_message(self, message: Inbound) -> bool:
        if (room := self._topics.room_of(message.topic)) is not None:
            self._on_room(*room, message.payload)
            return False  # the native topics may want it too (it is never one of theirs: harmless)
        if (shared := self._topics.parse_shared(message.topic)) is None:
            return False
        key, kind = shared
        if kind == "start":
            self._on_start(key, message)
        else:
            self._on_audio(key, message.payload)
        return True

    def _on_room(self, site: str, kind: str, payload: bytes) -> None:
        if site not in self._rooms and len(self._rooms) >= MAX_ROOMS:
            return
        room = self._rooms.setdefault(site, _Room())
        if kind == "availability":
            room.online = payload.strip() == ONLINE.encode()
            if not room.online:
                self._hub.lose_from(site, f"the synthesizing room {site} went offline")
            return
        try:
            state = _RoomState.model_validate_json(payload)
        except ValidationError:
            return  # not a state this version reads: the room does not synthesize for the house
        room.engine, room.groups, room.shares = state.engine, tuple(state.groups), state.shares

    # ------------------------------------------------------------------------------ a broadcast comes

    def share(self, request: SayRequest, text: LiveText, message: bytes | None) -> SayRequest:
        """A broadcast this room takes (its scope is set): shared when the house shares it, and synthesized
        here for the house when this room is the one chosen."""
        scope = request.scope
        if not self._settings.sync.share or scope is None or self._stopped:
            return request
        key = key_of(scope, request, message)
        shared = request.model_copy(update={"shared": key, "id": request.id if request.id_given else f"b-{key}"})
        audio = self._hub.get(key)
        now = time.time()
        due = shared.start_at - FIRST_MARGIN if shared.start_at is not None else now + self._settings.sync.lead
        audio.first_by = time.monotonic() + max(FIRST_MARGIN, due - now)
        known = self._know(key)
        known.playing = True
        synthesizer = self._choose(key, scope)
        LOG.info("broadcast %s (%s): synthesized by %s", shared.id, key, synthesizer)
        if synthesizer == self._settings.site:
            voicing = self._speaker.voice.voicing(shared)
            start = SharedStart(
                key=key,
                take=uuid.uuid4().hex,
                site=synthesizer,
                scope=scope,
                request=shared,
                engine="",
                identity="",
                voice=voicing.voice,
                emotion=voicing.emotion,
                language=voicing.language,
                rate=RATE,
            )
            known.takes.add(start.take)
            output = _FrameOutput(self._link, self._topics, self._hub, synthesizer, start)
            if not self._broadcaster.synthesize(shared, text, output):
                self._hub.forget(key)
                return request.model_copy(update={"id": shared.id})  # each room speaks it itself
        return shared

    def _choose(self, key: str, scope: str) -> str:
        me = self._settings.site
        rooms = {
            site: room for site, room in self._rooms.items() if room.online and room.shares and _takes(room, scope)
        }
        rooms[me] = _Room(True, self._speaker.engine_in_use(), tuple(self._settings.sync.groups), True)

        def rank(site: str) -> tuple[int, str]:
            engine = rooms[site].engine
            preference = ENGINE_PREFERENCE.index(engine) if engine in ENGINE_PREFERENCE else len(ENGINE_PREFERENCE)
            return -preference, hashlib.sha256(f"{key}/{site}".encode()).hexdigest()

        return max(rooms, key=rank)

    def _know(self, key: str) -> _Known:
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = _Known()
            while len(self._known) > 64:
                self._known.pop(next(iter(self._known)))
        return known

    def stop_scope(self, scope: str) -> None:
        """A stop for every room of `scope`: the syntheses for it stop too."""
        self._broadcaster.stop(scope)

    # ------------------------------------------------------------------------------ its audio

    def _on_start(self, key: str, message: Inbound) -> None:
        if not message.payload:
            return  # cleared: it has ended
        try:
            start = SharedStart.model_validate_json(message.payload)
            if start.key != key or start.rate != RATE:
                raise ValueError("its key or rate does not match its topic")
        except (ValidationError, ValueError) as exc:
            self._invalid(key, f"a start message that cannot be read: {str(exc).splitlines()[0]}")
            return
        known = self._know(key)
        if known.start is not None and known.start.take != start.take and start.site != self._settings.site:
            LOG.info("broadcast %s: a second synthesis, by %s, is not the one played", key, start.site)
            return
        known.start = start
        self._hub.get(key).announce(start.origin)
        if message.retain and not known.playing:
            self._join(known, start)

    def _join(self, known: _Known, start: SharedStart) -> None:
        """A broadcast that began before this room was there: if this room takes it and its synthesizing
        room is still there, join what is still to come, at its place."""
        room = self._rooms.get(start.site)
        mine = start.scope == "all" or start.scope.removeprefix("group/") in self._settings.sync.groups
        if mine and room is not None and room.online and start.request.start_at is not None:
            LOG.info("broadcast %s is under way: joining the rest of it", start.request.id)
            known.joining = start

    def _on_audio(self, key: str, payload: bytes) -> None:
        known = self._known.get(key)
        try:
            kind, take, frame = decode_frame(payload)
        except ValueError as exc:
            self._invalid(key, f"a frame that cannot be read: {exc}")
            return
        if known is None or take.hex() in known.takes:
            return  # not a broadcast this room takes, or this room's own frames (played from the source)
        if known.start is not None and take.hex() != known.start.take:
            self._invalid(key, "a frame of another synthesis than the one announced")
            return
        if known.joining is not None and kind == AUDIO and not self._joined(key, known, frame):
            return
        audio = self._hub.get(key)
        if kind == AUDIO:
            audio.put(frame)
        elif kind == ALIVE:
            audio.alive()
        elif kind == END:
            audio.end(frame.seq)
        else:
            audio.lose("the synthesizing room gave up")

    def _joined(self, key: str, known: _Known, frame: Frame) -> bool:
        """Joining: the first frame due far enough ahead is where this room starts (earlier ones are past)."""
        start = known.joining
        assert start is not None
        due = frame.due
        if due is None or due < time.time() + JOIN_MARGIN:
            return False
        known.joining, known.playing = None, True
        audio = self._hub.get(key)
        audio.announce(start.origin)
        audio.skip_to(frame.seq)
        request = start.request.model_copy(update={"start_at": due})
        self._speaker.submit(request, None)
        return True

    def _invalid(self, key: str, message: str) -> None:
        self._report(ErrorReport(code=ErrorCode.INVALID_FRAME, message=f"broadcast {key}: {message}"))

    async def stop(self) -> None:
        self._stopped = True
        await self._broadcaster.close()


class _RoomState(BaseModel):
    """What the house reads of a room's retained state."""

    engine: str
    groups: list[str] = []
    shares: bool = False


def _takes(room: _Room, scope: str) -> bool:
    return scope == "all" or scope.removeprefix("group/") in room.groups


class _FrameOutput:
    """The synthesizing room's output for one broadcast: its audio as frames to every room (this one
    through its own hub, the others over the broker), heartbeats while it runs, and its end."""

    sample_rate = RATE

    def __init__(self, link: MqttLink, topics: Topics, hub: SharedHub, site: str, start: SharedStart) -> None:
        self._link = link
        self._topics = topics
        self._hub = hub
        self._site = site
        self._start = start  # announced (again) whenever the engine whose audio it is changes
        self._key = start.key
        self.take = bytes.fromhex(start.take)
        self._seq = 0
        self._position = 0
        self._covered = (0, 0)
        self._announced: tuple[str, str] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._start_at: float | None = None  # when its first sample is heard in every room, once known

    def _publish(self, payload: bytes) -> None:
        self._link.publish(self._topics.shared_topic(self._key, "audio"), payload)

    def _announce(self, playback: Playback) -> None:
        """The start message, retained: who synthesizes, with what (again, when a fallback takes over)."""
        if self._announced == (playback.engine, playback.identity):
            return
        self._announced = (playback.engine, playback.identity)
        self._start = self._start.model_copy(update={"engine": playback.engine, "identity": playback.identity})
        self._hub.get(self._key).announce(self._start.origin)
        self._link.publish(self._topics.shared_topic(self._key, "start"), self._start.model_dump_json(), retain=True)

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        self._announce(playback)
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat())
        stopping = asyncio.ensure_future(playback.stop.wait())
        feed = Feed(RATE, 1.0)
        played = 0
        announced = False
        try:
            while (chunk := await next_chunk(chunks, stopping)) is not None:
                for samples in feed(chunk):
                    played += self._send(samples, chunk.segment, None)
                if chunk.spoken is not None:
                    self._covered = (chunk.segment, chunk.spoken)
                    self._send(np.zeros(0, dtype=np.int16), chunk.segment, chunk.spoken)
                if chunk.samples.size and chunk.is_speech and not announced:
                    announced = True
                    playback.on_first_audio()
            played += self._send(feed.end(), self._covered[0], None)
        except Stopped:
            return Played(played / RATE, interrupted=True)
        finally:
            stopping.cancel()
        return Played(played / RATE)

    def _send(self, samples: Pcm, segment: int, spoken: int | None) -> int:
        """Frames of at most FRAME_SAMPLES (the progress on the last one); the samples sent."""
        pieces = [samples[i : i + FRAME_SAMPLES] for i in range(0, samples.size, FRAME_SAMPLES)] or [samples]
        audio = self._hub.get(self._key)
        for index, piece in enumerate(pieces):
            if not piece.size and spoken is None:
                continue
            due = self._due()
            progress = spoken if index == len(pieces) - 1 else None
            frame = Frame(self._seq, self._position, RATE, segment, progress, piece, due)
            self._publish(encode_frame(AUDIO, self._seq, self.take, frame))
            audio.put(frame)  # this room plays them from its hub, not over the broker
            self._seq += 1
            self._position += piece.size
        return samples.size

    def _due(self) -> float | None:
        """When the next frame's first sample is heard in every room: the broadcast's instant, or, for audio
        that comes too late for it (a slow synthesis), a little after its first frame is sent."""
        instant = self._start.request.start_at
        if instant is None:
            return None
        if self._start_at is None:
            self._start_at = max(instant, time.time() + LATE_MARGIN)
            if self._start_at > instant:
                LOG.info("broadcast %s: its audio came late; every room starts it %.0f ms after its instant",
                         self._key, (self._start_at - instant) * 1000)  # fmt: skip
        return self._start_at + self._position / RATE

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            self._publish(encode_frame(ALIVE, self._seq, self.take))
            self._hub.get(self._key).alive()  # this room's own playback waits for a slow engine as the others do

    def ended(self, event: Event) -> None:
        """The synthesis ended: its end (or, when it did not finish, that the rooms take over from what the
        frames covered); the start message is cleared."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        kind = END if event.event_type is EventType.FINISHED else ABORT
        self._publish(encode_frame(kind, self._seq, self.take, covered=self._covered))
        audio = self._hub.get(self._key)
        if kind == END:
            audio.end(self._seq)
        else:
            audio.lose(f"the synthesis for the house ended {event.event_type}")
        self._link.publish(self._topics.shared_topic(self._key, "start"), "", retain=True)

    async def close(self) -> None:
        """Nothing is held."""
