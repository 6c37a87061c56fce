"""Unit tests of the synchronized start: the instant, the silence before the first sample, the payload
fields, the group topics and the settings (the end-to-end proof is test_sync_e2e.py)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from mqtt_speaker.clock import clock_synchronized
from mqtt_speaker.playback.output import StartGate, frames_before_start
from mqtt_speaker.playback.portaudio import Fifo
from mqtt_speaker.protocol.payloads import RequestRejected, parse_say
from mqtt_speaker.protocol.timing import ClockWatch, check_at, start_instant
from mqtt_speaker.protocol.topics import Command, Topics
from mqtt_speaker.settings import ConfigError, load_settings
from mqtt_speaker.speech.vocabulary import ErrorCode

RATE = 1000  # one frame a millisecond keeps the arithmetic readable


def say(**fields: object) -> bytes:
    return json.dumps({"text": "hello", **fields}).encode()


# ------------------------------------------------------------------------------------------ instant


@pytest.mark.parametrize(
    ("at", "sync", "broadcast", "sent", "expected"),
    [
        (None, None, True, None, 100.5),  # all/say or a group: arrival + lead
        (None, None, False, None, None),  # a say to one room: at once
        (None, True, False, None, 100.5),  # ... unless it asks for it
        (None, False, True, None, None),  # a broadcast that opts out
        (123.0, None, False, None, 123.0),  # its own instant, wherever it came from
        (None, None, True, 99.9, 100.4),  # ts: the same origin on every speaker
        (None, None, True, 90.0, 100.5),  # a ts further than a lead from the arrival: the sender's clock is off
    ],
)
def test_start_instant(
    at: float | None, sync: bool | None, broadcast: bool, sent: float | None, expected: float | None
) -> None:
    instant = start_instant(at=at, sync=sync, broadcast=broadcast, sent=sent, arrived=100.0, lead=0.5)
    assert instant == (pytest.approx(expected) if expected is not None else None)


def test_frames_before_start_and_lateness() -> None:
    assert frames_before_start(10.0, 9.5, RATE) == 500
    assert frames_before_start(10.0, 10.25, RATE) == -250
    gate = StartGate(10.0)
    assert gate.late_ms is None
    gate.late = -0.0004
    assert gate.late_ms == 0  # placed a rounding early: on time
    gate.late = 0.0123
    assert gate.late_ms == 12


def test_the_fifo_holds_the_first_sample_until_the_instant_reaches_the_dac() -> None:
    fifo = Fifo()
    placed: list[float] = []
    fifo.begin(lambda: None)
    fifo.hold_until(10.0, RATE, placed.append)
    out = np.full(4, -1, dtype=np.float32)
    fifo.read_into(out, 9.0)  # nothing written yet: silence, still held
    assert out.tolist() == [0, 0, 0, 0] and fifo.holding() == 10.0
    fifo.write(np.array([1, 2, 3, 4, 5], dtype=np.float32))
    fifo.read_into(out, 9.995)  # the instant is 5 frames away: this buffer is silent
    assert out.tolist() == [0, 0, 0, 0] and placed == []
    fifo.read_into(out, 9.998)  # ... 2 frames into this one
    assert out.tolist() == [0, 0, 1, 2] and placed == [pytest.approx(0.0)] and fifo.holding() is None
    fifo.read_into(out, 10.002)  # then it plays on, no longer held
    assert out.tolist() == [3, 4, 5, 0] and fifo.played == 5


def test_audio_that_comes_after_the_instant_starts_at_once_and_says_how_late() -> None:
    fifo = Fifo()
    placed: list[float] = []
    fifo.begin(lambda: None)
    fifo.hold_until(10.0, RATE, placed.append)
    fifo.write(np.array([1, 2], dtype=np.float32))
    out = np.zeros(3, dtype=np.float32)
    fifo.read_into(out, 10.040)
    assert out.tolist() == [1, 2, 0] and placed == [pytest.approx(0.040)]


def test_stopping_held_audio_drops_it_unheard() -> None:
    fifo = Fifo()
    drained: list[bool] = []
    fifo.begin(lambda: None)
    fifo.hold_until(10.0, RATE, lambda _late: None)
    fifo.write(np.ones(50, dtype=np.float32))
    fifo.fade_out(30, lambda: drained.append(True))
    assert drained == [True] and fifo.holding() is None and fifo.buffered == 0


# ------------------------------------------------------------------------------------------ payload


def test_at_is_epoch_seconds_or_iso_8601_and_sync_a_boolean() -> None:
    assert parse_say(say(at=1796000000.25), max_text_length=100).request.at == 1796000000.25
    iso = parse_say(say(at="2026-12-01T21:00:00.5Z"), max_text_length=100).request
    assert iso.at == pytest.approx(1796158800.5)
    assert parse_say(say(sync=False), max_text_length=100).request.sync is False
    plain = parse_say(b"hello", max_text_length=100).request
    assert (plain.at, plain.sync) == (None, None)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"at": "tomorrow"}, "at"),
        ({"at": "2026-12-01T21:00:00"}, "at"),  # no time zone
        ({"at": True}, "at"),
        ({"at": float("nan")}, "at"),
        ({"sync": "yes"}, "sync"),
        ({"at": 1796000000, "sync": False}, "at"),  # an instant for an unsynchronized start
    ],
)
def test_bad_at_or_sync_is_refused_naming_the_field(fields: dict[str, object], field: str) -> None:
    payload = json.dumps({"text": "hello", "id": "x", **fields}, allow_nan=True).encode()
    with pytest.raises(RequestRejected) as caught:
        parse_say(payload, max_text_length=100)
    assert caught.value.field == field and caught.value.message.startswith(field)


def test_an_at_in_the_past_warns_and_one_too_far_ahead_is_refused() -> None:
    request = parse_say(say(id="r", at=1000.0), max_text_length=100).request
    assert check_at(request, 999.0, max_ahead=60) is None
    warning = check_at(request, 1001.5, max_ahead=60)
    assert warning is not None and (warning.code, warning.field) == (ErrorCode.START_PASSED, "at")
    assert "1.500 s in the past" in warning.message
    with pytest.raises(RequestRejected) as caught:
        check_at(request, 900.0, max_ahead=60)
    assert (caught.value.field, caught.value.request_id) == ("at", "r")


# ------------------------------------------------------------------------------------- topics, state


def test_group_topics_reach_the_members_with_every_command() -> None:
    topics = Topics("mqtt-speaker", "kitchen", groups=("downstairs", "all_lights"))
    subscriptions = topics.command_subscriptions()
    assert len(subscriptions) == 4 * len(Command)
    for command in Command:
        assert topics.group_command(command, "downstairs") in subscriptions
        assert topics.parse_command(f"mqtt-speaker/group/downstairs/{command.value}") is command
    assert topics.parse_command("mqtt-speaker/group/upstairs/say") is None  # not a member
    assert topics.is_broadcast("mqtt-speaker/group/all_lights/say")
    assert topics.is_broadcast("mqtt-speaker/all/say")
    assert not topics.is_broadcast("mqtt-speaker/kitchen/say")
    assert not topics.is_broadcast("mqtt-speaker/group/upstairs/say")


def test_sync_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_SPEAKER_SYNC__GROUPS", '["downstairs", "bedrooms"]')
    monkeypatch.setenv("MQTT_SPEAKER_SYNC__LEAD", "0.8")
    s = load_settings()
    assert (s.sync.groups, s.sync.lead, s.sync.max_ahead) == (["downstairs", "bedrooms"], 0.8, 60.0)
    for bad in ('["Down Stairs"]', '["all"]', '["a/b"]'):
        monkeypatch.setenv("MQTT_SPEAKER_SYNC__GROUPS", bad)
        with pytest.raises(ConfigError, match="groups"):
            load_settings()


def test_the_state_says_whether_the_clock_is_synchronized() -> None:
    synchronized = clock_synchronized()
    assert synchronized in ((True, False) if sys.platform.startswith("linux") else (None,))


# ------------------------------------------------------------------------------------------ clock


def test_an_unsynchronized_clock_is_said_once_for_synchronized_requests_only() -> None:
    state: list[bool | None] = [False]
    watch = ClockWatch(lambda: state[0])
    assert watch.check(None) is None  # not synchronized: the clock does not matter
    warning = watch.check(1_000.0)
    assert warning is not None and warning.code is ErrorCode.CLOCK_UNSYNCHRONIZED and warning.field == "at"
    assert watch.check(1_001.0) is None  # once an hour, not on every broadcast
    for synchronized in (True, None):  # synchronized, or the system cannot tell: nothing to say
        state[0] = synchronized
        assert ClockWatch(lambda: state[0]).check(1_000.0) is None
