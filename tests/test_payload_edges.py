"""The parser keeps its own promises at the edges: huge integer ids and the id length limit."""

from __future__ import annotations

import pytest

from mqtt_speaker.protocol.payloads import RequestRejected, parse_say
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
