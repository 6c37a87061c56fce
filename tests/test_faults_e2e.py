"""The fault-injection suite: real faults in real components, and nothing lost.

Run it alone with `script/test -m fault`. (The socket dropped mid-utterance, the first chunk that
never comes, and the daemon restarted while requests wait on the broker are in test_recovery_e2e.py
and test_service_e2e.py, also marked `fault`.)
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator, Fault
from tests.conftest import Broker, Daemon, Observer, spoken_ok
from tests.sound import PulseAudio, sound_regions, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


def publish(broker: Broker, topic: str, payload: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-m", payload],
        check=True,
        timeout=10,
    )


def test_broker_restarted_ten_times_loses_no_request_and_speaks_none_twice(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, workdir: Path
) -> None:
    # The broker keeps sessions and queued messages across its restarts (as a real installation does).
    # ("user root": mosquitto started as root otherwise drops to a user that cannot write the private workdir.)
    config = (
        f"user root\nlistener {{port}} 127.0.0.1\nallow_anonymous true\n"
        f"persistence true\npersistence_location {workdir}/\n"
    )
    broker = Broker(workdir, config)
    broker.start()
    observer = Observer(broker.port, persistent=True)
    try:
        daemon = make_daemon(cartesia_env, on=(broker, observer), MQTT__RECONNECT_MAX_DELAY="1")
        sent: list[str] = []
        for cycle in range(10):
            for n in range(3):
                request_id = f"c{cycle}-{n}"
                sent.append(request_id)
                publish(broker, daemon.topic("say"), json.dumps({"id": request_id, "text": f"Request {request_id}"}))
            broker.stop()
            broker.start()

        def outcome(request_id: str, timeout: float = 90) -> dict[str, Any]:
            """The request's own terminal event: a redelivered copy's `dropped` (duplicate) may come first."""

            def own() -> list[dict[str, Any]]:
                ends = ("finished", "failed", "interrupted", "dropped")
                events = daemon.events(request_id)
                return [e for e in events if e["event_type"] in ends and e.get("reason") != "duplicate"]

            wait_until(lambda: bool(own()), timeout, f"the outcome of {request_id}: {daemon.events(request_id)}")
            return own()[0]

        for request_id in sent:
            event = outcome(request_id)
            assert event["event_type"] in ("finished", "failed", "interrupted"), event
        for request_id in sent:
            # None spoken twice: one Cartesia context each, one outcome each. QoS 1 does redeliver a
            # request whose acknowledgement died with the broker: that copy ends `dropped` (duplicate).
            assert len(emulator.contexts_for(f"Request {request_id}")) <= 1
            outcomes = [
                e
                for e in daemon.events(request_id)
                if e["event_type"] in ("finished", "failed", "interrupted", "dropped")
                and e.get("reason") != "duplicate"
            ]
            assert len(outcomes) == 1, daemon.events(request_id)
        finished = [r for r in sent if outcome(r)["event_type"] == "finished"]
        assert len(finished) >= len(sent) - 3  # a restart may cut the one speaking at that moment
        assert daemon.alive()
    finally:
        observer.close()
        broker.stop()


def test_socket_lost_before_any_audio_is_retried_once_and_speaks(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    wait_until(lambda: emulator.open_connections() == 1, 10, "the warm socket")
    emulator.behaviour.faults.append(Fault("close_1011", after_chunks=0))
    daemon.say(b'{"id": "retried", "text": "Lost and found"}')
    spoken_ok(daemon, "retried")
    assert len(emulator.contexts_for("Lost and found")) == 2  # the lost attempt and the retry
    assert [e["event_type"] for e in daemon.events("retried")] == ["queued", "started", "finished"]


def test_a_bad_key_fails_clearly_backs_off_and_recovers(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    emulator.behaviour.api_key = "the-service-wants-another-key"
    daemon = make_daemon(cartesia_env)
    for n in range(5):
        daemon.say(json.dumps({"id": f"k{n}", "text": "Refused"}))
    for n in range(5):
        failed = daemon.wait_terminal(f"k{n}")
        assert (failed["event_type"], failed["code"]) == ("failed", "cartesia_auth")
        assert "401" in failed["message"]
    assert len(emulator.handshakes) <= 4  # backoff: five requests did not mean five more attempts
    wait_until(lambda: daemon.states()[-1]["problems"] == ["tts"], 10, "the problem flag")
    emulator.behaviour.api_key = TEST_API_KEY
    wait_until(lambda: emulator.open_connections() == 1, 60, "the daemon to reconnect after its backoff")
    daemon.say(b'{"id": "ok", "text": "Accepted again"}')
    spoken_ok(daemon, "ok")
    wait_until(lambda: not daemon.states()[-1]["problem"], 10, "the problem flag cleared")


def test_a_service_that_accepts_then_closes_is_retried_with_backoff_not_in_a_loop(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    emulator.behaviour.close_at_once = True
    daemon = make_daemon(cartesia_env)
    wait_until(lambda: len(emulator.handshake_times) >= 4, 30, "four attempts")
    gaps = [b - a for a, b in itertools.pairwise(emulator.handshake_times[:4])]
    assert gaps[1] >= 1.8 and gaps[2] >= 3.6, gaps  # once at once, then 2 s, 4 s, 8 s ...
    daemon.say(b'{"id": "during", "text": "Not now"}')
    failed = daemon.wait_terminal("during")
    assert (failed["event_type"], failed["code"]) == ("failed", "cartesia_unreachable")
    assert "closed the socket" in failed["message"]
    emulator.behaviour.close_at_once = False
    wait_until(lambda: emulator.open_connections() == 1, 60, "the daemon to reconnect after its backoff")
    daemon.say(b'{"id": "back", "text": "Back again"}')
    spoken_ok(daemon, "back")


def test_too_many_requests_at_the_handshake_is_rate_limited(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    emulator.behaviour.handshake_status = 429
    daemon = make_daemon(cartesia_env)
    daemon.say(b'{"id": "busy", "text": "Too many"}')
    failed = daemon.wait_terminal("busy")
    assert (failed["event_type"], failed["code"]) == ("failed", "cartesia_rate_limited")
    error = daemon.wait_for_error(lambda e: e["id"] == "busy")
    assert error["code"] == "cartesia_rate_limited" and "too many" in error["message"].lower()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("CARTESIA__VOICE", "invalid-voice", "Voice 'invalid-voice' was not found"),
        ("CARTESIA__MODEL", "unknown-model", "Model 'unknown-model' does not exist"),
    ],
)
def test_error_frames_fail_the_request_with_the_services_message(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], setting: str, value: str, message: str
) -> None:
    daemon = make_daemon(cartesia_env, **{setting: value})
    daemon.say(b'{"id": "bad", "text": "Error frame"}')
    failed = daemon.wait_terminal("bad")
    assert (failed["event_type"], failed["code"]) == ("failed", "synthesis_failed")
    assert message in failed["message"]
    wait_until(lambda: daemon.states()[-1]["problem"], 10, "the problem flag")


def test_a_request_with_an_unknown_voice_is_no_outage_and_the_next_real_one_is_published(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    for request_id in ("typo-1", "typo-2"):
        daemon.say(json.dumps({"id": request_id, "text": "Hello", "voice": "invalid-voice"}))
        failed = daemon.wait_terminal(request_id)
        assert (failed["event_type"], failed["code"]) == ("failed", "synthesis_failed")
        error = next(e for e in daemon.errors() if e["id"] == request_id)  # each one says why (before its end)
        assert "invalid-voice" in error["message"]
    assert not any(state["problem"] for state in daemon.states())  # Cartesia works: no Problem
    daemon.say(b'{"id": "fine", "text": "Hello"}')
    spoken_ok(daemon, "fine")
    daemon.say(json.dumps({"id": "quota", "text": "Hello", "voice": "over-quota"}))  # a real outage: a 429 frame
    error = daemon.wait_for_error(lambda e: e["code"] == "cartesia_rate_limited")
    assert error["id"] == "quota"
    wait_until(lambda: daemon.states()[-1]["problem"], 10, "the problem flag")


def test_sound_device_lost_mid_utterance_fails_and_the_next_request_plays_when_it_is_back(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    own = PulseAudio().start()  # its own sound server: the shared one is left alone
    try:
        daemon = make_daemon({**cartesia_env, **own.env})
        daemon.say(json.dumps({"id": "cut", "text": "x" * 100}))
        daemon.wait_for_event("cut", "started")
        module = next(
            line.split()[0] for line in own.pactl("list", "short", "modules").stdout.splitlines() if "pipe-sink" in line
        )
        own.pactl("unload-module", module)
        failed = daemon.wait_terminal("cut")
        assert (failed["event_type"], failed["code"]) == ("failed", "audio_device_unavailable"), failed
        assert daemon.alive()
        assert own.pactl("load-module", "module-pipe-sink", *own.sink_arguments.split()).returncode == 0
        with own.capture() as capture:
            daemon.say(b'{"id": "back", "text": "Device is back"}')
            spoken_ok(daemon, "back")
            assert sound_regions(capture.wait_for_sound_then_silence())
    finally:
        own.stop()


def test_a_burst_of_malformed_messages_is_answered_and_the_valid_one_spoken(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], broker: Broker
) -> None:
    daemon = make_daemon(cartesia_env)
    before = daemon.rss_kb()
    bad = [b"", b"[1]", b'{"text": 5}', b"\xff\xfe", b'{"segments": []}', b"{not json", b'{"text": "a", "speed": "x"}']
    for n in range(1000):
        daemon.observer.client.publish(
            daemon.topic("say"), bad[n % len(bad)] + (b" " * (n % 3) if n % 7 else b""), qos=1
        )
    daemon.say(b'{"id": "valid", "text": "Still speaking"}')
    spoken_ok(daemon, "valid", timeout=120)

    def accounted() -> int:
        errors = daemon.errors()
        direct = sum(e["code"] == "invalid_request" for e in errors)
        summed = sum(int(e["message"].split()[0]) for e in errors if e["code"] == "errors_suppressed")
        return int(direct + summed)

    wait_until(lambda: accounted() >= 1000, 30, "every malformed message accounted for")
    assert accounted() == 1000
    assert any(e["code"] == "errors_suppressed" for e in daemon.errors())  # the flood was summed up
    assert daemon.alive()
    assert daemon.rss_kb() - before < 20 * 1024


def test_a_flood_of_valid_requests_keeps_the_queue_bound_and_ends_each_once(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env, QUEUE_SIZE="20")
    before = daemon.rss_kb()
    for n in range(1000):
        daemon.observer.client.publish(daemon.topic("say"), json.dumps({"id": f"f{n}", "text": "Hi"}), qos=1)
    for n in range(1000):
        daemon.wait_terminal(f"f{n}", timeout=180)
    terminal = [e for e in daemon.events() if e["event_type"] in ("finished", "dropped", "failed", "interrupted")]
    assert sorted(e["id"] for e in terminal) == sorted(f"f{n}" for n in range(1000))  # exactly one each
    assert max(s["queue_length"] for s in daemon.states()) <= 20
    assert {e["reason"] for e in terminal if e["event_type"] == "dropped"} == {"queue_full"}
    assert daemon.rss_kb() - before < 20 * 1024


def test_the_cost_guard_drops_what_would_pass_the_limit(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env, CHARS_PER_MINUTE="30")
    daemon.say(b'{"id": "one", "text": "Twenty characters.."}')
    spoken_ok(daemon, "one")
    daemon.say(b'{"id": "two", "text": "Twenty characters.."}')
    dropped = daemon.wait_terminal("two")
    assert (dropped["event_type"], dropped["reason"]) == ("dropped", "rate_limited")
    error = daemon.wait_for_error(lambda e: e["code"] == "rate_limited")
    assert error["id"] == "two" and "per minute" in error["message"]
    daemon.say(b'{"id": "three", "text": "Twenty characters..", "priority": "critical"}')
    spoken_ok(daemon, "three")  # critical requests pass the guard


def test_the_cost_guard_lets_cache_hits_pass_and_counts_cache_warming(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    cache = Path(cartesia_env["MQTT_SPEAKER_CACHE__DIR"])
    daemon = make_daemon({**cartesia_env, "MQTT_SPEAKER_CACHE__ENABLED": "true"}, CHARS_PER_MINUTE="30")
    daemon.say(b'{"id": "one", "text": "Twenty characters.."}')
    spoken_ok(daemon, "one")
    wait_until(lambda: len(list(cache.glob("*.pcm"))) == 1, 30, "the cache entry")
    daemon.say(b'{"id": "again", "text": "Twenty characters.."}')  # from the cache: costs nothing
    spoken_ok(daemon, "again")
    assert daemon.wait_for_event("again", "started")["cached"] is True
    daemon.observer.publish(daemon.topic("cache/warm"), json.dumps(["Another twenty chars"]))
    error = daemon.wait_for_error(lambda e: e["code"] == "rate_limited")
    assert error["message"].startswith("cache warm: cost guard")
    assert len(list(cache.glob("*.pcm"))) == 1  # not warmed
