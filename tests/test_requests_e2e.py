"""Say requests through the real broker: bad input, warnings, order, state, broadcast, secrets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from mqtt_speaker.clock import clock_synchronized
from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator, frequency_for
from tests.conftest import Daemon, Observer, spoken_ok
from tests.sound import PulseAudio, dominant_frequency, sound_regions, wait_until

pytestmark = pytest.mark.e2e

BAD_PAYLOADS = [
    (b"", "payload", "empty"),
    (b"   \n", "payload", "empty"),
    (b"[1, 2]", "payload", "not an object"),
    (b'"just a string"', "payload", "not an object"),
    (b'{"text": "unclosed"', "payload", "not valid JSON"),
    (b'{"emotion": "happy"}', "text", "missing"),
    (b'{"text": 42}', "text", "valid string"),
    (b'{"text": "a", "segments": [{"text": "b"}]}', "text", "not both"),
    (b'{"segments": []}', "segments", "at least 1"),
    (b'{"segments": [{"emotion": "sad"}]}', "segments.0.text", "required"),
    (b'{"text": "hi", "speed": "fast"}', "speed", "number"),
    (b'{"text": "hi", "language": "klingon"}', "language", "not a supported language"),
    (b"\xff\xfe\xfa invalid utf-8", "payload", "UTF-8"),
    (json.dumps({"text": "x" * 2001}).encode(), "text", "2001 characters"),
]


def test_bad_input_gets_a_clear_error_and_nothing_else(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    for payload, _, _ in BAD_PAYLOADS:
        daemon.say(payload)
    daemon.say(b'{"id": "bad-id", "text": ""}')
    wait_until(lambda: len(daemon.errors()) >= len(BAD_PAYLOADS) + 1, 30, "one error per bad payload")
    errors = daemon.errors()
    for (_, field, reason), error in zip(BAD_PAYLOADS, errors, strict=False):
        assert error["code"] == "invalid_request"
        assert error["field"] == field, error
        assert error["message"].startswith(f"{field}: ") and reason in error["message"], error
        assert error["id"] is None and error["severity"] == "error"
    assert errors[-1]["id"] == "bad-id" and errors[-1]["field"] == "text"
    assert daemon.events() == []  # nothing was accepted, so nothing was queued or spoken
    assert emulator.contexts == {}
    daemon.say(b'{"id": "after", "text": "Still here"}')
    spoken_ok(daemon, "after")
    assert daemon.alive()


HUGE = "1" + "0" * 400  # an integer too large for a float


def test_a_number_too_large_for_a_float_gets_an_error_naming_the_field_on_every_topic(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    sent: list[tuple[str, str, str, str]] = []  # topic, payload, code, field
    for field in ("speed", "volume", "generation_volume", "ttl", "ts", "at", "duck_db"):
        sent.append(("say", f'{{"text": "hi", "{field}": {HUGE}}}', "invalid_request", field))
        sent.append(("say/stream", f'{{"id": "s-{field}", "text": "hi", "{field}": {HUGE}}}', "invalid_request", field))
    sent.append(("say", f'{{"segments": [{{"text": "hi", "speed": {HUGE}}}]}}', "invalid_request", "segments.0.speed"))
    sent.append(("cache/warm", f'[{{"text": "hi", "ttl": {HUGE}}}]', "invalid_command", "warm.0.ttl"))
    sent.append(("set/volume", HUGE, "invalid_command", "volume"))
    sent.append(("set/duck_db", HUGE, "invalid_command", "duck_db"))
    for topic, payload, _, _ in sent:
        daemon.observer.publish(daemon.topic(topic), payload)
    wait_until(lambda: len(daemon.errors()) >= len(sent), 30, "one error per message")
    assert [(e["code"], e["field"]) for e in daemon.errors()] == [(code, field) for _, _, code, field in sent]
    assert daemon.events() == [] and emulator.contexts == {}
    assert "Traceback" not in daemon.log()
    daemon.say(b'{"id": "after", "text": "Still here"}')
    spoken_ok(daemon, "after")


def test_retained_say_is_not_spoken(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.say(b'{"id": "old", "text": "Replayed on every reconnect"}', retain=True)
    error = daemon.wait_for_error(lambda e: e["code"] == "retained_command_ignored")
    assert "retain" in error["message"]
    # A new daemon for the site (a new MQTT session) is handed the retained message by the broker: refused too.
    daemon.stop()
    make_daemon(cartesia_env, site=daemon.site, MQTT__CLIENT_ID="another-session")
    wait_until(lambda: len([e for e in daemon.errors() if e["code"] == "retained_command_ignored"]) == 2, 30, "2nd")
    assert daemon.events() == [] and emulator.contexts_for("Replayed") == []


def test_clearing_a_retained_say_as_the_readme_says_is_quiet(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.say(b'{"id": "old", "text": "Replayed on every reconnect"}', retain=True)
    daemon.wait_for_error(lambda e: e["code"] == "retained_command_ignored")
    daemon.say(b"", retain=True)  # mosquitto_pub -r -n -t <topic>
    daemon.say(b'{"id": "marker"}')  # handled after the clearing: once its error is here, any other would be too
    daemon.wait_for_error(lambda e: e["id"] == "marker")
    assert [e["code"] for e in daemon.errors()] == ["retained_command_ignored", "invalid_request"]


def test_unknown_emotion_and_out_of_range_values_speak_with_a_warning(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.say(
        json.dumps({"id": "w", "text": "Careful now", "emotion": "grumpy", "speed": 9, "generation_volume": 0.1})
    )
    spoken_ok(daemon, "w")
    warnings = {e["code"]: e for e in daemon.errors()}
    assert warnings["invalid_emotion"]["id"] == "w" and warnings["invalid_emotion"]["field"] == "emotion"
    assert warnings["invalid_emotion"]["severity"] == "warning"
    assert {e["field"] for e in daemon.errors() if e["code"] == "value_clamped"} == {"speed", "generation_volume"}
    (context,) = emulator.contexts_for("Careful now")
    config = next(f for f in emulator.frames if f.get("context_id") == context.context_id)["generation_config"]
    assert config == {"emotion": "neutral", "speed": 1.5, "volume": 0.5}


def test_requests_are_spoken_one_at_a_time_in_arrival_order(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    emotions = ["sad", "angry", "happy"]
    with pulse.capture() as capture:
        for i, emotion in enumerate(emotions):
            daemon.say(json.dumps({"id": f"r{i}", "text": f"Message number {i}", "emotion": emotion}))
        for i in range(3):
            spoken_ok(daemon, f"r{i}")
        x = capture.wait_for_sound_then_silence()
    queued = [e for e in daemon.events() if e["event_type"] == "queued"]
    assert [e["id"] for e in queued] == ["r0", "r1", "r2"]
    assert [e["position"] for e in queued][1:] == [2, 3]
    lifecycle = [(e["id"], e["event_type"]) for e in daemon.events() if e["event_type"] in ("started", "finished")]
    assert lifecycle == [(f"r{i}", kind) for i in range(3) for kind in ("started", "finished")]
    # The speaker heard them in that order, each at its own emotion's pitch.
    heard = [dominant_frequency(x[r.start : r.end]) for r in sound_regions(x, min_gap=0.005)]
    assert heard == pytest.approx([frequency_for(e) for e in emotions], abs=5)


def test_state_is_retained_and_follows_speaking(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    emulator.behaviour.real_time_factor = 1.0  # generation as slow as playback: a request takes a while
    daemon = make_daemon(cartesia_env)
    daemon.say(json.dumps({"id": "long", "text": "A fairly long announcement for the state test"}))
    daemon.wait_for_event("long", "started")
    wait_until(lambda: daemon.states()[-1]["state"] == "speaking", 10, "state speaking")
    assert daemon.states()[-1]["current_id"] == "long"
    spoken_ok(daemon, "long")
    wait_until(lambda: daemon.states()[-1]["state"] == "idle", 10, "state idle")
    state = daemon.states()[-1]
    assert state == {
        "state": "idle",
        "queue_length": 0,
        "current_id": None,
        "engine": "cartesia",
        "problem": False,
        "problems": [],
        "last_error": None,
        "version": state["version"],
        "volume": 100,
        "muted": False,
        "emotion": "neutral",
        "voice": "Default",  # the configured voice, which has no name in `voices`
        "quiet": False,
        "quiet_now": False,
        "clock_synchronized": clock_synchronized(),  # this machine's, as the daemon reads it (docs/sync.md)
        "clock_error_ms": state["clock_error_ms"],  # the kernel's estimate moves: checked below
        "groups": [],
        "shares": True,
        "duck_db": 12.0,
    }
    error = state["clock_error_ms"]
    assert error is None if not clock_synchronized() else isinstance(error, float) and error >= 0, error
    availability = daemon.observer.on(daemon.topic("availability"))
    assert availability[-1].payload == b"online"
    # A client that subscribes now is handed the retained state and availability.
    late = Observer(daemon.broker.port)
    try:
        wait_until(lambda: late.on(daemon.topic("state")), 10, "retained state")
        assert late.on(daemon.topic("state"))[-1].json()["state"] == "idle"
        assert late.on(daemon.topic("availability"))[-1].payload == b"online"
    finally:
        late.close()


def test_all_say_reaches_every_speaker(make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]) -> None:
    one, two = make_daemon(cartesia_env), make_daemon(cartesia_env)
    one.observer.publish("mqtt-speaker/all/say", json.dumps({"id": "everyone", "text": "Hello house"}))
    spoken_ok(one, "everyone")
    spoken_ok(two, "everyone")


def test_speech_streams_the_first_chunk_is_heard_before_the_last_arrives(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    emulator.behaviour.real_time_factor = 0.6  # three seconds of speech take about two to generate
    daemon = make_daemon(cartesia_env)
    daemon.say(json.dumps({"id": "stream", "text": "x" * 75}))
    daemon.wait_for_event("stream", "started")
    heard_at = time.monotonic()
    (context,) = emulator.contexts_for("xxxxx")
    assert not context.done, "the whole utterance had arrived before playback started"
    spoken_ok(daemon, "stream")
    assert context.done_at is not None and context.done_at - heard_at > 1.0


def test_secrets_never_appear_in_logs_or_on_the_broker(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    emulator.behaviour.api_key = "a-different-key"  # the daemon's key is refused: error paths run too
    daemon = make_daemon(cartesia_env)
    daemon.say(b'{"id": "s", "text": "Secret test"}')
    failed = daemon.wait_terminal("s")
    assert failed["event_type"] == "failed" and failed["code"] == "cartesia_auth"
    daemon.stop()
    assert TEST_API_KEY not in daemon.log()
    assert "Authorization" not in daemon.log()
    for message in daemon.observer.messages:
        assert TEST_API_KEY.encode() not in message.payload
