"""The native MQTT wire format: say requests, stream chunks and control payloads parsed and validated
(RequestRejected names the field), and what goes out encoded as JSON."""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from mqtt_speaker.speech.emotions import EMOTIONS, LANGUAGES
from mqtt_speaker.speech.text import NOTHING_TO_SPEAK, speakable
from mqtt_speaker.speech.vocabulary import (
    CONTROL_CHARACTERS,
    DUCK_DB_RANGE,
    GENERATION_VOLUME_RANGE,
    MAX_ID_LENGTH,
    MAX_SEGMENTS,
    MAX_TTL,
    PLAYBACK_VOLUME_RANGE,
    SOUND_NAME,
    SPEED_RANGE,
    ClearCommand,
    EngineName,
    ErrorCode,
    Priority,
    SayRequest,
    Segment,
    Warning_,
)

_T = TypeVar("_T")
MAX_WARM_ITEMS = 100  # in one cache/warm message


def encode(model: BaseModel) -> str:
    """An outgoing payload (an event, an error, the state) as JSON."""
    return model.model_dump_json(exclude_none=False)


class RequestRejected(Exception):
    """A say payload that cannot be spoken. The message names the field."""

    def __init__(self, message: str, field: str | None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.request_id = request_id


# --------------------------------------------------------------------------------------------- inbound


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true/false")
    return value


def _finite(value: float) -> float:
    """The number as a float; an integer too large for one (400 digits, say) is refused like infinity."""
    try:
        number = float(value)
    except OverflowError:
        raise ValueError("must be a finite number (this one is too large)") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


Number = Annotated[StrictFloat | StrictInt, BeforeValidator(_reject_bool), AfterValidator(_finite)]
Text = Annotated[StrictStr, Field(max_length=1_000_000)]


class _SegmentPayload(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: Text
    emotion: StrictStr | None = None
    speed: Number | None = None
    volume: Number | None = None


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be more than 0")
    return value


def _sound_name(value: bool | str) -> bool | str:
    if isinstance(value, str) and not SOUND_NAME.fullmatch(value):
        raise ValueError("must be true, false or a sound name of letters, digits, '_' or '-'")
    return value


def _timestamp(value: float | int | str) -> float:
    """Epoch seconds, or an ISO 8601 time with a zone."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError("must be epoch seconds or an ISO 8601 time such as 2026-11-25T07:00:00Z") from exc
        if moment.tzinfo is None:
            raise ValueError("must carry a time zone (for example a trailing Z)")
        return moment.timestamp()
    return float(value)


def _usable_id(value: str | int) -> str | int:
    if isinstance(value, str) and (not value.strip() or len(value) > MAX_ID_LENGTH or CONTROL_CHARACTERS.search(value)):
        raise ValueError(f"must be 1 to {MAX_ID_LENGTH} printable characters")
    if isinstance(value, int) and len(str(value)) > MAX_ID_LENGTH:
        raise ValueError(f"must be 1 to {MAX_ID_LENGTH} printable characters")
    return value


RequestId = Annotated[StrictStr | StrictInt, BeforeValidator(_reject_bool), AfterValidator(_usable_id)]


class _SayPayload(BaseModel):
    """The JSON object form of a say request, as received."""

    model_config = ConfigDict(extra="allow")

    id: RequestId | None = None
    text: Text | None = None
    segments: Annotated[list[_SegmentPayload], Field(min_length=1, max_length=MAX_SEGMENTS)] | None = None
    emotion: StrictStr | None = None
    voice: Annotated[StrictStr, Field(min_length=1, max_length=128)] | None = None
    language: StrictStr | None = None
    speed: Number | None = None
    generation_volume: Number | None = None
    volume: Number | None = None
    priority: Priority | None = None
    ttl: Annotated[Number, AfterValidator(_positive)] | None = None
    ts: Annotated[Number | StrictStr, AfterValidator(_timestamp)] | None = None
    at: Annotated[Number | StrictStr, AfterValidator(_timestamp)] | None = None
    sync: StrictBool | None = None
    chime: Annotated[bool | StrictStr, AfterValidator(_sound_name)] | None = None
    engine: EngineName | None = None
    cache: StrictBool = True
    duck: StrictBool = True
    duck_db: Number | None = None

    @field_validator("voice")
    @classmethod
    def _printable_voice(cls, value: str | None) -> str | None:
        if value is not None and CONTROL_CHARACTERS.search(value):
            raise ValueError("must not contain control characters")
        return value


class ParsedSay(BaseModel):
    request: SayRequest
    warnings: list[Warning_]


_UNION_TAGS = frozenset({"float", "int", "str", "bool"})


def _loc(loc: tuple[int | str, ...]) -> str:
    """A field path such as segments.1.speed (pydantic's union-member tags left out)."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]
    return ".".join(parts) or "payload"


def _reason(message: str) -> str:
    return message.removeprefix("Value error, ")


def _clean_text(text: str) -> str:
    """Control characters (NUL and friends) become spaces; newlines and tabs stay."""
    return CONTROL_CHARACTERS.sub(" ", text)


def _emotion(
    value: str | None, field: str, warnings: list[Warning_], *, instead: str = "the default emotion"
) -> str | None:
    """A known emotion (lower-cased), or None with a warning saying what is spoken `instead`."""
    if value is None:
        return None
    emotion = value.strip().lower()
    if emotion in EMOTIONS:
        return emotion
    warnings.append(
        Warning_(
            code=ErrorCode.INVALID_EMOTION,
            field=field,
            message=f"{field}: unknown emotion {value[:40]!r}; spoken with {instead} "
            f"(known: {', '.join(EMOTIONS[:6])}, ... {len(EMOTIONS)} in all)",
        )
    )
    return None


def _clamped(value: float | None, bounds: tuple[float, float], field: str, warnings: list[Warning_]) -> float | None:
    if value is None:
        return None
    low, high = bounds
    clamped = min(max(float(value), low), high)
    if clamped != value:
        warnings.append(
            Warning_(
                code=ErrorCode.VALUE_CLAMPED,
                field=field,
                message=f"{field}: {value} is outside {low}-{high}; {clamped} is used",
            )
        )
    return clamped


def _language(value: str | None, request_id: str | None) -> str | None:
    if value is None:
        return None
    code = value.strip().replace("_", "-").split("-")[0].lower()
    if code not in LANGUAGES:
        raise RequestRejected(
            f"language: {value[:20]!r} is not a supported language code (for example en, de, fr)",
            "language",
            request_id,
        )
    return code


def _decode(payload: bytes, max_bytes: int) -> str:
    if len(payload) > max_bytes:
        raise RequestRejected(f"payload: {len(payload)} bytes is more than the limit of {max_bytes}", "payload")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestRejected(f"payload: not valid UTF-8 ({exc.reason} at byte {exc.start})", "payload") from exc
    if not text.strip():
        raise RequestRejected("payload: empty; send the text to speak, or a JSON object with 'text'", "payload")
    return text


def _load_object(text: str) -> dict[str, Any] | None:
    """The JSON object the payload holds, or None when the payload is plain text to speak.

    Plain text is anything that does not start with '{', '[' or '"'. Numbers and words such as
    'true' are spoken as they are.
    """
    stripped = text.lstrip()
    if stripped[0] not in '{["':
        return None
    try:
        value = json.loads(stripped)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer of more than 4,300 digits
        if isinstance(exc, json.JSONDecodeError):
            reason = exc.msg
        else:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise RequestRejected(f"payload: looks like JSON but is not valid JSON ({reason})", "payload") from exc
    if not isinstance(value, dict):
        raise RequestRejected(
            f"payload: JSON {type(value).__name__} is not an object; send an object with 'text'", "payload"
        )
    return value


def _id_of(obj: dict[str, Any]) -> str | None:
    raw = obj.get("id")
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ID_LENGTH and not CONTROL_CHARACTERS.search(raw):
        return raw
    if isinstance(raw, int) and not isinstance(raw, bool) and len(str(raw)) <= MAX_ID_LENGTH:
        return str(raw)
    return None


_P = TypeVar("_P", bound=BaseModel)


def _validated(model: type[_P], obj: dict[str, Any]) -> _P:
    """The payload object as `model`, or RequestRejected naming the first bad field (and the id, if usable)."""
    try:
        return model.model_validate(obj)
    except (ValidationError, RecursionError) as exc:
        request_id = _id_of(obj)
        if isinstance(exc, RecursionError):
            raise RequestRejected("payload: nested too deeply", "payload", request_id) from exc
        first = exc.errors(include_url=False, include_input=False)[0]
        field = _loc(first["loc"])
        raise RequestRejected(f"{field}: {_reason(first['msg'])}", field, request_id) from exc


def parse_say(payload: bytes, *, max_text_length: int) -> ParsedSay:
    """Turn a say payload into a request, or raise RequestRejected naming the field."""
    text = _decode(payload, max_bytes=max(65_536, max_text_length * 8))
    obj = _load_object(text)
    if obj is None:
        obj = {"text": text}
    body = _validated(_SayPayload, obj)
    request_id = str(body.id) if body.id is not None else None
    warnings: list[Warning_] = []
    if body.at is not None and body.sync is False:
        raise RequestRejected('at: a start instant cannot be given with "sync": false', "at", request_id)

    if body.text is not None and body.segments is not None:
        raise RequestRejected("text: give either 'text' or 'segments', not both", "text", request_id)
    if body.text is None and body.segments is None:
        raise RequestRejected("text: missing; give 'text' or 'segments'", "text", request_id)

    emotion = _emotion(body.emotion, "emotion", warnings)
    speed = _clamped(body.speed, SPEED_RANGE, "speed", warnings)
    volume = _clamped(body.generation_volume, GENERATION_VOLUME_RANGE, "generation_volume", warnings)
    raw_segments = body.segments or [_SegmentPayload(text=body.text or "")]
    instead = f"the request's emotion ({emotion})" if emotion else "the default emotion"
    segments: list[Segment] = []
    for index, seg in enumerate(raw_segments):
        where = "text" if body.segments is None else f"segments.{index}.text"
        seg_text = _clean_text(seg.text)
        if not seg_text:
            raise RequestRejected(f"{where}: empty; nothing to speak", where, request_id)
        prefix = "" if body.segments is None else f"segments.{index}."
        segments.append(
            Segment(
                text=seg_text,
                emotion=_first(_emotion(seg.emotion, f"{prefix}emotion", warnings, instead=instead), emotion),
                speed=_first(_clamped(seg.speed, SPEED_RANGE, f"{prefix}speed", warnings), speed),
                volume=_first(_clamped(seg.volume, GENERATION_VOLUME_RANGE, f"{prefix}volume", warnings), volume),
            )
        )
        if seg.model_extra:
            warnings.append(_unknown(seg.model_extra, prefix=prefix))
    if not speakable("".join(s.text for s in segments)):
        field = "text" if body.segments is None else "segments"
        raise RequestRejected(f"{field}: {NOTHING_TO_SPEAK}", field, request_id)
    total = sum(len(s.text) for s in segments)
    if total > max_text_length:
        field = "text" if body.segments is None else "segments"
        raise RequestRejected(
            f"{field}: {total} characters is more than the limit of {max_text_length}", field, request_id
        )
    return ParsedSay(request=_request(body, request_id, tuple(segments), warnings), warnings=warnings)


def _request(
    body: _SayPayload, request_id: str | None, segments: tuple[Segment, ...], warnings: list[Warning_]
) -> SayRequest:
    """The request a validated say payload (or a stream's opening chunk) asks for."""
    if body.model_extra:
        warnings.append(_unknown(body.model_extra, prefix=""))
    return SayRequest(
        id=request_id or uuid.uuid4().hex,
        id_given=request_id is not None,
        segments=segments,
        voice=body.voice,
        language=_language(body.language, request_id),
        priority=body.priority or Priority.NORMAL,
        ttl=min(float(body.ttl), MAX_TTL) if body.ttl is not None else None,
        sent_at=float(body.ts) if body.ts is not None else None,
        at=float(body.at) if body.at is not None else None,
        sync=body.sync,
        volume=_clamped(body.volume, PLAYBACK_VOLUME_RANGE, "volume", warnings),
        chime=body.chime if body.chime is not None else False,
        engine=body.engine,
        cache=body.cache,
        duck=body.duck,
        duck_db=_clamped(body.duck_db, DUCK_DB_RANGE, "duck_db", warnings),
    )


class _ChunkOwn(BaseModel):
    """A stream chunk's own fields, as received: these are checked on every chunk."""

    id: RequestId | None = None
    seq: Annotated[StrictInt, BeforeValidator(_reject_bool), Field(ge=0)] | None = None
    text: Text | None = None
    emotion: StrictStr | None = None
    end: StrictBool = False


class _ChunkPayload(_SayPayload):
    """One chunk of a streamed say, as received (the opening one may carry the say fields)."""

    seq: Annotated[StrictInt, BeforeValidator(_reject_bool), Field(ge=0)] | None = None
    end: StrictBool = False


class Refusal(BaseModel):
    """Why a chunk's say fields cannot open a stream (a later chunk of an open stream ignores them)."""

    message: str
    field: str | None


class StreamChunk(BaseModel):
    """A validated chunk: text to append to stream `id` (with `emotion` from here on), `end` the last."""

    id: str
    seq: int | None
    text: str
    emotion: str | None
    end: bool
    request: SayRequest | Refusal = Field(
        description="The say fields, for when the chunk opens its stream; or why they cannot open it"
    )
    say_fields: list[str] = Field(description="The say fields the chunk gave (beyond id, seq, text, emotion, end)")
    warnings: list[Warning_] = Field(default_factory=list, description="About the chunk itself (its emotion)")
    opening_warnings: list[Warning_] = Field(
        default_factory=list, description="About its say fields: they matter only when the chunk opens its stream"
    )


def parse_chunk(payload: bytes, *, max_text_length: int) -> StreamChunk:
    """Turn a say/stream payload into a chunk, or raise RequestRejected naming the field. Only the chunk's
    own fields (id, seq, text, emotion, end) refuse it: its say fields matter only if it opens its stream,
    so a problem with them is kept as its `request`'s Refusal (the stream is not opened) and is moot on a
    later chunk."""
    text = _decode(payload, max_bytes=max(65_536, max_text_length * 8))
    obj = _load_object(text)
    if obj is None:
        raise RequestRejected('payload: not a JSON object; send {"id": ..., "seq": ..., "text": ...}', "payload")
    own = _validated(_ChunkOwn, obj)
    if own.id is None:
        raise RequestRejected("id: missing; every chunk of a stream carries the stream's id", "id")
    request_id = str(own.id)
    if "segments" in obj:
        raise RequestRejected(
            "segments: not used in a stream; send 'text' (and 'emotion') per chunk", "segments", request_id
        )
    warnings: list[Warning_] = []
    emotion = _emotion(own.emotion, "emotion", warnings, instead="the stream's emotion so far (at first, the default)")
    chunk_text = _clean_text(own.text or "")
    say_fields = sorted(set(obj) & set(_SayPayload.model_fields) - {"id", "text", "emotion"})
    opening: list[Warning_] = []
    try:
        body = _validated(_ChunkPayload, obj)
        segment = Segment(
            text=chunk_text,
            emotion=emotion,
            speed=_clamped(body.speed, SPEED_RANGE, "speed", opening),
            volume=_clamped(body.generation_volume, GENERATION_VOLUME_RANGE, "generation_volume", opening),
        )
        request: SayRequest | Refusal = _request(body, request_id, (segment,), opening)
    except RequestRejected as exc:
        request = Refusal(message=exc.message, field=exc.field)
    return StreamChunk(
        id=request_id,
        seq=own.seq,
        text=chunk_text,
        emotion=emotion,
        end=own.end,
        request=request,
        say_fields=say_fields,
        warnings=warnings,
        opening_warnings=opening,
    )


def _first(value: _T | None, default: _T | None) -> _T | None:
    return default if value is None else value


def _unknown(extra: dict[str, Any], prefix: str) -> Warning_:
    names = ", ".join(f"{prefix}{name}" for name in sorted(extra)[:10])
    return Warning_(code=ErrorCode.UNKNOWN_FIELD, field=names, message=f"{names}: unknown field, ignored")


def _control_text(payload: bytes, topic_leaf: str) -> str:
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise RequestRejected(f"{topic_leaf}: not valid UTF-8", topic_leaf) from exc


def parse_clear(payload: bytes) -> ClearCommand:
    """Empty, PRESS (Home Assistant's button) or any plain word: clear everything; JSON: see ClearCommand."""
    text = _control_text(payload, "clear")
    if not text.startswith("{"):
        return ClearCommand()
    try:
        return ClearCommand.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = _loc(first["loc"])
        raise RequestRejected(f"{field}: {_reason(first['msg'])}", field) from exc


def parse_volume(payload: bytes) -> int:
    """0-100 (Home Assistant's number entity may send 75.0)."""
    text = _control_text(payload, "volume")
    try:
        value = float(text)
    except ValueError:
        raise RequestRejected(f"volume: {text[:20]!r} is not a number from 0 to 100", "volume") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise RequestRejected(f"volume: {text[:20]} is not from 0 to 100", "volume")
    return round(value)


def parse_duck_db(payload: bytes) -> float:
    """set/duck_db: 0-40 dB (0 turns ducking off)."""
    text = _control_text(payload, "duck_db")
    low, high = DUCK_DB_RANGE
    try:
        value = float(text)
    except ValueError:
        raise RequestRejected(f"duck_db: {text[:20]!r} is not a number of dB from 0 to 40", "duck_db") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise RequestRejected(f"duck_db: {text[:20]} is not from 0 to 40", "duck_db")
    return round(value, 1)


def parse_quiet(payload: bytes) -> bool:
    text = _control_text(payload, "quiet").lower()
    if text in ("on", "true", "1"):
        return True
    if text in ("off", "false", "0"):
        return False
    raise RequestRejected(f"quiet: {text[:20]!r} is not ON or OFF", "quiet")


def parse_emotion(payload: bytes) -> str:
    text = _control_text(payload, "emotion").lower()
    if text not in EMOTIONS:
        raise RequestRejected(f"emotion: {text[:40]!r} is not one of Cartesia's {len(EMOTIONS)} emotions", "emotion")
    return text


def parse_voice(payload: bytes) -> str:
    text = _control_text(payload, "voice")
    if not text or len(text) > 128 or CONTROL_CHARACTERS.search(text):
        raise RequestRejected("voice: must be 1 to 128 printable characters", "voice")
    return text


def parse_warm(payload: bytes, *, max_text_length: int) -> list[SayRequest]:
    """cache/warm: a JSON list whose items are texts or say request objects."""
    try:
        items = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise RequestRejected("warm: not valid JSON; send a list of texts or say requests", "warm") from exc
    if not isinstance(items, list) or not items:
        raise RequestRejected("warm: send a non-empty JSON list of texts or say requests", "warm")
    if len(items) > MAX_WARM_ITEMS:
        raise RequestRejected(
            f"warm: {len(items)} items is more than {MAX_WARM_ITEMS} in one message; nothing was warmed "
            "(send the rest in further messages)",
            "warm",
        )
    requests = []
    for index, item in enumerate(items):
        try:
            raw = item.encode() if isinstance(item, str) else json.dumps(item).encode()
            requests.append(parse_say(raw, max_text_length=max_text_length).request)
        except RequestRejected as exc:
            raise RequestRejected(f"warm.{index}.{exc.message}", f"warm.{index}.{exc.field}") from exc
    return requests
