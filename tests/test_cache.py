"""The audio cache under disk trouble: a read that loses a race with eviction, a read-only disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mqtt_speaker.core.cache import AudioCache
from mqtt_speaker.settings import CacheSettings
from mqtt_speaker.speech.audio import AudioChunk


def test_a_hit_is_returned_even_when_its_time_cannot_be_updated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = AudioCache(CacheSettings(dir=tmp_path))
    samples = np.arange(480, dtype=np.int16)
    cache.put("k", [AudioChunk(samples, 24000, 0)])

    def gone(path: object, *args: object, **kwargs: object) -> None:
        raise FileNotFoundError(2, "evicted meanwhile", str(path))  # or EROFS: the same for the reader

    monkeypatch.setattr(os, "utime", gone)
    hit = cache.get("k")
    assert hit is not None
    assert np.array_equal(np.concatenate([c.samples for c in hit]), samples)


def test_a_hit_replays_one_chunk_per_segment_and_rate_with_every_sample(tmp_path: Path) -> None:
    # The engine's 20 ms chunks would each cost the event loop a turn when replayed.
    cache = AudioCache(CacheSettings(dir=tmp_path))
    chime = [AudioChunk(np.full(441, 7, dtype=np.int16), 44100, -1)]
    voice = [AudioChunk(np.arange(n * 100, n * 100 + 100, dtype=np.int16), 24000, n // 3) for n in range(6)]
    cache.put("k", chime + voice)
    hit = cache.get("k")
    assert hit is not None
    parts = [(c.segment, c.sample_rate, c.samples.size) for c in hit]
    assert parts == [(-1, 44100, 441), (0, 24000, 300), (1, 24000, 300)]
    assert np.array_equal(np.concatenate([c.samples for c in hit[1:]]), np.arange(600, dtype=np.int16))
