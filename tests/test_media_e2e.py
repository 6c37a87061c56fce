"""Media and mute through mosquitto and the PulseAudio capture: a say with "media" plays the URL through the
queue (its events, a chime from a URL first), a bad URL fails with an error and nothing else is affected,
and set/mute silences everything but a critical request, at once, and shows in the state."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cartesia_emulator import frequency_for
from tests.conftest import Daemon, free_port, spoken_ok
from tests.media_server import SECONDS, TONES, MediaServer
from tests.sound import RATE, PulseAudio, dominant_frequency, rms, sound_regions, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    server = MediaServer().start()
    yield server
    server.stop()


def say(daemon: Daemon, request_id: str, **fields: Any) -> None:
    daemon.say(json.dumps({"id": request_id, **fields}))


def test_a_say_with_media_plays_the_url_through_the_queue(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio, media: MediaServer
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        say(daemon, "song", media=media.url("tone.flac"))
        say(daemon, "after", text="Then speech", chime=media.url("tone.ogg"))
        spoken_ok(daemon, "song")
        spoken_ok(daemon, "after")
        x = capture.wait_for_sound_then_silence()
    started = daemon.wait_for_event("song", "started")
    assert (started["engine"], started["emotion"], started["segments"]) == ("media", None, 0)
    finished = daemon.wait_terminal("song")
    assert finished["engine"] == "media" and finished["duration_ms"] == pytest.approx(SECONDS * 1000, abs=100)
    song, chime_and_speech = sound_regions(x, min_gap=0.1)
    assert (song.end - song.start) / RATE == pytest.approx(SECONDS, abs=0.1)
    assert dominant_frequency(x[song.start : song.end]) == pytest.approx(TONES["tone.flac"][0], abs=5)
    heard = x[chime_and_speech.start : chime_and_speech.end]
    assert dominant_frequency(heard[: int(SECONDS * RATE)]) == pytest.approx(TONES["tone.ogg"][0], abs=5)
    assert dominant_frequency(heard[int((SECONDS + 0.1) * RATE) :]) == pytest.approx(frequency_for("neutral"), abs=5)
    assert daemon.events("after")[1]["event_type"] == "started"  # after the chime, as for a built-in one


@pytest.mark.parametrize(
    ("path", "code"),
    [("missing", "media_unavailable"), ("page.html", "media_invalid"), (None, "media_unavailable")],
)
def test_a_bad_media_url_fails_with_its_error_and_the_next_request_is_spoken(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    media: MediaServer,
    path: str | None,
    code: str,
) -> None:
    daemon = make_daemon(cartesia_env)
    url = media.url(path) if path is not None else f"http://127.0.0.1:{free_port()}/gone.mp3"
    say(daemon, "bad", media=url)
    say(daemon, "next", text="Still here")
    failed = daemon.wait_terminal("bad")
    assert (failed["event_type"], failed["code"]) == ("failed", code), failed
    error = daemon.wait_for_error(lambda e: e.get("id") == "bad")
    assert error["code"] == code and error["message"].startswith("media: ")
    spoken_ok(daemon, "next")
    assert daemon.alive()


def test_a_chime_url_that_cannot_be_had_is_a_warning_and_the_speech_is_spoken(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], media: MediaServer
) -> None:
    daemon = make_daemon(cartesia_env)
    say(daemon, "chimeless", text="Spoken anyway", chime=media.url("missing"))
    spoken_ok(daemon, "chimeless")
    warning = daemon.wait_for_error(lambda e: e.get("id") == "chimeless")
    assert (warning["code"], warning["field"], warning["severity"]) == ("media_unavailable", "chime", "warning")
    assert warning["message"].startswith("chime: ") and warning["message"].endswith("played without it")


def test_a_say_with_media_and_text_is_refused(make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]) -> None:
    daemon = make_daemon(cartesia_env)
    say(daemon, "both", text="Hello", media="http://example.invalid/x.mp3")
    say(daemon, "file", media="file:///etc/passwd")
    both = daemon.wait_for_error(lambda e: e.get("id") == "both")
    assert (both["code"], both["field"]) == ("invalid_request", "media")
    local = daemon.wait_for_error(lambda e: e.get("id") == "file")
    assert (local["code"], local["field"]) == ("invalid_request", "media") and "http" in local["message"]
    assert daemon.events("both") == [] and daemon.events("file") == []


def test_mute_silences_everything_but_critical_at_once_and_shows_in_the_state(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio, media: MediaServer
) -> None:
    daemon = make_daemon(cartesia_env)
    assert daemon.states()[-1]["muted"] is False
    with pulse.capture() as capture:

        def heard() -> float:
            return float(capture.signal().size / RATE)

        say(daemon, "long", media=media.url("endless.mp3"))
        daemon.wait_for_event("long", "started")
        wait_until(lambda: heard() > 1.0 and rms(capture.signal()[-RATE // 2 :]) > 0.05, 10, "the music")
        daemon.observer.publish(daemon.topic("set/mute"), "ON")
        wait_until(lambda: daemon.states()[-1]["muted"] is True, 10, "muted in the state")
        muted_at = heard()
        wait_until(lambda: heard() > muted_at + 3.5, 10, "three seconds and a half more")
        x = capture.signal()
    # Silent within the media's lead (2 s) and the sound server's buffer, while it still plays.
    assert rms(x[int((muted_at + 2.5) * RATE) :]) < 0.001
    assert rms(x[int((muted_at - 1.0) * RATE) : int(muted_at * RATE)]) > 0.05  # and playing until then
    assert daemon.events("long")[-1]["event_type"] == "started"
    daemon.observer.publish(daemon.topic("stop"), "")
    assert daemon.wait_terminal("long")["event_type"] == "interrupted"
    with pulse.capture() as capture:
        say(daemon, "quiet", text="Not heard")
        spoken_ok(daemon, "quiet")
        say(daemon, "alarm", text="Smoke", priority="critical")
        spoken_ok(daemon, "alarm")
        x = capture.wait_for_sound_then_silence()
    (alarm,) = sound_regions(x)  # only the critical request was heard
    assert dominant_frequency(x[alarm.start : alarm.end]) == pytest.approx(frequency_for("neutral"), abs=5)
    daemon.observer.publish(daemon.topic("set/mute"), "maybe")
    error = daemon.wait_for_error(lambda e: e["code"] == "invalid_command")
    assert error["field"] == "mute"
    daemon.observer.publish(daemon.topic("set/mute"), "OFF")
    wait_until(lambda: daemon.states()[-1]["muted"] is False, 10, "unmuted")
