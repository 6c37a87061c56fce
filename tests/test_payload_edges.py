"""The parser keeps its promises at the edges: huge integer ids, the id length limit, numbers past a float."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from mqtt_speaker.protocol.payloads import (
    Refusal,
    RequestRejected,
    parse_chunk,
    parse_duck_db,
    parse_say,
    parse_volume,
    parse_warm,
)
from mqtt_speaker.speech.vocabulary import MAX_ID_LENGTH


def test_an_integer_id_of_thousands_of_digits_is_an_invalid_request() -> None:
    payload = b'{"text": "hi", "id": ' + b"9" * 5000 + b"}"
    with pytest.raises(RequestRejected) as caught:
        parse_say(payload, max_text_length=2000)
    assert caught.value.field == "payload"


def test_an_integer_id_obeys_the_id_length_limit() -> None:
    payload = b'{"text": "hi", "id": ' + b"7" * (MAX_ID_LENGTH + 1) + b"}"
    with pytest.raises(RequestRejected) as caught:
        parse_say(payload, max_text_length=2000)
    assert caught.value.field == "id"
    assert caught.value.request_id is None


def test_an_integer_id_within_the_limit_is_kept_as_text() -> None:
    payload = b'{"text": "hi", "id": ' + b"7" * MAX_ID_LENGTH + b"}"
    assert parse_say(payload, max_text_length=2000).request.id == "7" * MAX_ID_LENGTH


HUGE = "1" + "0" * 400  # an integer too large for a float

SAY_NUMBERS = ["speed", "volume", "generation_volume", "ttl", "ts", "at", "duck_db"]


@pytest.mark.parametrize("field", SAY_NUMBERS)
def test_a_number_too_large_for_a_float_is_an_invalid_request_naming_the_field(field: str) -> None:
    with pytest.raises(RequestRejected) as caught:
        parse_say(f'{{"id": "big", "text": "hi", "{field}": {HUGE}}}'.encode(), max_text_length=2000)
    assert caught.value.field == field
    assert "finite" in caught.value.message
    assert caught.value.request_id == "big"


@pytest.mark.parametrize("field", ["speed", "volume"])
def test_a_segment_number_too_large_for_a_float_names_the_segment_field(field: str) -> None:
    payload = f'{{"segments": [{{"text": "a"}}, {{"text": "b", "{field}": -{HUGE}}}]}}'
    with pytest.raises(RequestRejected) as caught:
        parse_say(payload.encode(), max_text_length=2000)
    assert caught.value.field == f"segments.1.{field}"


@pytest.mark.parametrize("field", SAY_NUMBERS)
def test_a_stream_chunk_with_a_number_too_large_cannot_open_its_stream_naming_the_field(field: str) -> None:
    chunk = parse_chunk(f'{{"id": "s", "seq": 0, "text": "hi", "{field}": {HUGE}}}'.encode(), max_text_length=2000)
    assert isinstance(chunk.request, Refusal)
    assert chunk.request.field == field and "finite" in chunk.request.message


@pytest.mark.parametrize("field", ["speed", "ttl", "duck_db"])
def test_a_cache_warm_item_with_a_number_too_large_is_refused_naming_the_item_and_field(field: str) -> None:
    payload = f'["fine", {{"text": "hi", "{field}": {HUGE}}}]'
    with pytest.raises(RequestRejected) as caught:
        parse_warm(payload.encode(), max_text_length=2000)
    assert caught.value.field == f"warm.1.{field}"


@pytest.mark.parametrize("parse", [parse_volume, parse_duck_db])
@pytest.mark.parametrize("text", [HUGE, f"-{HUGE}", "1e400", "nan"])
def test_a_set_command_with_a_number_too_large_is_refused(parse: Callable[[bytes], float], text: str) -> None:
    with pytest.raises(RequestRejected):
        parse(text.encode())


@pytest.mark.parametrize("text", ["...", " . ! ", "?!", "\u2026"])
def test_a_say_with_nothing_to_speak_is_an_invalid_request(text: str) -> None:
    for payload in (text, json.dumps({"text": text}), json.dumps({"segments": [{"text": text}, {"text": " "}]})):
        with pytest.raises(RequestRejected) as caught:
            parse_say(payload.encode(), max_text_length=2000)
        assert "nothing to speak" in caught.value.message


@pytest.mark.parametrize("text", ["42", "\U0001f44d", "$", "Ok."])
def test_digits_symbols_and_words_are_something_to_speak(text: str) -> None:
    assert parse_say(json.dumps({"text": text}).encode(), max_text_length=2000).request.text == text


def test_an_unknown_segment_emotion_says_it_is_spoken_with_the_requests_emotion() -> None:
    payload = {"emotion": "calm", "segments": [{"text": "a", "emotion": "grumpy"}]}
    parsed = parse_say(json.dumps(payload).encode(), max_text_length=2000)
    assert parsed.request.segments[0].emotion == "calm"
    (warning,) = parsed.warnings
    assert "spoken with the request's emotion (calm)" in warning.message


def test_a_cache_warm_list_of_more_than_a_hundred_items_is_refused_whole_saying_so() -> None:
    assert len(parse_warm(json.dumps(["Hi"] * 100).encode(), max_text_length=2000)) == 100
    with pytest.raises(RequestRejected) as caught:
        parse_warm(json.dumps(["Hi"] * 101).encode(), max_text_length=2000)
    assert caught.value.field == "warm" and "101 items" in caught.value.message
