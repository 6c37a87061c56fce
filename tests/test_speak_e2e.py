"""End to end: mosquitto_pub -> daemon -> Cartesia emulator (official SDK) -> PortAudio -> PulseAudio capture."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import numpy as np
import pytest

from tests.cartesia_emulator import CartesiaEmulator, frequency_for
from tests.conftest import Broker, Daemon, spoken_ok
from tests.sound import RATE, PulseAudio, dominant_frequency, frequency_track, longest_gap, rms, sound_regions

pytestmark = pytest.mark.e2e

SEED = {"segments": [{"text": "Well maybe if you just "}, {"text": "loosen up a little!", "emotion": "angry"}]}


def mosquitto_pub(broker: Broker, topic: str, payload: str, *extra: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-m", payload, *extra],
        check=True,
        timeout=10,
    )


def test_seed_example_is_spoken_as_two_gapless_parts_in_order(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    emulator: CartesiaEmulator,
    broker: Broker,
    pulse: PulseAudio,
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        mosquitto_pub(broker, daemon.topic("say"), json.dumps({**SEED, "id": "seed"}))
        finished = spoken_ok(daemon, "seed")
        x = capture.wait_for_sound_then_silence()

    # What the daemon asked Cartesia for: one context per segment, the second one angry.
    first, second = emulator.contexts_for("Well maybe"), emulator.contexts_for("loosen up")
    assert len(first) == 1 and len(second) == 1
    assert first[0].emotion == "neutral" and second[0].emotion == "angry"
    frames = [f for f in emulator.frames if f.get("context_id") == second[0].context_id]
    assert frames[0]["generation_config"]["emotion"] == "angry"
    assert frames[0]["max_buffer_delay_ms"] == 0
    assert frames[0]["output_format"] == {"container": "raw", "encoding": "pcm_s16le", "sample_rate": RATE}

    # What came out of the speaker: one sound, neutral pitch then angry pitch, no gap, no lost tail.
    regions = sound_regions(x)
    assert len(regions) == 1, regions
    sound = x[regions[0].start : regions[0].end]
    expected = (first[0].samples_sent + second[0].samples_sent) / RATE
    assert abs(regions[0].seconds - expected) < 0.015, (regions[0].seconds, expected)
    track = frequency_track(sound)
    neutral, angry = frequency_for("neutral"), frequency_for("angry")
    labels = ["n" if abs(f - neutral) < 25 else "a" if abs(f - angry) < 25 else "?" for f in track]
    switch = labels.index("a")
    assert set(labels[:switch]) <= {"n", "?"} and labels.count("?") <= 1, labels
    assert set(labels[switch + 1 :]) == {"a"}, labels
    split = first[0].samples_sent
    assert dominant_frequency(sound[: split - 441]) == pytest.approx(neutral, abs=5)
    assert dominant_frequency(sound[split + 441 :]) == pytest.approx(angry, abs=5)
    assert longest_gap(sound) < 0.030
    assert abs(finished["duration_ms"] / 1000 - expected) < 0.015


def test_plain_text_is_spoken_with_espeak_when_no_api_key_is_configured(
    make_daemon: Callable[..., Daemon], broker: Broker, pulse: PulseAudio
) -> None:
    daemon = make_daemon()
    state = daemon.states()[-1]
    assert state["engine"] == "espeak"
    with pulse.capture() as capture:
        mosquitto_pub(broker, daemon.topic("say"), "Dinner is ready")
        x = capture.wait_for_sound_then_silence()
    started = next(e for e in daemon.events() if e["event_type"] == "started")
    assert started["engine"] == "espeak"
    spoken_ok(daemon, started["id"])
    regions = sound_regions(x)
    speech = x[regions[0].start : regions[-1].end]
    assert 0.5 < speech.size / RATE < 3.0
    assert rms(speech) > 0.02
    # Speech, not a tone: energy spread over many frequencies.
    spectrum = np.abs(np.fft.rfft(speech))
    assert np.count_nonzero(spectrum > spectrum.max() * 0.1) > 50


def test_alsa_plugins_loaded_to_list_devices_are_unloaded_before_idle(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio
) -> None:
    # PortAudio opens every PCM ALSA defines to list devices (libasound2-plugins has a dozen, the a52
    # encoder brings libavcodec); the daemon must not keep them, about 10 MB, for the rest of its life.
    daemon = make_daemon({**cartesia_env, "MQTT_SPEAKER_AUDIO__BACKEND": "portaudio"})
    plugins = {name for name in daemon.libraries() if name.startswith("libasound_module_pcm_")}
    assert plugins == set(), plugins
    with pulse.capture() as capture:
        daemon.say(json.dumps({"id": "after", "text": "Still speaking"}))
        spoken_ok(daemon, "after")
        x = capture.wait_for_sound_then_silence()
    assert sound_regions(x)
    plugins = {name for name in daemon.libraries() if name.startswith("libasound_module_pcm_")}
    assert plugins == {"libasound_module_pcm_pulse.so"}, plugins


def test_on_a_sound_server_neither_portaudio_nor_alsa_is_loaded(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio
) -> None:
    # The default backend plays through libpulse: PortAudio (and the ALSA devices it lists) would only
    # cost memory.
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        daemon.say(json.dumps({"id": "served", "text": "Through the sound server"}))
        spoken_ok(daemon, "served")
        x = capture.wait_for_sound_then_silence()
    assert sound_regions(x)
    libraries = daemon.libraries()
    assert any(name.startswith("libpulse-simple.so") for name in libraries), libraries
    assert not {name for name in libraries if "portaudio" in name or name.startswith("libasound")}, libraries
