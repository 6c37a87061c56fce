"""Unit tests of the playback pieces that need no sound device."""

from __future__ import annotations

import numpy as np

from mqtt_speaker.audio import Resampler
from mqtt_speaker.engines.base import PcmAssembler


def test_streaming_resampler_keeps_pitch_and_length_across_chunk_boundaries() -> None:
    source = (np.sin(np.arange(22050) * 2 * np.pi * 440 / 22050) * 16000).astype(np.int16)
    resample = Resampler(22050, 44100)
    out = np.concatenate([*(resample(source[i : i + 777]) for i in range(0, source.size, 777)), resample.flush()])
    assert abs(out.size - 44100) <= 2
    spectrum = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spectrum) * 44100 / out.size - 440) < 1.5
    assert np.abs(np.diff(out.astype(np.float64))).max() < 0.07 * 32768  # no clicks at the joins


def test_resampling_adds_nothing_above_the_sources_nyquist_frequency() -> None:
    """Linear interpolation mirrored a 5 kHz tone from 22.05 kHz to 17 kHz on a 48 kHz device."""
    source = (np.sin(np.arange(22050) * 2 * np.pi * 5000 / 22050) * 16000).astype(np.int16)
    resample = Resampler(22050, 48000)
    out = np.concatenate([*(resample(source[i : i + 441]) for i in range(0, source.size, 441)), resample.flush()])
    power = np.abs(np.fft.rfft(out.astype(np.float64) * np.hanning(out.size))) ** 2
    above = power[np.fft.rfftfreq(out.size, 1 / 48000) > 11025].sum()
    assert above / power.sum() < 1e-5  # below -50 dB


def test_same_rate_passes_through() -> None:
    x = np.ones(10, dtype=np.int16)
    assert Resampler(44100, 44100)(x) is x


def test_pcm_assembler_carries_an_odd_byte() -> None:
    pcm = PcmAssembler()
    assert pcm.feed(b"\x01\x00\x02").tolist() == [1]
    assert pcm.feed(b"\x00").tolist() == [2]
