"""An in-process daemon on a real broker, for tests that must reach inside it (timers, counters)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mqtt_speaker.daemon import Daemon
from mqtt_speaker.engines.registry import build_engines
from mqtt_speaker.playback.wav import WavWriter
from mqtt_speaker.settings import Settings
from tests.conftest import Broker
from tests.sound import wait_until


def local_settings(broker: Broker, workdir: Path, **values: Any) -> Settings:
    """espeak into WAV files, with this test's own state file, cache and site; nothing from the environment."""
    site = values.pop("site", f"t{uuid.uuid4().hex[:8]}")
    return Settings(
        site=site,
        engine="espeak",
        fallback=[],
        state_file=workdir / f"state-{site}.json",
        cache={"dir": workdir / f"cache-{site}"},
        audio={"output_dir": workdir / f"out-{site}"},
        mqtt={"host": "127.0.0.1", "port": broker.port, "session_expiry": 0},
        **values,
    )


def local_daemon(settings: Settings) -> Daemon:
    assert settings.audio.output_dir is not None
    return Daemon(settings, build_engines(settings), WavWriter(settings.audio.output_dir))


async def until(predicate: Callable[[], object], what: str, within: float = 30) -> None:
    """Wait (in a thread, so the loop under test runs on) until `predicate` holds; fail after `within` seconds."""
    await asyncio.to_thread(wait_until, lambda: bool(predicate()), within, what)
