"""Ducking's parts that need no sound server: the request fields, set/duck_db, the saved default, PULSE_PROP."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from mqtt_speaker.core.defaults import Defaults
from mqtt_speaker.playback.ducking import factor, record_path, tag_own_stream
from mqtt_speaker.protocol.payloads import RequestRejected, parse_duck_db, parse_say
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.vocabulary import ErrorCode


def test_a_request_can_turn_ducking_off_or_ask_for_its_own_depth() -> None:
    assert parse_say(b"plain text", max_text_length=100).request.duck is True
    request = parse_say(b'{"text": "a film is on", "duck": false}', max_text_length=100).request
    assert request.duck is False and request.duck_db is None
    parsed = parse_say(b'{"text": "loud", "duck_db": 55}', max_text_length=100)
    assert parsed.request.duck_db == 40.0
    [warning] = parsed.warnings
    assert warning.code is ErrorCode.VALUE_CLAMPED and warning.field == "duck_db"
    with pytest.raises(RequestRejected) as caught:
        parse_say(b'{"text": "x", "duck": "no", "id": "d1"}', max_text_length=100)
    assert caught.value.field == "duck" and caught.value.request_id == "d1"


@pytest.mark.parametrize(("payload", "value"), [(b"12", 12.0), (b"6.25", 6.2), (b"0", 0.0), (b" 40.0 ", 40.0)])
def test_set_duck_db_takes_a_number_of_db(payload: bytes, value: float) -> None:
    assert parse_duck_db(payload) == value


@pytest.mark.parametrize("payload", [b"41", b"-1", b"loud", b"nan", b""])
def test_set_duck_db_rejects_what_is_not_0_to_40(payload: bytes) -> None:
    with pytest.raises(RequestRejected) as caught:
        parse_duck_db(payload)
    assert caught.value.field == "duck_db" and caught.value.message.startswith("duck_db: ")


def test_the_depth_set_at_runtime_is_kept_and_an_older_state_file_keeps_its_values(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    settings = Settings(state_file=state, audio={"duck_db": 9})
    assert Defaults(settings).current.duck_db == 9
    state.write_text(json.dumps({"volume": 40, "emotion": "calm", "voice": "v", "quiet": False}))  # before ducking
    loaded = Defaults(settings).current
    assert (loaded.volume, loaded.emotion, loaded.duck_db) == (40, "calm", 9)

    async def set_depth() -> None:
        defaults = Defaults(settings)
        defaults.set(duck_db=20.0)
        await defaults.saved()

    asyncio.run(set_depth())
    assert Defaults(settings).current.duck_db == 20.0
    assert record_path(state) == tmp_path / "state-ducked.json"


def test_the_role_goes_into_pulse_prop_unless_one_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # Recorded first, so that what tag_own_stream writes is undone too (a delenv of a missing variable
    # records nothing, and a role left in this process's environment went to every daemon started later).
    monkeypatch.setenv("PULSE_PROP", "")
    monkeypatch.delenv("PULSE_PROP")
    tag_own_stream("announcement")
    assert os.environ["PULSE_PROP"] == "media.role=announcement"
    monkeypatch.setenv("PULSE_PROP", "application.icon_name=audio")
    tag_own_stream("event")
    assert os.environ["PULSE_PROP"] == "application.icon_name=audio media.role=event"
    monkeypatch.setenv("PULSE_PROP", "media.role=phone")
    tag_own_stream("event")
    assert os.environ["PULSE_PROP"] == "media.role=phone"


def test_pulseaudio_volumes_are_cubic() -> None:
    assert factor(0) == 1.0
    assert factor(12) ** 3 == pytest.approx(10 ** (-12 / 20))
