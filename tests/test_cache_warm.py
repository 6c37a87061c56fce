"""cache/warm: one warmer with a bounded queue, and nothing warmed once the shutdown has begun."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.conftest import Broker, Observer
from tests.inprocess import local_daemon, local_settings, until

LONG = "The washing machine in the basement has finished its cycle and the laundry is ready to hang. "


def test_a_flood_of_cache_warm_lists_is_bounded_with_an_error(
    broker: Broker, observer: Observer, workdir: Path
) -> None:
    settings = local_settings(broker, workdir)
    topic = f"mqtt-speaker/{settings.site}/"

    def errors() -> list[dict[str, object]]:
        return [m.json() for m in observer.on(topic + "error")]

    async def main() -> None:
        daemon = local_daemon(settings)
        stop = asyncio.Event()
        running = asyncio.create_task(daemon.run(stop))
        await until(lambda: observer.on(topic + "availability"), "online")
        for n in range(30):  # each list takes espeak seconds: far more than the warmer can take at once
            observer.client.publish(topic + "cache/warm", json.dumps([f"{n}. {LONG * 20}"]), qos=1)
        await until(lambda: any(e["code"] == "queue_full" for e in errors()), "a queue_full error")
        stop.set()
        await running

    asyncio.run(main())
    refused = [e for e in errors() if e["code"] == "queue_full"]
    assert refused[0]["field"] == "warm" and "cache/warm lists are already waiting" in str(refused[0]["message"])
    assert len(refused) >= 30 - 1 - 8 - 2  # one being warmed, eight waiting (two may be taken meanwhile)


def test_a_cache_warm_during_the_shutdown_is_refused(
    broker: Broker, observer: Observer, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = local_settings(broker, workdir)
    topic = f"mqtt-speaker/{settings.site}/"

    async def main() -> None:
        daemon = local_daemon(settings)
        link = daemon.link
        real_stop = link.stop

        async def slow_stop(last_words: tuple[str, str] | None = None) -> None:
            await asyncio.sleep(0.5)  # the engines are closed; the link is still up
            await asyncio.to_thread(observer.publish, topic + "cache/warm", '["Good morning"]')
            await until(lambda: observer.on(topic + "error"), "an error about the warm")
            await asyncio.sleep(1.0)  # what a warm task would need to store the audio
            await real_stop(last_words)

        monkeypatch.setattr(link, "stop", slow_stop)
        stop = asyncio.Event()
        running = asyncio.create_task(daemon.run(stop))
        await until(lambda: observer.on(topic + "availability"), "online")
        stop.set()
        await running

    asyncio.run(main())
    [error] = [m.json() for m in observer.on(topic + "error")]
    assert "shutting down" in error["message"]
    assert not list(settings.cache.dir.glob("*.pcm"))
