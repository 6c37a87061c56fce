"""Announcement control through mosquitto and the PulseAudio capture: priorities, interruption,
stop/skip/clear, expiry, duplicates, per-message volume, chime, runtime defaults and quiet mode."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.cartesia_emulator import CartesiaEmulator, frequency_for
from tests.conftest import Daemon, spoken_ok
from tests.sound import RATE, PulseAudio, dominant_frequency, envelope, longest_gap, rms, sound_regions, wait_until

pytestmark = pytest.mark.e2e
LONG = "x" * 100  # four seconds of speech from the emulator


def say(daemon: Daemon, request_id: str, text: str = "Short one", **fields: Any) -> None:
    daemon.say(json.dumps({"id": request_id, "text": text, **fields}))


def control(daemon: Daemon, leaf: str, payload: str = "", *, retain: bool = False) -> None:
    daemon.observer.publish(daemon.topic(leaf), payload, retain=retain)


def terminal(daemon: Daemon, request_id: str) -> tuple[str, Any]:
    event = daemon.wait_terminal(request_id)
    return event["event_type"], event.get("reason")


def busy_with_one_of_each_queued(daemon: Daemon) -> None:
    """A long request speaking ("long"), and "low", "normal" and "high" waiting behind it."""
    say(daemon, "long", LONG)
    daemon.wait_for_event("long", "started")
    say(daemon, "low", priority="low")
    say(daemon, "normal")
    say(daemon, "high", priority="high")


def started_order(daemon: Daemon) -> list[str]:
    return [e["id"] for e in daemon.events() if e["event_type"] == "started"]


def test_higher_priorities_are_spoken_first(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        say(daemon, "busy", "x" * 30, emotion="calm")
        daemon.wait_for_event("busy", "started")
        say(daemon, "low", "Low one", priority="low", emotion="sad")
        say(daemon, "normal", "Normal one", emotion="happy")
        say(daemon, "high", "High one", priority="high", emotion="angry")
        for request_id in ("busy", "low", "normal", "high"):
            spoken_ok(daemon, request_id)
        x = capture.wait_for_sound_then_silence()
    assert started_order(daemon) == ["busy", "high", "normal", "low"]
    heard = [dominant_frequency(x[r.start : r.end]) for r in sound_regions(x, min_gap=0.005)]
    expected = [frequency_for(e) for e in ("calm", "angry", "happy", "sad")]
    assert heard == pytest.approx(expected, abs=5)


def test_critical_interrupts_and_drops_queued_requests_below_high(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    busy_with_one_of_each_queued(daemon)
    say(daemon, "alarm", "Smoke in the kitchen", priority="critical", emotion="alarmed")
    interrupted = daemon.wait_terminal("long")
    assert (interrupted["event_type"], interrupted["reason"], interrupted["by"]) == ("interrupted", "priority", "alarm")
    assert terminal(daemon, "low") == ("dropped", "preempted")
    assert terminal(daemon, "normal") == ("dropped", "preempted")
    spoken_ok(daemon, "alarm")
    spoken_ok(daemon, "high")
    assert started_order(daemon) == ["long", "alarm", "high"]
    # The interrupted context was cancelled at Cartesia.
    (long_context,) = emulator.contexts_for(LONG)
    assert any(f.get("cancel") and f.get("context_id") == long_context.context_id for f in emulator.frames)


def test_stop_fades_out_at_once_and_the_queue_goes_on(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        say(daemon, "long", LONG)
        say(daemon, "next", "The next one", emotion="happy")
        daemon.wait_for_event("long", "started")
        wait_until(lambda: sound_regions(capture.signal()), 10, "sound in the capture")
        control(daemon, "stop")  # an empty payload, like Home Assistant's button sends PRESS
        event = daemon.wait_terminal("long")
        spoken_ok(daemon, "next")
        x = capture.wait_for_sound_then_silence()
    assert event["event_type"] == "interrupted" and event["reason"] == "stop"
    assert event["stop_ms"] < 100
    first, second = sound_regions(x, min_gap=0.005)[:2]
    assert abs(first.seconds - event["duration_ms"] / 1000) < 0.03  # stopped when it said it did
    assert first.seconds < 3.5  # well before the end of four seconds
    tail = envelope(x[first.end - int(0.03 * RATE) : first.end])
    assert tail[-5:].max() < tail[:5].min()  # faded, not cut: the last milliseconds are the quietest
    assert dominant_frequency(x[second.start : second.end]) == pytest.approx(frequency_for("happy"), abs=5)


def test_skip_accepts_home_assistants_press(make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]) -> None:
    daemon = make_daemon(cartesia_env)
    say(daemon, "long", LONG)
    daemon.wait_for_event("long", "started")
    control(daemon, "skip", "PRESS")
    assert terminal(daemon, "long") == ("interrupted", "skip")


def test_clear_drops_queued_requests_below_a_priority_or_all_and_can_stop(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    busy_with_one_of_each_queued(daemon)
    control(daemon, "clear", '{"below": "high"}')
    assert terminal(daemon, "low") == ("dropped", "cleared")
    assert terminal(daemon, "normal") == ("dropped", "cleared")
    say(daemon, "normal2")
    control(daemon, "clear", '{"stop": true}')
    assert terminal(daemon, "high") == ("dropped", "cleared")
    assert terminal(daemon, "normal2") == ("dropped", "cleared")
    assert terminal(daemon, "long") == ("interrupted", "stop")
    wait_until(lambda: daemon.states()[-1]["queue_length"] == 0, 10, "an empty queue")


def test_requests_that_wait_past_their_ttl_expire(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    say(daemon, "long", "x" * 40)
    daemon.wait_for_event("long", "started")
    say(daemon, "soon", ttl=0.5)
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)).isoformat()
    say(daemon, "stale", ts=past, ttl=60)  # sent ten minutes ago, delivered now
    assert terminal(daemon, "stale") == ("dropped", "expired")
    assert terminal(daemon, "soon") == ("dropped", "expired")
    spoken_ok(daemon, "long")


def test_a_repeated_id_is_spoken_once(make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]) -> None:
    daemon = make_daemon(cartesia_env)
    say(daemon, "dup")
    spoken_ok(daemon, "dup")
    say(daemon, "dup")
    wait_until(lambda: len(daemon.events("dup")) >= 4, 10, "the duplicate's event")
    assert [e["event_type"] for e in daemon.events("dup")] == ["queued", "started", "finished", "dropped"]
    assert daemon.events("dup")[-1]["reason"] == "duplicate"


def test_per_message_volume_scales_the_sound(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        say(daemon, "loud", "Same words")
        say(daemon, "soft", "Same words", volume=0.25)
        say(daemon, "loud-again", "Same words")
        for request_id in ("loud", "soft", "loud-again"):
            spoken_ok(daemon, request_id)
        x = capture.wait_for_sound_then_silence()
    loud, soft, again = (rms(x[r.start : r.end]) for r in sound_regions(x, min_gap=0.005))
    assert soft / loud == pytest.approx(0.25, rel=0.05)
    assert again == pytest.approx(loud, rel=0.02)  # restored afterwards


def test_chime_then_speech_without_a_gap(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        say(daemon, "ding", "After the chime", chime=True)
        spoken_ok(daemon, "ding")
        x = capture.wait_for_sound_then_silence()
    (region,) = sound_regions(x)
    sound = x[region.start : region.end]
    chime, speech = sound[: int(0.25 * RATE)], sound[int(0.85 * RATE) :]
    assert dominant_frequency(chime) == pytest.approx(659.25, abs=5)
    assert dominant_frequency(speech) == pytest.approx(frequency_for("neutral"), abs=5)
    # The speech starts where the chime ends (0.8 s): the only quiet is the chime's own 20 ms fade.
    assert longest_gap(sound) < 0.02
    speech_start = int(np.argmax(np.abs(sound[int(0.79 * RATE) :]) > 0.2)) + int(0.79 * RATE)
    assert abs(speech_start / RATE - 0.8) < 0.02


def test_started_and_its_latency_come_after_the_chime_when_the_speech_is_heard(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    say(daemon, "ding", "After the chime", chime=True)
    spoken_ok(daemon, "ding")
    queued, started = (
        next(m for m in daemon.observer.on(daemon.topic("event")) if m.json() == e)
        for e in (daemon.wait_for_event("ding", "queued"), daemon.wait_for_event("ding", "started"))
    )
    assert started.json()["latency_ms"] >= 790  # the chime plays for 0.8 s before the first word
    assert started.received - queued.received >= 0.75


def test_an_unknown_chime_plays_the_default_with_a_warning(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    say(daemon, "named", chime="doorbell")
    spoken_ok(daemon, "named")
    warning = daemon.wait_for_error(lambda e: e["code"] == "unknown_sound")
    assert warning["id"] == "named" and warning["field"] == "chime"


def test_runtime_defaults_show_in_state_apply_and_survive_a_restart(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    control(daemon, "set/volume", "40")
    control(daemon, "set/emotion", "sad")
    control(daemon, "set/voice", "my-voice-id")
    control(daemon, "set/volume", "loud")
    error = daemon.wait_for_error(lambda e: e["code"] == "invalid_command")
    assert error["field"] == "volume" and "loud" in error["message"]
    wait_until(lambda: daemon.states()[-1]["voice"] == "my-voice-id", 10, "the new defaults in state")
    state = daemon.states()[-1]
    assert (state["volume"], state["emotion"], state["voice"]) == (40, "sad", "my-voice-id")
    say(daemon, "with-defaults", "Default things")
    spoken_ok(daemon, "with-defaults")
    (context,) = emulator.contexts_for("Default things")
    frame = next(f for f in emulator.frames if f.get("context_id") == context.context_id)
    assert frame["voice"] == "my-voice-id" and frame["generation_config"]["emotion"] == "sad"

    daemon.stop()
    restarted = make_daemon(cartesia_env, site=daemon.site)
    wait_until(lambda: restarted.states()[-1]["volume"] == 40, 10, "the volume kept across the restart")
    assert restarted.states()[-1]["emotion"] == "sad"


def restart(daemon: Daemon, make_daemon: Callable[..., Daemon], env: dict[str, str]) -> tuple[Daemon, dict[str, Any]]:
    """Stop `daemon` and start it again with `env`: the restarted daemon and the first state it publishes."""
    daemon.stop()
    daemon.wait_offline()  # every state the old one published came before its last word
    before = len(daemon.states())
    restarted = make_daemon(env, site=daemon.site)
    wait_until(lambda: len(restarted.states()) > before, 10, "the restarted daemon's state")
    return restarted, restarted.states()[before]


def heard_by_cartesia(daemon: Daemon, emulator: CartesiaEmulator, request_id: str, text: str) -> tuple[str, str]:
    """Say `text`; the voice and the emotion Cartesia was asked for."""
    say(daemon, request_id, text)
    spoken_ok(daemon, request_id)
    (context,) = emulator.contexts_for(text)
    frame = next(f for f in emulator.frames if f.get("context_id") == context.context_id)
    return frame["voice"], frame["generation_config"]["emotion"]


def test_a_changed_configuration_takes_effect_at_the_next_start_where_no_set_command_changed_it(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    first = daemon.states()[-1]
    assert (first["volume"], first["emotion"], first["voice"], first["duck_db"]) == (100, "neutral", "Default", 12.0)
    assert heard_by_cartesia(daemon, emulator, "first", "The first start.") == (
        "6ccbfb76-1fc6-48f7-b71d-91ac6298247b",
        "neutral",
    )

    configured = {
        **cartesia_env,
        "MQTT_SPEAKER_DEFAULT_VOLUME": "50",
        "MQTT_SPEAKER_DEFAULT_EMOTION": "happy",
        "MQTT_SPEAKER_CARTESIA__VOICE": "configured-voice",
        "MQTT_SPEAKER_AUDIO__DUCK_DB": "20",
    }
    daemon, state = restart(daemon, make_daemon, configured)
    assert (state["volume"], state["emotion"], state["voice"], state["duck_db"]) == (50, "happy", "Default", 20.0)
    assert heard_by_cartesia(daemon, emulator, "second", "The second start.") == ("configured-voice", "happy")
    control(daemon, "set/volume", "30")  # a runtime change: it stands over the configuration from now on
    control(daemon, "set/emotion", "calm")
    wait_until(lambda: daemon.states()[-1]["emotion"] == "calm", 10, "the set values in the state")

    reconfigured = {**configured, "MQTT_SPEAKER_DEFAULT_VOLUME": "70", "MQTT_SPEAKER_DEFAULT_EMOTION": "sad"}
    reconfigured["MQTT_SPEAKER_CARTESIA__VOICE"] = "another-voice"
    daemon, state = restart(daemon, make_daemon, reconfigured)
    assert (state["volume"], state["emotion"], state["voice"], state["duck_db"]) == (30, "calm", "Default", 20.0)
    assert heard_by_cartesia(daemon, emulator, "third", "The third start.") == ("another-voice", "calm")


def test_quiet_mode_and_quiet_hours_drop_all_but_critical(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    control(daemon, "set/quiet", "ON")
    wait_until(lambda: daemon.states()[-1]["quiet_now"], 10, "quiet")
    say(daemon, "hush")
    assert terminal(daemon, "hush") == ("dropped", "quiet")
    say(daemon, "fire", priority="critical")
    spoken_ok(daemon, "fire")
    control(daemon, "set/quiet", "OFF")
    wait_until(lambda: not daemon.states()[-1]["quiet_now"], 10, "not quiet")
    say(daemon, "ok")
    spoken_ok(daemon, "ok")

    now = dt.datetime.now()
    span = f"{(now - dt.timedelta(hours=1)):%H:%M}-{(now + dt.timedelta(hours=1)):%H:%M}"
    night = make_daemon(cartesia_env, QUIET_HOURS=span)
    assert night.states()[-1]["quiet_now"] and not night.states()[-1]["quiet"]
    say(night, "late")
    assert terminal(night, "late") == ("dropped", "quiet")


def test_retained_stop_is_ignored(make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]) -> None:
    daemon = make_daemon(cartesia_env)
    say(daemon, "long", LONG)
    daemon.wait_for_event("long", "started")
    control(daemon, "stop", "PRESS", retain=True)  # while something plays: a stop that acted would cut it
    daemon.wait_for_error(lambda e: e["code"] == "retained_command_ignored")
    control(daemon, "stop", "", retain=True)  # clear it again
    assert terminal(daemon, "long")[0] == "finished"
