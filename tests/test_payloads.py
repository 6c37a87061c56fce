"""The say-request parser: what it accepts, how it refuses, and that nothing else ever escapes it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_speaker.protocol.payloads import RequestRejected, parse_say
from mqtt_speaker.protocol.topics import Command, Topics
from mqtt_speaker.speech.vocabulary import ErrorCode

LIMIT = 2000


def parse(payload: bytes | str) -> Any:
    return parse_say(payload.encode() if isinstance(payload, str) else payload, max_text_length=LIMIT)


def test_plain_text_is_the_text() -> None:
    request = parse("Dinner is ready").request
    assert request.text == "Dinner is ready" and len(request.id) == 32


def test_the_seed_example() -> None:
    payload = {"segments": [{"text": "Well maybe if you just "}, {"text": "loosen up a little!", "emotion": "angry"}]}
    parsed = parse(json.dumps(payload))
    first, second = parsed.request.segments
    assert (first.text, first.emotion) == ("Well maybe if you just ", None)
    assert (second.text, second.emotion) == ("loosen up a little!", "angry")
    assert parsed.warnings == []


def test_request_level_values_are_defaults_for_segments() -> None:
    payload = {"id": "x", "emotion": "calm", "speed": 1.2, "segments": [{"text": "a"}, {"text": "b", "emotion": "sad"}]}
    a, b = parse(json.dumps(payload)).request.segments
    assert (a.emotion, a.speed, b.emotion, b.speed) == ("calm", 1.2, "sad", 1.2)


def test_numbers_and_words_are_spoken_as_text() -> None:
    assert parse("42").request.text == "42"
    assert parse("true").request.text == "true"


def test_emotions_are_case_insensitive_and_unknown_ones_warn() -> None:
    assert parse('{"text": "a", "emotion": "Angry"}').request.segments[0].emotion == "angry"
    parsed = parse('{"id": "w", "text": "a", "emotion": "grumpy"}')
    assert parsed.request.segments[0].emotion is None
    (warning,) = parsed.warnings
    assert warning.code is ErrorCode.INVALID_EMOTION and warning.field == "emotion"


def test_out_of_range_values_are_clamped_with_a_warning() -> None:
    parsed = parse('{"segments": [{"text": "a", "speed": 0.1, "volume": 5}]}')
    segment = parsed.request.segments[0]
    assert (segment.speed, segment.volume) == (0.6, 2.0)
    assert [w.field for w in parsed.warnings] == ["segments.0.speed", "segments.0.volume"]


def test_unknown_fields_are_ignored_with_a_warning() -> None:
    (warning,) = parse('{"text": "a", "colour": "blue"}').warnings
    assert warning.code is ErrorCode.UNKNOWN_FIELD and warning.field == "colour"


def test_control_characters_become_spaces() -> None:
    assert parse('{"text": "a\\u0000b\\nc"}').request.text == "a b\nc"


def test_languages_are_normalised() -> None:
    assert parse('{"text": "a", "language": "en_GB"}').request.language == "en"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"", "payload"),
        (b"\x80abc", "payload"),
        (b"[]", "payload"),
        (b"{bad json", "payload"),
        (b"[" * 5000 + b"]" * 5000, "payload"),
        (b'{"text": null}', "text"),
        (b'{"text": "a", "id": ""}', "id"),
        (b'{"text": "a", "id": true}', "id"),
        (b'{"text": "a", "speed": NaN}', "speed"),
        (b'{"text": "a", "volume": true}', "volume"),
        (b'{"segments": [{"text": ""}]}', "segments.0.text"),
        (b'{"segments": "abc"}', "segments"),
        (b'{"text": "a", "voice": ""}', "voice"),
        (json.dumps({"text": "a" * (LIMIT + 1)}).encode(), "text"),
        (b"x" * 100_000, "payload"),
    ],
)
def test_refusals_name_the_field(payload: bytes, field: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        parse(payload)
    assert caught.value.field == field
    assert caught.value.message.startswith(f"{field}: ")


def test_the_request_id_is_kept_in_refusals_when_it_is_readable() -> None:
    with pytest.raises(RequestRejected) as caught:
        parse('{"id": 17, "text": ""}')
    assert caught.value.request_id == "17"


# ----------------------------------------------------------------------------------------- property

EDGE_TEXT = st.text(
    alphabet=st.sampled_from(["a", " ", "\u200f", "\u200b", "\u0000", "😀", "\ufeff", "\\", '"', "é", "\n"]),
    max_size=50,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | EDGE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["id", "text", "segments", "emotion", "voice", "language", "speed", "volume"]
REQUESTS = st.dictionaries(st.sampled_from([*FIELDS, "other"]), JSON_VALUES, max_size=6) | st.builds(
    lambda segs, extra: {"segments": segs, **extra},
    st.lists(st.dictionaries(st.sampled_from(["text", "emotion", "speed", "volume", "x"]), JSON_VALUES), max_size=4),
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=3),
)


def _nested(depth: int) -> bytes:
    return ('{"text": ' * depth + '"x"' + "}" * depth).encode()


PAYLOADS = (
    st.binary(max_size=300)
    | EDGE_TEXT.map(str.encode)
    | REQUESTS.map(lambda d: json.dumps(d).encode())
    | st.integers(min_value=1, max_value=3000).map(_nested)
    | st.integers(min_value=0, max_value=5000).map(lambda n: json.dumps({"text": "é" * n}).encode())
)


@pytest.mark.fault
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PAYLOADS)
def test_the_parser_only_ever_raises_its_own_error_naming_a_field(payload: bytes) -> None:
    try:
        parsed = parse(payload)
    except RequestRejected as exc:
        assert exc.field
        assert exc.message.startswith(f"{exc.field}: ")
        return
    request = parsed.request
    assert request.segments and request.text.strip()
    assert len(request.text) <= LIMIT
    for warning in parsed.warnings:
        assert warning.message.startswith(warning.field.split(", ")[0])


def test_topic_layout() -> None:
    topics = Topics("mqtt-speaker", "kitchen")
    subscriptions = topics.command_subscriptions()
    assert "mqtt-speaker/kitchen/say" in subscriptions and "mqtt-speaker/all/say" in subscriptions
    assert "mqtt-speaker/kitchen/set/volume" in subscriptions and "mqtt-speaker/all/clear" in subscriptions
    assert topics.homeassistant_status == "homeassistant/status" and "mqtt-speaker/kitchen/cache/warm" in subscriptions
    assert "mqtt-speaker/kitchen/say/stream" in subscriptions and "mqtt-speaker/all/say/stream" in subscriptions
    assert "mqtt-speaker/kitchen/set/duck_db" in subscriptions and "mqtt-speaker/all/set/mute" in subscriptions
    assert len(subscriptions) == 26  # 13 commands, for this site and for all
    assert (topics.availability, topics.state, topics.event, topics.error) == (
        "mqtt-speaker/kitchen/availability",
        "mqtt-speaker/kitchen/state",
        "mqtt-speaker/kitchen/event",
        "mqtt-speaker/kitchen/error",
    )
    assert topics.parse_command("mqtt-speaker/all/say") is Command.SAY
    assert topics.parse_command("mqtt-speaker/kitchen/say/stream") is Command.SAY_STREAM
    assert topics.parse_command("mqtt-speaker/hall/say") is None
    assert topics.parse_command("mqtt-speaker/kitchen/state") is None
    assert topics.parse_command("mqtt-speaker/kitchen/set/quiet") is Command.SET_QUIET
    assert topics.parse_command("mqtt-speaker/all/set/nothing") is None
