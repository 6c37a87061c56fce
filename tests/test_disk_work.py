"""Disk work stays off the event loop, and a failed write leaves no temporary file behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mqtt_speaker.core.cache import AudioCache
from mqtt_speaker.core.speaker import Speaker
from mqtt_speaker.files import write_atomically
from mqtt_speaker.playback.sounds import Sounds
from mqtt_speaker.settings import CacheSettings, Settings
from mqtt_speaker.speech.audio import AudioChunk
from mqtt_speaker.speech.vocabulary import SayRequest, Segment
from tests.fakes import FakeEngine, FakeOutput, Recorder

FULL_DISK = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
"""


def run_with_a_full_disk(code: str) -> None:
    script = FULL_DISK + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_a_failed_cache_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    run_with_a_full_disk(
        f"""
        import numpy as np
        from pathlib import Path
        from mqtt_speaker.core.cache import AudioCache
        from mqtt_speaker.speech.audio import AudioChunk
        from mqtt_speaker.settings import CacheSettings
        cache = AudioCache(CacheSettings(dir=Path({str(tmp_path)!r})))
        cache.put("k", [AudioChunk(np.ones(16000, dtype=np.int16), 16000, 0)])
        """
    )
    assert list(tmp_path.iterdir()) == []


def test_a_failed_state_file_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    run_with_a_full_disk(
        f"""
        import asyncio
        from pathlib import Path
        from mqtt_speaker.core.defaults import Defaults
        from mqtt_speaker.settings import Settings

        async def main():
            defaults = Defaults(Settings(state_file=Path({str(tmp_path)!r}) / "state.json"))
            defaults.set(volume=50, emotion="calm", voice="x" * 200)
            await defaults.saved()

        asyncio.run(main())
        """
    )
    assert list(tmp_path.iterdir()) == []


def test_cache_clear_also_removes_what_a_crash_left(tmp_path: Path) -> None:
    cache = AudioCache(CacheSettings(dir=tmp_path))
    cache.put("k", [AudioChunk(np.ones(100, dtype=np.int16), 16000, 0)])
    (tmp_path / ".tmp-crashed").write_bytes(b"half")
    assert cache.clear() == 1
    assert list(tmp_path.iterdir()) == []


def test_cache_clear_state_writes_and_chime_files_run_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: dict[str, list[threading.Thread]] = {"clear": [], "save": [], "chime": []}

    def recorded(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            threads[name].append(threading.current_thread())
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(AudioCache, "clear", recorded("clear", AudioCache.clear))
    monkeypatch.setattr("mqtt_speaker.core.defaults.write_atomically", recorded("save", write_atomically))
    monkeypatch.setattr(Sounds, "chunks", recorded("chime", Sounds.chunks))
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    with wave.open(str(sounds / "ding.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(np.zeros(1600, dtype=np.int16).tobytes())
    settings = Settings(state_file=tmp_path / "state.json", sounds_dir=sounds, cache=CacheSettings(dir=tmp_path / "c"))

    async def main() -> None:
        listener = Recorder()
        speaker = Speaker({"fake": FakeEngine()}, FakeOutput(), settings, listener, cache=AudioCache(settings.cache))
        worker = asyncio.create_task(speaker.run())
        speaker.update_defaults(volume=40)
        speaker.clear_cache()
        speaker.submit(SayRequest(id="r", segments=(Segment(text="hello"),), chime="ding"))
        async with asyncio.timeout(30):
            while not any(e.event_type == "finished" for e in listener.events):
                listener.noted.clear()
                await listener.noted.wait()
        await speaker.shutdown(grace=1)
        worker.cancel()

    asyncio.run(main())
    assert all(threads.values()), threads
    main_thread = threading.main_thread()
    assert all(thread is not main_thread for calls in threads.values() for thread in calls), threads
    assert json.loads((tmp_path / "state.json").read_bytes())["set"]["volume"] == 40


def test_a_temporary_file_left_by_a_crash_long_ago_is_evicted_on_the_next_write(tmp_path: Path) -> None:
    cache = AudioCache(CacheSettings(dir=tmp_path))
    old, recent = tmp_path / ".tmp-old", tmp_path / ".tmp-being-written"
    old.write_bytes(b"half")
    recent.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    cache.put("k", [AudioChunk(np.ones(100, dtype=np.int16), 16000, 0)])
    assert not old.exists() and recent.exists()  # another writer's file, in progress, is left alone
