"""Chimes: the default one, made here, and named WAV files from the configured sounds folder."""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np

from mqtt_speaker.speech.audio import CHIME_SEGMENT, AudioChunk, Pcm

LOG = logging.getLogger(__name__)
CHUNK = 2048


def default_chime(rate: int) -> Pcm:
    """A soft two-note "ding-dong" (E5 then C5, bell-like partials, 0.8 s), made with numpy."""
    length = int(0.8 * rate)
    t = np.arange(length) / rate
    out = np.zeros(length)
    for start, pitch in ((0.0, 659.25), (0.25, 523.25)):
        local = t - start
        on = local >= 0
        envelope = np.where(on, np.exp(-np.clip(local, 0, None) * 6.0), 0.0)
        envelope *= np.clip(local / 0.006, 0, 1)  # a 6 ms attack: no click
        for harmonic, weight in ((1, 1.0), (2, 0.25), (3, 0.08)):
            out += weight * envelope * np.sin(2 * np.pi * pitch * harmonic * local)
    out *= np.clip((length - np.arange(length)) / (0.02 * rate), 0, 1)  # 20 ms tail fade
    chime: Pcm = (out / np.abs(out).max() * 0.35 * 32767).astype(np.int16)
    return chime


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError("only 16-bit PCM WAV files are supported")
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        channels = wav.getnchannels()
        if channels > 1:
            frames = frames.reshape(-1, channels).mean(axis=1)
        return frames.astype(np.int16), wav.getframerate()


class Sounds:
    def __init__(self, directory: Path | None) -> None:
        self._dir = directory

    def chunks(self, name: bool | str, rate: int) -> list[AudioChunk] | None:
        """The chime's audio as chunks (segment CHIME_SEGMENT); None when a named sound cannot be had."""
        if name is False:
            return []
        if name is True:
            samples, sound_rate = default_chime(rate), rate
        else:
            if self._dir is None:
                return None
            try:
                samples, sound_rate = _read_wav(self._dir / f"{name}.wav")
            except (OSError, ValueError, EOFError, wave.Error) as exc:
                LOG.warning("sound %r: %s", name, exc)
                return None
        return [
            AudioChunk(samples=samples[i : i + CHUNK], sample_rate=sound_rate, segment=CHIME_SEGMENT)
            for i in range(0, samples.size, CHUNK)
        ]
