"""The words every part of the speaker shares: a request and its segments, priorities, error codes,
events and the state, the engine names. No I/O and no JSON here: the protocol adapters read and write
these (mqtt_speaker/protocol/payloads.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from mqtt_speaker import __version__

SPEED_RANGE = (0.6, 1.5)
GENERATION_VOLUME_RANGE = (0.5, 2.0)
PLAYBACK_VOLUME_RANGE = (0.0, 1.0)
DUCK_DB_RANGE = (0.0, 40.0)
MAX_TTL = 86_400.0
SOUND_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_ID_LENGTH = 128
MAX_SEGMENTS = 64
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

EngineName = Literal["cartesia", "piper", "espeak"]
# Best first: of the rooms online, one with the best engine synthesizes a broadcast the house shares.
ENGINE_PREFERENCE: tuple[EngineName, ...] = ("cartesia", "piper", "espeak")


class EngineChoice(StrEnum):
    """The `engine` setting: one of the engines, or auto (Cartesia with a key, else Piper, else espeak-ng)."""

    AUTO = "auto"
    CARTESIA = "cartesia"
    PIPER = "piper"
    ESPEAK = "espeak"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Priority).index(self)


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    INVALID_EMOTION = "invalid_emotion"
    VALUE_CLAMPED = "value_clamped"
    UNKNOWN_FIELD = "unknown_field"
    UNKNOWN_SOUND = "unknown_sound"
    START_PASSED = "start_passed"
    INVALID_COMMAND = "invalid_command"
    ERRORS_SUPPRESSED = "errors_suppressed"
    MESSAGES_DROPPED = "messages_dropped"
    RATE_LIMITED = "rate_limited"
    RETAINED_COMMAND_IGNORED = "retained_command_ignored"
    QUEUE_FULL = "queue_full"
    CARTESIA_AUTH = "cartesia_auth"
    CARTESIA_RATE_LIMITED = "cartesia_rate_limited"
    CARTESIA_UNREACHABLE = "cartesia_unreachable"
    SYNTHESIS_FAILED = "synthesis_failed"
    SYNTHESIS_TIMEOUT = "synthesis_timeout"
    SYNTHESIS_INTERRUPTED = "synthesis_interrupted"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    AUDIO_DEVICE_UNAVAILABLE = "audio_device_unavailable"
    INTERNAL_ERROR = "internal_error"
    STREAM_TIMEOUT = "stream_timeout"
    STREAM_ENDED = "stream_ended"
    STREAM_GAP = "stream_gap"
    TOO_MANY_STREAMS = "too_many_streams"
    TEXT_TOO_LONG = "text_too_long"
    INVALID_FRAME = "invalid_frame"
    CLOCK_UNSYNCHRONIZED = "clock_unsynchronized"


class Warning_(BaseModel):
    """Something odd about an accepted request, published as a warning on the error topic."""

    code: ErrorCode
    field: str
    message: str

    def report(self, request_id: str) -> ErrorReport:
        """As published: a warning about request `request_id`."""
        return ErrorReport(code=self.code, message=self.message, id=request_id, field=self.field, severity="warning")


class Segment(BaseModel):
    """A run of text spoken with one emotion, speed and generation volume (None: the defaults)."""

    model_config = ConfigDict(frozen=True)

    text: str
    emotion: str | None = None
    speed: float | None = None
    volume: float | None = None


class SayRequest(BaseModel):
    """A validated say request, ready for the queue."""

    model_config = ConfigDict(frozen=True)

    id: str
    id_given: bool = Field(default=False, description="The id came with the request (so it can repeat)")
    segments: tuple[Segment, ...]
    voice: str | None = None
    language: str | None = None
    priority: Priority = Priority.NORMAL
    ttl: float | None = Field(default=None, description="Seconds it may wait to start; None: the default")
    sent_at: float | None = Field(default=None, description="Epoch seconds it was sent, when it says")
    at: float | None = Field(default=None, description="Epoch seconds to start at, when it says")
    start_at: float | None = Field(default=None, description="When it starts (sync.start_instant); None: at once")
    sync: bool | None = Field(default=None, description="false: never synchronized; None: synchronized if broadcast")
    volume: float | None = Field(default=None, description="Playback volume 0-1 for this message only")
    chime: bool | str = False
    engine: str | None = Field(default=None, description="The engine asked for; None: the configured one")
    cache: bool = True
    duck: bool = Field(default=True, description="Lower other audio while this plays (false: leave it alone)")
    duck_db: float | None = Field(default=None, description="How far, in dB, for this request; None: the default")
    scope: str | None = Field(default=None, description="A broadcast: 'all' or 'group/<name>'; None: this room only")
    shared: str | None = Field(
        default=None, description="A broadcast whose audio the house shares: its key (one room synthesizes it)"
    )

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments)


class ErrorReport(BaseModel):
    """Published on <base>/<site>/error."""

    code: ErrorCode
    message: str
    id: str | None = None
    field: str | None = None
    severity: Literal["error", "warning"] = "error"
    ts: str = Field(default_factory=now_iso)


class EventType(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    DROPPED = "dropped"
    FAILED = "failed"


TERMINAL_EVENTS = frozenset({EventType.FINISHED, EventType.INTERRUPTED, EventType.DROPPED, EventType.FAILED})


class Event(BaseModel):
    """Published on <base>/<site>/event; every accepted request ends with exactly one terminal event."""

    event_type: EventType
    id: str
    ts: str = Field(default_factory=now_iso)


class QueuedEvent(Event):
    event_type: Literal[EventType.QUEUED] = EventType.QUEUED
    position: int
    queue_length: int
    priority: Priority


class StartedEvent(Event):
    event_type: Literal[EventType.STARTED] = EventType.STARTED
    engine: str
    emotion: str
    voice: str | None
    segments: int
    latency_ms: int = Field(description="From the request's arrival to its first audio")
    emotion_applied: bool = Field(description="False where the engine has no emotion (Piper)")
    cached: bool = Field(default=False, description="Played from the audio cache")
    fallback: bool = Field(default=False, description="Spoken by a fallback engine")
    fallback_reason: str | None = Field(default=None, description="Why the primary engine did not speak it")
    late_ms: int | None = Field(
        default=None, description="A synchronized start: how late its first sample was, 0 when on time; else None"
    )
    synthesized_by: str | None = Field(default=None, description="The room (site) whose synthesis plays")
    shared: bool = Field(default=False, description="It plays the house's shared audio of a broadcast")


class FinishedEvent(Event):
    event_type: Literal[EventType.FINISHED] = EventType.FINISHED
    duration_ms: int = Field(description="Audio actually played")
    engine: str = Field(description="The engine that spoke its end")
    fallback: bool = Field(default=False, description="A fallback engine spoke all or part of it (also mid-way)")
    fallback_reason: str | None = Field(default=None, description="Why the engine asked first did not speak it all")
    synthesized_by: list[str] = Field(
        default_factory=list, description="The rooms (sites) whose synthesis was played, in order"
    )
    shared: bool = Field(
        default=False, description="It played the house's shared audio of a broadcast, at least in part"
    )


InterruptReason = Literal["stop", "skip", "priority", "shutdown"]
DropReason = Literal["queue_full", "shutdown", "preempted", "expired", "cleared", "duplicate", "quiet", "rate_limited"]


class InterruptedEvent(Event):
    event_type: Literal[EventType.INTERRUPTED] = EventType.INTERRUPTED
    reason: InterruptReason
    by: str | None = Field(default=None, description="The id of the critical request that interrupted it")
    duration_ms: int = Field(default=0, description="Audio played before it stopped")
    stop_ms: int = Field(default=0, description="From the command's arrival to silence")


class DroppedEvent(Event):
    event_type: Literal[EventType.DROPPED] = EventType.DROPPED
    reason: DropReason


class FailedEvent(Event):
    event_type: Literal[EventType.FAILED] = EventType.FAILED
    code: ErrorCode
    message: str
    duration_ms: int = 0


class SpeakerState(StrEnum):
    IDLE = "idle"
    SPEAKING = "speaking"


class LastError(BaseModel):
    code: ErrorCode
    message: str
    ts: str


class StateReport(BaseModel):
    """Published retained on <base>/<site>/state whenever something in it changes."""

    state: SpeakerState
    queue_length: int
    current_id: str | None
    engine: str
    problem: bool
    problems: list[str] = Field(description="What is failing now: 'audio', 'tts'")
    last_error: LastError | None
    volume: int = Field(description="Default playback volume, 0-100")
    emotion: str = Field(description="Default emotion")
    voice: str = Field(description="Default voice")
    quiet: bool = Field(description="Quiet mode switched on")
    quiet_now: bool = Field(description="Requests below critical are dropped now (quiet mode or quiet hours)")
    clock_synchronized: bool | None = Field(
        default=None, description="The system clock is synchronized (NTP); None where the system cannot tell"
    )
    duck_db: float = Field(description="Other audio is lowered by this many dB while speaking (0: not at all)")
    clock_error_ms: float | None = Field(
        default=None, description="The kernel's estimate of the system clock's error (NTP), ms; None where unknown"
    )
    groups: list[str] = Field(default_factory=list, description="The speaker groups this speaker belongs to")
    shares: bool = Field(default=True, description="It takes part in broadcasts synthesized once for the house")
    version: str = __version__


class ClearCommand(BaseModel):
    """`clear`: drop queued requests (below a priority when `below` is given), and stop the current one."""

    model_config = ConfigDict(extra="forbid")

    below: Priority | None = None
    stop: StrictBool = False
