"""README promises no other test held, end to end on real parts (mosquitto, PulseAudio, espeak-ng or the
Cartesia emulator): the last will after an unclean death, WAV files in output_dir, retained set/* applied
at start, quiet and voice kept across a restart, the all/... commands, engine_unavailable."""

from __future__ import annotations

import json
import time
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cartesia_emulator import CartesiaEmulator, frequency_for
from tests.conftest import BASE, Broker, Daemon, Observer, spoken_ok
from tests.sound import RATE, PulseAudio, dominant_frequency, rms, wait_until

pytestmark = pytest.mark.e2e
LONG = "x" * 100  # four seconds of speech from the emulator


def test_the_last_will_says_offline_after_an_unclean_death(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    daemon.kill()
    daemon.wait_offline(30)  # the last will


def test_a_clean_shutdown_says_offline_and_does_not_log_a_lost_connection(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    assert daemon.stop() == 0
    daemon.wait_offline()
    log = daemon.log()
    assert "disconnected from the broker" in log
    assert "lost the broker connection" not in log and "reconnecting" not in log


def test_wav_files_are_written_to_output_dir(make_daemon: Callable[..., Daemon], workdir: Path) -> None:
    out = workdir / "wav"
    daemon = make_daemon({"MQTT_SPEAKER_AUDIO__OUTPUT_DIR": str(out)})
    daemon.say(json.dumps({"id": "to-file", "text": "Written, not played"}))
    spoken_ok(daemon, "to-file")
    [wav] = [p for p in out.glob("*.wav") if "to-file" in p.name]
    assert wav.stat().st_size > 10_000  # a header and well over a tenth of a second of speech


@pytest.mark.parametrize("rate", [16000, 48000])
def test_wav_files_are_written_at_the_configured_sample_rate(
    make_daemon: Callable[..., Daemon], workdir: Path, rate: int
) -> None:
    out = workdir / "wav"
    daemon = make_daemon({"MQTT_SPEAKER_AUDIO__OUTPUT_DIR": str(out), "MQTT_SPEAKER_AUDIO__SAMPLE_RATE": str(rate)})
    daemon.say(json.dumps({"id": "rated", "text": "At the configured rate", "chime": True}))
    spoken_ok(daemon, "rated")
    [path] = [p for p in out.glob("*.wav") if "rated" in p.name]
    with wave.open(str(path)) as wav:
        assert wav.getframerate() == rate
        assert wav.getnframes() / rate > 1.0  # the chime (0.8 s) and the speech, not squeezed or stretched


def test_a_wav_file_is_written_as_fast_as_cartesia_sends_not_at_the_pace_of_speech(
    make_daemon: Callable[..., Daemon], emulator: CartesiaEmulator, cartesia_env: dict[str, str], workdir: Path
) -> None:
    """The engine holds a context's audio back while the listener is far ahead (to hand it over in a few
    large chunks), never past the context's end: a file is done when Cartesia is, not when the speech
    would have been heard. The emulator makes a second of speech in 0.05 s, so the file takes about a
    twentieth of its length, and the bound (half of it) leaves a loaded machine ten times that."""
    emulator.behaviour.real_time_factor = 0.05
    out = workdir / "wav"
    daemon = make_daemon({**cartesia_env, "MQTT_SPEAKER_AUDIO__OUTPUT_DIR": str(out)})
    started = time.monotonic()
    daemon.say(json.dumps({"id": "long-file", "text": LONG * 3, "cache": False}))
    spoken_ok(daemon, "long-file")
    took = time.monotonic() - started
    [wav] = [p for p in out.glob("*.wav") if "long-file" in p.name]
    with wave.open(str(wav)) as audio:
        seconds = audio.getnframes() / audio.getframerate()
    assert seconds > 6
    assert took < seconds / 2, f"{seconds:.1f} s of speech took {took:.1f} s to write"


def test_retained_settings_are_applied_at_start(make_daemon: Callable[..., Daemon], observer: Observer) -> None:
    site = "retained-at-start"
    observer.publish(f"{BASE}/{site}/set/volume", "35", retain=True)
    observer.publish(f"{BASE}/{site}/set/quiet", "ON", retain=True)
    daemon = make_daemon(site=site)
    wait_until(lambda: daemon.states()[-1]["volume"] == 35 and daemon.states()[-1]["quiet"], 10, "the settings")
    for leaf in ("set/volume", "set/quiet"):
        observer.publish(daemon.topic(leaf), "", retain=True)  # clean up the broker


def test_quiet_and_voice_survive_a_restart(make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.observer.publish(daemon.topic("set/quiet"), "ON")
    daemon.observer.publish(daemon.topic("set/voice"), "kept-voice")
    wait_until(lambda: daemon.states()[-1]["quiet"] and daemon.states()[-1]["voice"] == "kept-voice", 10, "state")
    daemon.stop()
    # Every state the first daemon published came before its last word, offline; the next is the restarted's.
    daemon.wait_offline()
    before = len(daemon.states())
    restarted = make_daemon(cartesia_env, site=daemon.site)
    wait_until(lambda: len(restarted.states()) > before, 10, "the restarted daemon's state")
    state = restarted.states()[-1]
    assert (state["quiet"], state["voice"]) == (True, "kept-voice")
    restarted.say(json.dumps({"id": "hushed", "text": "Not now"}))
    assert restarted.wait_terminal("hushed")["reason"] == "quiet"


def test_every_all_command_reaches_every_speaker(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, workdir: Path
) -> None:
    env = {**cartesia_env, "MQTT_SPEAKER_CACHE__ENABLED": "true"}
    one = make_daemon({**env, "MQTT_SPEAKER_CACHE__DIR": str(workdir / "cache-one")})
    two = make_daemon({**env, "MQTT_SPEAKER_CACHE__DIR": str(workdir / "cache-two")})
    speakers = (one, two)

    def publish_all(leaf: str, payload: str = "") -> None:
        one.observer.publish(f"{BASE}/all/{leaf}", payload)

    def every(condition: Callable[[Daemon], bool], what: str) -> None:
        wait_until(lambda: all(condition(d) for d in speakers), 20, what)

    publish_all("set/volume", "55")
    publish_all("set/emotion", "calm")
    publish_all("set/voice", "all-voice")

    def defaults(d: Daemon) -> tuple[object, ...]:
        state = d.states()[-1]
        return (state["volume"], state["emotion"], state["voice"])

    every(lambda d: defaults(d) == (55, "calm", "all-voice"), "set/volume, set/emotion, set/voice")

    publish_all("cache/warm", '["Warmed for all"]')
    wait_until(lambda: all(list((workdir / f"cache-{n}").glob("*.pcm")) for n in ("one", "two")), 20, "both warm")
    publish_all("cache/clear")
    wait_until(lambda: not any(list((workdir / f"cache-{n}").glob("*.pcm")) for n in ("one", "two")), 20, "cleared")

    for leaf, reason in (("stop", "stop"), ("skip", "skip")):
        for d in speakers:
            d.say(json.dumps({"id": f"{leaf}-long", "text": LONG}))
        request_id = f"{leaf}-long"
        every(lambda d: any(e["event_type"] == "started" for e in d.events(request_id)), "speaking")  # noqa: B023
        publish_all(leaf, "PRESS")
        for d in speakers:
            assert d.wait_terminal(request_id)["reason"] == reason

    for d in speakers:
        d.say(json.dumps({"id": "playing", "text": LONG}))
        d.say(json.dumps({"id": "waiting", "text": "Never"}))
    every(lambda d: any(e["event_type"] == "queued" for e in d.events("waiting")), "queued")
    publish_all("clear", '{"stop": true}')
    for d in speakers:
        assert d.wait_terminal("waiting")["reason"] == "cleared"
        assert d.wait_terminal("playing")["event_type"] == "interrupted"

    publish_all("set/quiet", "ON")
    every(lambda d: d.states()[-1]["quiet"], "set/quiet")
    publish_all("say", json.dumps({"id": "to-all", "text": "Hush"}))
    for d in speakers:
        assert d.wait_terminal("to-all")["reason"] == "quiet"


def test_an_engine_that_cannot_start_fails_engine_unavailable(
    make_daemon: Callable[..., Daemon], workdir: Path, broker: Broker
) -> None:
    daemon = make_daemon(
        {"MQTT_SPEAKER_ENGINE": "piper", "MQTT_SPEAKER_PIPER__MODEL": str(workdir / "no-such-voice.onnx")},
        FALLBACK="[]",
    )
    daemon.say(json.dumps({"id": "nobody", "text": "No voice"}))
    failed = daemon.wait_terminal("nobody")
    assert (failed["event_type"], failed["code"]) == ("failed", "engine_unavailable"), failed
    error = daemon.wait_for_error(lambda e: e["code"] == "engine_unavailable")
    assert error["id"] == "nobody" and "no-such-voice.onnx" in error["message"]


def test_sigterm_reports_the_audio_played_and_the_time_to_silence(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        daemon.say(json.dumps({"id": "long", "text": LONG}))
        daemon.wait_for_event("long", "started")
        wait_until(lambda: rms(capture.signal()) > 0.01, 20, "the speech heard")
        assert daemon.stop() == 0
    interrupted = daemon.wait_terminal("long")
    assert (interrupted["event_type"], interrupted["reason"]) == ("interrupted", "shutdown")
    assert interrupted["duration_ms"] > 0 and 0 <= interrupted["stop_ms"] < 2000, interrupted


def test_a_voice_set_by_its_alias_speaks_with_the_voice_id(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env, VOICES=json.dumps({"Narrator": "narrator-voice-id"}))
    daemon.observer.publish(daemon.topic("set/voice"), "Narrator")
    wait_until(lambda: daemon.states()[-1]["voice"] == "Narrator", 10, "the alias in state")
    daemon.say(json.dumps({"id": "aliased", "text": "Told by the narrator"}))
    spoken_ok(daemon, "aliased")
    (context,) = emulator.contexts_for("Told by the narrator")
    frame = next(f for f in emulator.frames if f.get("context_id") == context.context_id)
    assert frame["voice"] == "narrator-voice-id"


def test_no_audio_of_a_stopped_request_is_played_later(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.say(json.dumps({"id": "angry", "text": LONG, "emotion": "angry"}))  # a 620 Hz tone from the emulator
    daemon.wait_for_event("angry", "started")
    daemon.observer.publish(daemon.topic("stop"), "")
    daemon.wait_terminal("angry")
    with pulse.capture() as capture:  # from the moment it ended: only the next request may be heard
        daemon.say(json.dumps({"id": "calm", "text": "Only this one now"}))  # neutral: 200 Hz
        spoken_ok(daemon, "calm")
        x = capture.wait_for_sound_then_silence()
    n = int(0.05 * RATE)
    heard = [x[i : i + n] for i in range(0, x.size - n + 1, n) if rms(x[i : i + n]) > 0.02]
    tones = [round(dominant_frequency(frame)) for frame in heard]
    assert tones.count(round(frequency_for(None))) > len(tones) // 2, tones  # the calm request was heard
    assert not [t for t in tones if abs(t - frequency_for("angry")) < 30], tones  # the stopped one never again
