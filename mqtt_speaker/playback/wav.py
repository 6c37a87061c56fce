"""Output for machines without sound: each utterance is written to <output_dir>/<time>-<id>.wav, as fast as
it arrives, through the same play loop as the sound devices (resampled to one rate, chime and voice)."""

from __future__ import annotations

import contextlib
import logging
import re
import wave
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mqtt_speaker.playback.output import (
    DEFAULT_RATE,
    Announcer,
    AudioDeviceError,
    Playback,
    Played,
    play_utterance,
)
from mqtt_speaker.speech.audio import AudioChunk, Pcm

LOG = logging.getLogger(__name__)


class WavWriter:
    """Writes each utterance to <output_dir>/<time>-<id>.wav instead of playing it, at `sample_rate`."""

    def __init__(self, directory: Path, sample_rate: int | None = None, max_buffer_seconds: float = 30.0) -> None:
        self._dir = directory
        self._rate = sample_rate or DEFAULT_RATE
        self._max_buffer = max_buffer_seconds

    @property
    def sample_rate(self) -> int:
        return self._rate

    async def play(self, chunks: AsyncIterator[AudioChunk], playback: Playback) -> Played:
        return await play_utterance(self, chunks, playback, self._max_buffer)

    async def open_sink(self, playback: Playback, announcer: Announcer) -> _WavSink:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AudioDeviceError(f"cannot create the output directory {self._dir}: {exc}") from exc
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
        path = self._dir / f"{stamp}-{re.sub(r'[^A-Za-z0-9_.-]', '_', playback.name)[:80]}.wav"
        if playback.start is not None:  # a file has no clock: its first sample is "on time"
            announcer.placed(0.0)
        return _WavSink(path, self._rate)

    def turn_over(self) -> None:
        """Nothing is held open between utterances."""

    async def close(self) -> None:
        """Nothing is held open between utterances."""


class _WavSink:
    """One utterance's file: written as the samples come, closed at the end (or on a stop)."""

    def __init__(self, path: Path, rate: int) -> None:
        self.rate = rate
        self.queued = 0  # nothing waits: a file takes everything at once
        self._path = path
        self._frames = 0
        try:
            self._file: Any = wave.open(str(path), "wb")  # noqa: SIM115 - closed by finish, fade or abandon
        except OSError as exc:
            raise AudioDeviceError(f"cannot write {path}: {exc}") from exc
        self._file.setnchannels(1)
        self._file.setsampwidth(2)
        self._file.setframerate(rate)

    def put(self, samples: Pcm) -> None:
        try:
            self._file.writeframes(samples.astype("<i2").tobytes())
        except OSError as exc:
            raise AudioDeviceError(f"cannot write {self._path}: {exc}") from exc
        self._frames += samples.size

    async def room(self, below: int, stopping: Any) -> None:
        """A file always has room."""

    async def finish(self, stopping: Any) -> float:
        return self._close()

    async def fade(self) -> float:
        return self._close()

    def abandon(self) -> None:
        with contextlib.suppress(AudioDeviceError):  # the error that abandons it is the one to report
            self._close()

    def _close(self) -> float:
        try:
            self._file.close()
        except OSError as exc:
            raise AudioDeviceError(f"cannot write {self._path}: {exc}") from exc
        seconds = self._frames / self.rate
        LOG.info("wrote %s (%.2f s)", self._path, seconds)
        return seconds
