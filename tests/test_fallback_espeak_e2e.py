"""The fallback, end to end with espeak-ng as the only fallback: Cartesia refusing the key (401), rate
limiting (429), timing out before the first chunk, or answering with an error frame; the request is
spoken by espeak-ng, and `started` says so and why."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.cartesia_emulator import CartesiaEmulator
from tests.conftest import Daemon, spoken_ok
from tests.sound import PulseAudio, sound_regions

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("fault", ["401", "429", "timeout", "error frame"])
def test_espeak_speaks_when_cartesia_fails_before_any_audio(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    emulator: CartesiaEmulator,
    pulse: PulseAudio,
    fault: str,
) -> None:
    request: dict[str, object] = {"id": "saved", "text": "The local voice takes over"}
    settings = {"CARTESIA__FIRST_CHUNK_TIMEOUT": "1"}
    if fault == "401":
        emulator.behaviour.api_key = "another-key"
    elif fault == "429":
        emulator.behaviour.handshake_status = 429
    elif fault == "timeout":
        emulator.behaviour.stall = True
    else:
        request["voice"] = "invalid-voice"
    daemon = make_daemon({**cartesia_env, "MQTT_SPEAKER_FALLBACK": '["espeak"]'}, **settings)
    with pulse.capture() as capture:
        daemon.say(json.dumps(request))
        spoken_ok(daemon, "saved")
        assert sound_regions(capture.wait_for_sound_then_silence())
    started = daemon.wait_for_event("saved", "started")
    assert (started["engine"], started["fallback"]) == ("espeak", True), started
    expected = {
        "401": "cartesia_auth",
        "429": "cartesia_rate_limited",
        "timeout": "synthesis_timeout",
        "error frame": "synthesis_failed",
    }[fault]
    assert started["fallback_reason"] == f"cartesia: {expected}", started


def test_a_request_for_piper_without_a_piper_voice_is_spoken_by_espeak_and_says_so_never_by_cartesia(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, pulse: PulseAudio
) -> None:
    env = {k: v for k, v in cartesia_env.items() if k != "MQTT_SPEAKER_FALLBACK"}  # the default: piper, espeak
    daemon = make_daemon(env)
    with pulse.capture() as capture:
        daemon.say(json.dumps({"id": "local", "text": "Spoken locally", "engine": "piper"}))  # the README's example
        spoken_ok(daemon, "local")
        x = capture.wait_for_sound_then_silence()
    started = daemon.wait_for_event("local", "started")
    assert (started["engine"], started["fallback"], started["fallback_reason"]) == (
        "espeak",
        True,
        "piper: engine_unavailable",
    )
    error = daemon.wait_for_error(lambda e: e["code"] == "engine_unavailable")
    assert error["id"] == "local" and "Piper voice" in error["message"]
    assert emulator.contexts == {} and sound_regions(x)


@pytest.mark.parametrize("fallback", ["[]", '["cartesia"]'])
def test_a_request_for_espeak_is_spoken_by_espeak_whatever_the_fallback(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, fallback: str
) -> None:
    daemon = make_daemon({**cartesia_env, "MQTT_SPEAKER_FALLBACK": fallback})
    daemon.say(json.dumps({"id": "local", "text": "Spoken locally", "engine": "espeak"}))
    spoken_ok(daemon, "local")
    started = daemon.wait_for_event("local", "started")
    assert (started["engine"], started["fallback"]) == ("espeak", False)
    assert emulator.contexts == {}


def test_a_request_for_an_engine_that_is_not_there_fails_clearly_without_a_local_fallback(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)  # no fallback at all
    daemon.say(json.dumps({"id": "local", "text": "Spoken locally", "engine": "piper"}))
    failed = daemon.wait_terminal("local")
    assert (failed["event_type"], failed["code"]) == ("failed", "engine_unavailable")
    assert "Piper voice" in failed["message"]
    assert emulator.contexts == {}
