"""The daemon never goes deaf: broker restarts, Cartesia's idle close, a sound device that comes back."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.cartesia_emulator import CartesiaEmulator, Fault, FaultKind
from tests.conftest import Broker, Daemon, Observer, spoken_ok
from tests.sound import PulseAudio, sound_regions, wait_until

pytestmark = pytest.mark.e2e


def test_broker_restart_reconnects_resubscribes_and_republishes(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], broker: Broker
) -> None:
    daemon = make_daemon(cartesia_env, MQTT__RECONNECT_MAX_DELAY="2")
    daemon.say(b'{"id": "before", "text": "Before the restart"}')
    spoken_ok(daemon, "before")
    broker.stop()  # and with it every retained message: the broker keeps none (persistence false)
    broker.start()
    # A new client sees availability and state again: the daemon reconnected and republished them, retained.
    fresh = Observer(broker.port)
    daemon.observer = fresh
    try:
        wait_until(lambda: fresh.on(daemon.topic("availability")), 30, "availability republished")
        assert fresh.on(daemon.topic("availability"))[-1].payload == b"online"
        wait_until(lambda: fresh.on(daemon.topic("state")), 10, "state republished")
        # ...and it subscribed again: it still hears say requests.
        daemon.say(b'{"id": "after", "text": "After the restart"}')
        spoken_ok(daemon, "after")
    finally:
        fresh.close()


def test_cartesia_idle_close_does_not_lose_the_next_message(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    emulator.behaviour.idle_timeout = 1.0  # the service closes idle sockets (after 300 s, with code 1000)
    daemon = make_daemon(cartesia_env)
    daemon.say(b'{"id": "first", "text": "First message"}')
    spoken_ok(daemon, "first")
    handshakes = len(emulator.handshakes)
    wait_until(lambda: (1000, "connection idle timeout") in emulator.closes, 10, "the idle close")
    emulator.behaviour.idle_timeout = 300.0
    daemon.say(b'{"id": "second", "text": "Second message"}')
    spoken_ok(daemon, "second")
    assert len(emulator.handshakes) > handshakes  # a fresh socket carried it
    assert emulator.contexts_for("Second message")[0].done


def test_cartesia_socket_dropped_under_a_request_is_retried_on_a_fresh_socket(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    wait_until(lambda: emulator.open_connections() == 1, 10, "the warm socket")
    emulator.behaviour.faults.append(Fault("close_1000", after_chunks=0))  # closed once the request is sent
    daemon.say(b'{"id": "next", "text": "Dropped under me"}')
    spoken_ok(daemon, "next")
    assert len(emulator.contexts_for("Dropped under me")) == 2  # the lost attempt, and the retry
    assert len(emulator.handshakes) >= 2  # ... on a fresh socket


def test_audio_device_failure_is_reported_and_retried_for_the_next_request(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    later = PulseAudio()  # its socket does not exist until it is started
    try:
        daemon = make_daemon({**cartesia_env, **later.env})
        daemon.say(b'{"id": "nodev", "text": "Nobody can hear this"}')
        failed = daemon.wait_terminal("nodev")
        assert failed["event_type"] == "failed" and failed["code"] == "audio_device_unavailable"
        error = daemon.wait_for_error(lambda e: e["code"] == "audio_device_unavailable")
        assert error["id"] == "nodev"
        wait_until(lambda: daemon.states()[-1]["problem"], 10, "problem in state")
        assert daemon.states()[-1]["problems"] == ["audio"]
        assert daemon.alive()

        later.start()
        with later.capture() as capture:
            daemon.say(json.dumps({"id": "back", "text": "The speaker is back"}))
            spoken_ok(daemon, "back")
            assert sound_regions(capture.wait_for_sound_then_silence())
        wait_until(lambda: not daemon.states()[-1]["problem"], 10, "problem cleared")
    finally:
        later.stop()


@pytest.mark.fault
@pytest.mark.parametrize("kind", ["abort", "close_1011", "close_1000", "silent"])
def test_socket_lost_in_the_middle_of_speech_fails_cleanly_and_the_next_request_speaks(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, kind: FaultKind
) -> None:
    daemon = make_daemon(cartesia_env, CARTESIA__CHUNK_TIMEOUT="1")
    emulator.behaviour.faults.append(Fault(kind, after_chunks=3))
    daemon.say(b'{"id": "cut", "text": "This sentence is cut short by the network"}')
    failed = daemon.wait_terminal("cut")
    assert failed["event_type"] == "failed" and failed["code"] == "synthesis_interrupted", failed
    assert len(daemon.events("cut")) == 3  # queued, started, failed: exactly one terminal event
    daemon.say(b'{"id": "next", "text": "And yet the next one speaks"}')
    spoken_ok(daemon, "next")


@pytest.mark.fault
def test_a_first_chunk_that_never_comes_times_out(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env, CARTESIA__FIRST_CHUNK_TIMEOUT="1")
    emulator.behaviour.stall = True
    daemon.say(b'{"id": "stalled", "text": "Nothing will come"}')
    failed = daemon.wait_terminal("stalled")
    assert failed["event_type"] == "failed" and failed["code"] == "synthesis_timeout"
    wait_until(lambda: daemon.states()[-1]["problems"] == ["tts"], 10, "the tts problem in state")
    emulator.behaviour.stall = False
    daemon.say(b'{"id": "unstuck", "text": "Back to normal"}')
    spoken_ok(daemon, "unstuck")
    wait_until(lambda: not daemon.states()[-1]["problem"], 10, "problem cleared")
