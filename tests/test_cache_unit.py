"""The audio cache under disk trouble: a read that loses a race with eviction, a read-only disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mqtt_speaker.cache import AudioCache
from mqtt_speaker.engines.base import AudioChunk
from mqtt_speaker.settings import CacheSettings


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
