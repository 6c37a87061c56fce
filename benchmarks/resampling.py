"""The resampler before and after: CPU per second of speech and energy above the source's Nyquist frequency.

`Linear` is the streaming linear interpolation the daemon used before soxr, kept here only as the
benchmark's reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from mqtt_speaker.playback.pcm import Resampler
from mqtt_speaker.speech.audio import Pcm


class Linear:
    """The old resampler: streaming linear interpolation, float32 inside."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self._step = source_rate / target_rate
        self._position = 0.0
        self._last: float | None = None

    def __call__(self, pcm: Pcm) -> Pcm:
        samples = pcm.astype(np.float32) / 32768.0
        data = samples if self._last is None else np.concatenate(([self._last], samples)).astype(np.float32)
        positions = np.arange(self._position, data.size - 1, self._step)
        out = np.interp(positions, np.arange(data.size), data).astype(np.float32)
        self._position = (positions[-1] + self._step - (data.size - 1)) if positions.size else self._position
        self._last = float(data[-1])
        pcm_out: Pcm = (np.clip(out, -1, 1) * 32767).astype(np.int16)
        return pcm_out

    def flush(self) -> Pcm:
        return np.zeros(0, dtype=np.int16)


def resample_all(make: Callable[[int, int], Linear | Resampler], pcm: Pcm, source: int, target: int, chunk: int) -> Pcm:
    resample = make(source, target)
    parts = [resample(pcm[i : i + chunk]) for i in range(0, pcm.size, chunk)]
    return np.concatenate([*parts, resample.flush()])


def cpu_percent(make: Callable[[int, int], Linear | Resampler], source: int, target: int, chunk: int) -> float:
    """CPU (% of one core) per second of speech, resampling 20 s of noise-like audio in `chunk`s."""
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(source * 20) * 3000).astype(np.int16)
    began = time.process_time()
    for _ in range(3):
        resample_all(make, pcm, source, target, chunk)
    return (time.process_time() - began) / 3 / 20 * 100


def energy_above(signal: np.ndarray, rate: int, cutoff: float) -> float:
    """Share of the signal's energy above `cutoff` Hz, in dB."""
    power = np.abs(np.fft.rfft(signal.astype(np.float64) * np.hanning(signal.size))) ** 2
    above = power[np.fft.rfftfreq(signal.size, 1 / rate) > cutoff].sum()
    return float(10 * np.log10(max(above, 1e-30) / power.sum()))


def compare(source: int = 22050, target: int = 48000) -> dict[str, dict[str, float]]:
    tone = (np.sin(np.arange(source) * 2 * np.pi * 5000 / source) * 16000).astype(np.int16)
    figures: dict[str, dict[str, float]] = {}
    for name, make in (("linear (before)", Linear), ("soxr HQ (after)", Resampler)):
        figures[name] = {
            "cpu_percent_20ms_chunks": cpu_percent(make, source, target, source // 50),
            "cpu_percent_1s_chunks": cpu_percent(make, source, target, source),
            "tone_5khz_energy_above_nyquist_db": energy_above(
                resample_all(make, tone, source, target, 441), target, source / 2
            ),
        }
    return figures


if __name__ == "__main__":
    for name, values in compare().items():
        print(name, {k: round(v, 3) for k, v in values.items()})
