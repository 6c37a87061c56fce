"""At shutdown `offline` is the last word: a discovery resend scheduled on Home Assistant's birth message
never publishes `online` after the shutdown began."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from tests.conftest import Broker, Observer
from tests.inprocess import local_daemon, local_settings, until


def test_no_online_after_the_shutdown_began(
    broker: Broker, observer: Observer, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = local_settings(broker, workdir)
    availability = f"mqtt-speaker/{settings.site}/availability"
    monkeypatch.setattr(random, "uniform", lambda _low, _high: 0.3)
    stop_requested: list[float] = []

    async def main() -> None:
        daemon = local_daemon(settings)
        link = daemon.link
        real_stop = link.stop

        async def slow_stop(last_words: tuple[str, str] | None = None) -> None:
            await asyncio.sleep(1.0)  # a broker slow to acknowledge: the link is still up meanwhile
            await real_stop(last_words)

        monkeypatch.setattr(link, "stop", slow_stop)
        stop = asyncio.Event()
        running = asyncio.create_task(daemon.run(stop))
        await until(lambda: observer.on(availability), "online")
        await asyncio.to_thread(observer.publish, "homeassistant/status", "online")
        # Messages are handled in order: once this one's error is out, the birth message has been seen.
        await asyncio.to_thread(observer.publish, f"mqtt-speaker/{settings.site}/set/volume", "loud")
        await until(lambda: observer.on(f"mqtt-speaker/{settings.site}/error"), "the probe's error")
        stop_requested.append(time.monotonic())
        stop.set()
        await running

    asyncio.run(main())
    late = [m.payload for m in observer.on(availability) if m.received > stop_requested[0]]
    assert late == [b"offline"], late
