"""The speaker's promises at the unit level (fake engine and output; the end-to-end tests use real parts):
queue_full, duplicates and their window, drops without `queued`, quiet mode, the hourly cost guard, the
state kept current, and the fallback after any engine failure."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

from mqtt_speaker.core import scheduler as scheduler_module
from mqtt_speaker.engines.base import Voicing
from mqtt_speaker.speech.audio import AudioChunk
from mqtt_speaker.speech.text import Script
from mqtt_speaker.speech.vocabulary import (
    Priority,
)
from tests.fakes import CHUNK, LONG, BilledEngine, FakeEngine, Harness, run

# ------------------------------------------------------------------------------ queue_full, drops


def test_a_full_queue_drops_the_newcomer_with_an_error_and_no_queued(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path, queue_size=1)
        h.say("speaking", LONG)
        h.start()
        await h.until(lambda: "started" in h.of("speaking"))
        h.say("waiting")
        h.say("newcomer")
        assert h.of("newcomer") == ["dropped"] and h.end("newcomer") == ("dropped", "queue_full")
        assert [(e.code.value, e.id) for e in h.errors] == [("queue_full", "newcomer")]
        await h.stop()

    run(test)


def test_a_newcomer_that_outranks_the_lowest_queued_request_takes_its_place(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path, queue_size=1)
        h.say("speaking", LONG)
        h.start()
        await h.until(lambda: "started" in h.of("speaking"))
        h.say("low", priority=Priority.LOW)
        h.say("high", priority=Priority.HIGH)
        assert h.end("low") == ("dropped", "queue_full") and h.of("high") == ["queued"]
        assert [(e.code.value, e.id) for e in h.errors] == [("queue_full", "low")]
        await h.until(lambda: h.end("high"))
        assert h.end("high") == ("finished", None)
        await h.stop()

    run(test)


def test_quiet_and_already_expired_arrivals_are_dropped_without_queued(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path)
        h.start()
        h.say("stale", sent_at=time.time() - 100, ttl=10)
        h.speaker.update_defaults(quiet=True)
        h.say("hushed")
        assert (h.of("stale"), h.end("stale")) == (["dropped"], ("dropped", "expired"))
        assert (h.of("hushed"), h.end("hushed")) == (["dropped"], ("dropped", "quiet"))
        await h.stop()

    run(test)


def test_quiet_mode_on_drops_what_is_queued_and_lets_the_current_one_finish(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path)
        h.say("speaking", LONG)
        h.start()
        await h.until(lambda: "started" in h.of("speaking"))
        h.say("waiting")
        h.speaker.update_defaults(quiet=True)
        assert h.end("waiting") == ("dropped", "quiet")
        await h.until(lambda: h.end("speaking"))
        assert h.end("speaking") == ("finished", None)
        h.say("alarm", priority=Priority.CRITICAL)  # critical ignores quiet mode
        await h.until(lambda: h.end("alarm"))
        assert h.end("alarm") == ("finished", None)
        await h.stop()

    run(test)


# ------------------------------------------------------------------------------ duplicates (item 1)


def test_a_repeated_id_is_a_duplicate_within_the_window_and_not_after_it(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path, dedupe_window=0.3)
        h.start()
        h.say("wash-42")
        h.say("wash-42")
        assert h.end("wash-42") == ("dropped", "duplicate")
        await h.until(lambda: ("finished", None) in [(e.event_type.value, None) for e in h.events])
        await asyncio.sleep(0.4)  # the window is what is tested: let it pass
        h.say("wash-42")
        await h.until(lambda: h.of("wash-42").count("finished") == 2)
        await h.stop()

    run(test)


def test_an_id_dropped_on_arrival_is_not_remembered_a_retry_is_spoken(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path, queue_size=1)
        h.say("speaking", LONG)
        h.start()
        await h.until(lambda: "started" in h.of("speaking"))
        h.say("waiting")
        h.say("retry-me")
        assert h.end("retry-me") == ("dropped", "queue_full")
        h.speaker.update_defaults(quiet=True)
        h.say("after-quiet")
        assert h.end("after-quiet") == ("dropped", "quiet")
        h.speaker.update_defaults(quiet=False)
        h.speaker.stop("stop")
        await h.until(lambda: h.end("speaking"))
        h.say("retry-me")  # after queue_full
        await h.until(lambda: "finished" in h.of("retry-me"))
        h.say("after-quiet")  # after quiet mode ended
        await h.until(lambda: "finished" in h.of("after-quiet"))
        await h.stop()

    run(test)


def test_the_remembered_ids_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "DEDUPE_MAX_IDS", 20)

    async def test() -> None:
        h = Harness(tmp_path)
        h.start()
        for n in range(30):
            h.say(f"id{n}", "hi")
            await h.until(lambda: h.end(f"id{n}"))  # noqa: B023 (awaited at once)
        h.say("id0", "hi")  # forgotten: only the last 20 are kept
        await h.until(lambda: h.of("id0").count("finished") == 2)
        h.say("id29", "hi")
        assert h.end("id29") == ("dropped", "duplicate")
        await h.stop()

    run(test)


# ------------------------------------------------------------------------------ cost guard per hour


def test_chars_per_hour_drops_what_would_pass_it_rate_limited_with_an_error(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path, {"cartesia": BilledEngine()}, chars_per_hour=10, fallback=[])
        h.start()
        h.say("first", "hello")
        await h.until(lambda: h.end("first"))
        h.say("second", "world!")
        await h.until(lambda: h.end("second"))
        assert h.end("first") == ("finished", None) and h.end("second") == ("dropped", "rate_limited")
        [error] = h.errors
        assert error.code.value == "rate_limited" and "per hour" in error.message and error.id == "second"
        await h.stop()

    run(test)


# ------------------------------------------------------------------------------ state kept current (item 9)


def test_a_request_dropped_at_dequeue_republishes_the_state(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path, {"cartesia": BilledEngine()}, chars_per_minute=10, fallback=[])
        h.say("first", "hello")
        h.say("second", "world!")  # passes the limit only once "first" is charged, at its dequeue
        h.start()
        await h.until(lambda: h.end("second"))
        assert h.end("second") == ("dropped", "rate_limited")
        await h.until(lambda: h.states and h.states[-1].queue_length == 0 and h.states[-1].current_id is None)
        await h.stop()

    run(test)


def test_quiet_hours_beginning_and_ending_republish_the_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "QUIET_HOURS_CHECK", 0.01)
    now = [dt.datetime(2026, 11, 25, 21, 59, 59)]

    async def test() -> None:
        h = Harness(tmp_path, quiet_hours="22:00-07:00", clock=lambda: now[0])
        h.start()
        await asyncio.sleep(0.05)
        assert not h.states or not h.states[-1].quiet_now
        now[0] = dt.datetime(2026, 11, 25, 22, 0, 1)
        await h.until(lambda: h.states and h.states[-1].quiet_now)
        now[0] = dt.datetime(2026, 11, 26, 7, 0, 1)
        await h.until(lambda: h.states and not h.states[-1].quiet_now)
        await h.stop()

    run(test)


# ------------------------------------------------------------------------------ any engine failure (item 7)


class BrokenEngine(FakeEngine):
    """Raises what no engine is supposed to raise (a bug, or a library's own exception)."""

    async def synthesize(self, script: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        raise ValueError("port must be 0-65535")
        yield AudioChunk(CHUNK, sample_rate, 0)  # pragma: no cover - an async generator that never yields


def test_any_engine_exception_falls_back_to_the_next_engine(tmp_path: Path) -> None:
    async def test() -> None:
        local = FakeEngine()
        local.name = "espeak"
        h = Harness(tmp_path, {"cartesia": BrokenEngine(), "espeak": local}, fallback=["espeak"])
        h.start()
        h.say("r")
        await h.until(lambda: h.end("r"))
        assert h.end("r") == ("finished", None)
        started = next(e for e in h.events if e.event_type.value == "started")
        assert getattr(started, "fallback", None) is True and getattr(started, "engine", None) == "espeak"
        await h.stop()

    run(test)


def test_any_engine_exception_without_a_fallback_is_an_internal_error(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path, {"cartesia": BrokenEngine()}, fallback=[])
        h.start()
        h.say("r")
        await h.until(lambda: h.end("r"))
        failed = next(e for e in h.events if e.event_type.value == "failed")
        assert getattr(failed, "code", None) == "internal_error"
        assert [e.code.value for e in h.errors] == ["internal_error"]
        await h.stop()

    run(test)
