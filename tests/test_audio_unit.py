"""Unit tests of the playback pieces that need no sound device: the resampler and the FIFO."""

from __future__ import annotations

import numpy as np

from mqtt_speaker.audio import Resampler, _Fifo
from mqtt_speaker.engines.base import PcmAssembler


def test_streaming_resampler_keeps_pitch_and_length_across_chunk_boundaries() -> None:
    source = np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050).astype(np.float32)
    resample = Resampler(22050, 44100)
    out = np.concatenate([resample(source[i : i + 777]) for i in range(0, source.size, 777)])
    assert abs(out.size - 44100) <= 2
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 44100 / out.size - 440) < 1.5
    assert np.abs(np.diff(out)).max() < 0.07  # no clicks at the joins


def test_same_rate_passes_through() -> None:
    x = np.ones(10, dtype=np.float32)
    assert Resampler(44100, 44100)(x) is x


def test_fifo_plays_in_order_then_silence_and_reports_drained() -> None:
    fifo = _Fifo()
    drained: list[bool] = []
    fifo.begin(lambda: drained.append(True))
    fifo.write(np.array([1, 2, 3], dtype=np.float32))
    fifo.write(np.array([4, 5], dtype=np.float32))
    out = np.full(4, -1, dtype=np.float32)
    fifo.read_into(out)
    assert out.tolist() == [1, 2, 3, 4] and not drained
    fifo.end()
    fifo.read_into(out)
    assert out.tolist() == [5, 0, 0, 0] and drained == [True] and fifo.played == 5


def test_fifo_signals_room_once_below_the_mark() -> None:
    fifo = _Fifo()
    fifo.begin(lambda: None)
    fifo.write(np.zeros(10, dtype=np.float32))
    calls: list[int] = []
    fifo.room_below = 5
    fifo.on_room = lambda: calls.append(fifo.buffered)
    fifo.read_into(np.zeros(3, dtype=np.float32))
    assert calls == []
    fifo.read_into(np.zeros(3, dtype=np.float32))
    fifo.read_into(np.zeros(3, dtype=np.float32))
    assert calls == [4]


def test_pcm_assembler_carries_an_odd_byte() -> None:
    pcm = PcmAssembler()
    assert pcm.feed(b"\x01\x00\x02").tolist() == [1]
    assert pcm.feed(b"\x00").tolist() == [2]
