"""Samples on their way to the device: resampled to its rate (soxr) and scaled to the playback volume."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import soxr

from mqtt_speaker.speech.audio import AudioChunk, Pcm

Samples = npt.NDArray[np.float32]
EMPTY: Pcm = np.zeros(0, dtype=np.int16)


class Resampler:
    """Streaming band-limited resampler (soxr) for speech from 22.05 kHz engines onto a 44.1/48 kHz device.

    It keeps a few milliseconds of state between chunks, so a stream is resampled without seams;
    flush() returns what it still holds at the end of a stream.
    """

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.source_rate = source_rate
        self._stream = (
            None
            if source_rate == target_rate
            else soxr.ResampleStream(source_rate, target_rate, 1, dtype="int16", quality="HQ")
        )

    def __call__(self, pcm: Pcm) -> Pcm:
        if self._stream is None or pcm.size == 0:
            return pcm
        out: Pcm = self._stream.resample_chunk(pcm)
        return out

    def flush(self) -> Pcm:
        if self._stream is None:
            return EMPTY
        out: Pcm = self._stream.resample_chunk(EMPTY, last=True)
        return out


class Feed:
    """An utterance's chunks as samples at the device's rate and the playback's gain: one resampler per
    source rate (the chime's may differ from the voice's), flushed when the rate changes and at the end.
    The gain is read for every chunk, so a volume or mute change reaches what is handed over next."""

    def __init__(self, rate: int, gain: Callable[[], float]) -> None:
        self.rate = rate
        self._gain = gain
        self._resampler: Resampler | None = None

    def __call__(self, chunk: AudioChunk) -> list[Pcm]:
        out: list[Pcm] = []
        gain = self._gain()
        if self._resampler is None or chunk.sample_rate != self._resampler.source_rate:
            if self._resampler is not None:
                out.append(scaled(self._resampler.flush(), gain))
            self._resampler = Resampler(chunk.sample_rate, self.rate)
        out.append(scaled(self._resampler(chunk.samples), gain))
        return out

    def end(self) -> Pcm:
        return EMPTY if self._resampler is None else scaled(self._resampler.flush(), self._gain())


def to_float(samples: Pcm) -> Samples:
    return (samples.astype(np.float32) / 32768.0).astype(np.float32)


def scaled(samples: Pcm, gain: float) -> Pcm:
    if gain == 1.0:
        return samples
    return (samples * gain).astype(np.int16)
