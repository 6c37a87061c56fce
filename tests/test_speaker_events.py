"""What the events carry (README "Events"), the critical rule, the cost guard and the fallback, and the
audio cache's key and opt-out, at the unit level (fake engine and output)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mqtt_speaker.core.cache import AudioCache, cache_key
from mqtt_speaker.engines.base import SynthesisError, Voicing
from mqtt_speaker.settings import CacheSettings
from mqtt_speaker.speech.vocabulary import ErrorCode, Priority, SayRequest, Segment
from tests.fakes import LONG, BilledEngine, FakeEngine, Harness, run
from tests.inprocess import until


def event(h: Harness, request_id: str, kind: str) -> Any:
    return next(e for e in h.events if e.id == request_id and e.event_type.value == kind)


def test_started_carries_the_voice_the_segments_and_the_latency(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path)
        h.start()
        h.speaker.submit(SayRequest(id="r", segments=(Segment(text="one "), Segment(text="two")), voice="v-1"))
        await h.until(lambda: h.end("r"))
        started = event(h, "r", "started")
        assert (started.voice, started.segments) == ("v-1", 2)
        assert 0 <= started.latency_ms < 5000
        await h.stop()

    run(test)


def test_skip_and_critical_report_the_audio_played_and_the_time_to_silence(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path)
        h.start()
        h.say("skipped", LONG)
        await h.until(lambda: "started" in h.of("skipped"))
        h.speaker.stop("skip")
        await h.until(lambda: h.end("skipped"))
        h.say("cut", LONG)
        await h.until(lambda: "started" in h.of("cut"))
        await asyncio.sleep(0.05)  # some audio plays first
        h.say("alarm", priority=Priority.CRITICAL)
        await h.until(lambda: h.end("alarm"))
        skipped, cut = event(h, "skipped", "interrupted"), event(h, "cut", "interrupted")
        assert (skipped.reason, cut.reason, cut.by) == ("skip", "priority", "alarm")
        assert cut.duration_ms > 0 and 0 <= cut.stop_ms < 1000 and 0 <= skipped.stop_ms < 1000
        await h.stop()

    run(test)


def test_a_critical_request_is_never_interrupted_by_another(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path)
        h.start()
        h.say("fire", LONG, priority=Priority.CRITICAL)
        await h.until(lambda: "started" in h.of("fire"))
        h.say("flood", priority=Priority.CRITICAL)
        await h.until(lambda: h.end("flood"))
        assert h.end("fire") == ("finished", None) and h.end("flood") == ("finished", None)
        assert [e.id for e in h.events if e.event_type.value == "started"] == ["fire", "flood"]
        await h.stop()

    run(test)


def test_a_failure_after_some_audio_reports_what_was_played(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path, fallback=[])
        h.start()
        h.say("broken", "fail here")  # the fake engine fails after two chunks of 64 samples at 16 kHz
        await h.until(lambda: h.end("broken"))
        failed = event(h, "broken", "failed")
        assert failed.code == ErrorCode.SYNTHESIS_INTERRUPTED and failed.duration_ms == 8
        await h.stop()

    run(test)


class DownEngine(BilledEngine):
    """Cartesia while it is known to be down (its socket cannot be opened)."""

    def problem(self) -> SynthesisError:  # type: ignore[override]
        return SynthesisError(ErrorCode.CARTESIA_UNREACHABLE, "down")


def test_speech_by_the_fallback_while_the_primary_is_down_is_not_charged(tmp_path: Path) -> None:
    async def test() -> None:
        local = FakeEngine()
        local.name = "espeak"
        h = Harness(tmp_path, {"cartesia": DownEngine(), "espeak": local}, fallback=["espeak"], chars_per_minute=5)
        h.start()
        for n in range(3):
            h.say(f"r{n}", "hello world")
            await h.until(lambda: h.end(f"r{n}"))  # noqa: B023 (awaited at once)
        assert [h.end(f"r{n}") for n in range(3)] == [("finished", None)] * 3
        assert not [e for e in h.errors if e.code == ErrorCode.RATE_LIMITED]
        await h.stop()

    run(test)


def test_the_cache_key_changes_with_voice_emotion_speed_and_volume() -> None:
    voicing = Voicing(emotion="neutral", voice="v", language="en")
    base = SayRequest(id="a", segments=(Segment(text="hi"),))
    key = cache_key("cartesia:sonic-3", base, voicing, 24000)
    assert cache_key("cartesia:sonic-3", base.model_copy(update={"id": "b"}), voicing, 24000) == key

    def with_segment(**values: float) -> SayRequest:
        return base.model_copy(update={"segments": (Segment(text="hi", **values),)})

    others = [
        cache_key("cartesia:sonic-3", base, Voicing(emotion="neutral", voice="w", language="en"), 24000),
        cache_key("cartesia:sonic-3", base, Voicing(emotion="sad", voice="v", language="en"), 24000),
        cache_key("cartesia:sonic-3", with_segment(speed=1.2), voicing, 24000),
        cache_key("cartesia:sonic-3", with_segment(volume=1.5), voicing, 24000),
    ]
    assert len({key, *others}) == 5


def test_cache_false_neither_reads_nor_fills_the_cache(tmp_path: Path) -> None:
    async def test() -> None:
        h = Harness(tmp_path, cache=AudioCache(CacheSettings(dir=tmp_path / "cache")))
        h.start()
        h.speaker.submit(SayRequest(id="off", segments=(Segment(text="not kept"),), cache=False))
        await h.until(lambda: h.end("off"))
        h.speaker.submit(SayRequest(id="on", segments=(Segment(text="kept"),)))
        await h.until(lambda: h.end("on"))
        # The write is in a worker thread; "off" would have been written before "on".
        await until(lambda: list((tmp_path / "cache").glob("*.pcm")), "the cache entry of 'on'")
        assert len(list((tmp_path / "cache").glob("*.pcm"))) == 1  # only "on"
        assert not event(h, "off", "started").cached
        await h.stop()

    run(test)
