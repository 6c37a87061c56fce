"""End to end: Cartesia lost in the middle of a stream; Piper goes on from the first word not heard, and
then with the text still arriving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cartesia_emulator import CartesiaEmulator, Fault
from tests.conftest import Daemon, spoken_ok
from tests.sound import RATE, PulseAudio, sound_regions
from tests.test_fallback_e2e import piper_seconds
from tests.test_stream_e2e import terminal_events, words, write

pytestmark = pytest.mark.e2e

FIRST = "First sentence from the cloud. "
SECOND = "Second part, wherever it comes from, and then a long tail of words that only Piper says."


def test_cartesia_lost_mid_stream_the_fallback_goes_on_from_the_first_word_not_heard(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    piper_env: dict[str, str],
    emulator: CartesiaEmulator,
    pulse: PulseAudio,
) -> None:
    daemon = make_daemon({**cartesia_env, **piper_env, "MQTT_SPEAKER_FALLBACK": '["piper"]'})
    daemon.say('{"id": "ready", "text": "Ready."}')  # the engines have started (Piper's voice is loaded)
    spoken_ok(daemon, "ready")
    emulator.contexts.clear()
    # The first sentence is 62 chunks of 20 ms: this is 0.36 s into the second one ("Second " is heard).
    emulator.behaviour.faults.append(Fault("abort", after_chunks=80))
    with pulse.capture() as capture:
        write(daemon, "lost", words(FIRST + SECOND), 0.1)
        finished = spoken_ok(daemon, "lost")
        x = capture.wait_for_sound_then_silence()
    assert daemon.wait_for_event("lost", "started")["engine"] == "cartesia"
    assert finished["engine"] == "piper"
    assert terminal_events(daemon, "lost") == ["finished"]
    cloud = sum(c.samples_sent for c in emulator.contexts.values()) / RATE
    heard = sum(region.seconds for region in sound_regions(x))  # Piper may wait for a sentence's end: no gaps
    model = Path(piper_env["MQTT_SPEAKER_PIPER__MODEL"])
    rest = piper_seconds(model, SECOND.removeprefix("Second "))
    again = piper_seconds(model, FIRST + SECOND)  # what Piper would take to say it all over again
    # Piper said the rest, from the first word Cartesia had not finished: not the stream from its start.
    assert cloud + 0.6 * rest < heard < cloud + again - 1.0, (heard, cloud, rest, again)
