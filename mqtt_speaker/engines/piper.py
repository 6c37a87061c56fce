"""Piper, the local neural voice (the optional extra mqtt-speaker[piper]): sentence by sentence, so the
first sentence plays while the next one is synthesized. Piper has no emotion; speed maps onto its
length scale and generation volume onto its volume.

ONNX inference blocks, so each sentence is produced in a worker thread; the voice is loaded once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import numpy as np

from mqtt_speaker.engines.base import AudioChunk, SynthesisError, Voicing
from mqtt_speaker.models import ErrorCode
from mqtt_speaker.settings import PiperSettings
from mqtt_speaker.text import Script

LOG = logging.getLogger(__name__)


class PiperEngine:
    name = "piper"
    billed = False
    emotion_applied = False

    def __init__(self, settings: PiperSettings) -> None:
        self._settings = settings
        self._voice: Any = None
        self._loading: asyncio.Task[Any] | None = None
        self._sentence: asyncio.Future[Any] | None = None  # the sentence being made in the worker thread

    @property
    def identity(self) -> str:
        return f"piper:{self._settings.model.name if self._settings.model else None}"

    def problem(self) -> SynthesisError | None:
        if self._loading is None or not self._loading.done() or self._loading.cancelled():
            return None
        error = self._loading.exception()
        return error if isinstance(error, SynthesisError) else None

    def _load(self) -> Any:
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise SynthesisError(
                ErrorCode.ENGINE_UNAVAILABLE, "Piper is not installed (pip install 'mqtt-speaker[piper]')"
            ) from exc
        model = self._settings.model
        if model is None or not model.is_file():
            raise SynthesisError(ErrorCode.ENGINE_UNAVAILABLE, f"no Piper voice model at {model}")
        config = self._settings.config or model.with_name(model.name + ".json")
        try:
            voice = PiperVoice.load(str(model), config_path=str(config))
        except (OSError, ValueError, RuntimeError) as exc:
            raise SynthesisError(ErrorCode.ENGINE_UNAVAILABLE, f"cannot load the Piper voice {model}: {exc}") from exc
        LOG.info("Piper voice %s loaded (%d Hz)", model.name, voice.config.sample_rate)
        return voice

    async def _ready(self) -> Any:
        if self._voice is None:
            if self._loading is None or (self._loading.done() and self._loading.exception()):
                self._loading = asyncio.ensure_future(asyncio.to_thread(self._load))
            self._voice = await asyncio.shield(self._loading)
        return self._voice

    async def _next_sentence(self, sentences: Iterator[Any]) -> Any:
        """The next sentence's audio, made in a worker thread. ONNX inference cannot be stopped: a sentence
        abandoned by an interrupted request runs to its end, unawaited, and the next one waits for it
        rather than competing with it for the CPU."""
        abandoned = self._sentence
        if abandoned is not None and not abandoned.done():
            await asyncio.wait({abandoned})
        self._sentence = asyncio.ensure_future(asyncio.to_thread(next, sentences, None))
        self._sentence.add_done_callback(_discard_result)
        return await asyncio.shield(self._sentence)

    async def start(self) -> None:
        try:
            await self._ready()
        except SynthesisError as exc:
            LOG.warning("%s", exc.message)

    async def close(self) -> None:
        """The voice is only memory."""

    async def synthesize(self, script: Script, voicing: Voicing, sample_rate: int) -> AsyncGenerator[AudioChunk, None]:
        """Piece by piece (a whole segment of a plain say, a sentence of a stream as it arrives)."""
        from piper import SynthesisConfig

        voice = await self._ready()
        async for piece in script.pieces():
            if not piece.text.strip():
                continue
            segment, index = piece.voice, piece.segment
            config = SynthesisConfig(
                length_scale=1.0 / segment.speed if segment.speed else None,
                volume=segment.volume if segment.volume is not None else 1.0,
            )
            sentences: Iterator[Any] = iter(voice.synthesize(piece.text, syn_config=config))
            while True:
                try:
                    chunk = await self._next_sentence(sentences)
                except (RuntimeError, ValueError) as exc:
                    raise SynthesisError(ErrorCode.SYNTHESIS_FAILED, f"Piper failed: {exc}") from exc
                if chunk is None:
                    break
                samples = np.asarray(chunk.audio_int16_array, dtype=np.int16)
                yield AudioChunk(samples=samples, sample_rate=int(chunk.sample_rate), segment=index)


def _discard_result(done: asyncio.Future[Any]) -> None:
    """An abandoned sentence's outcome is not wanted (retrieved, so that asyncio does not warn)."""
    if not done.cancelled():
        done.exception()
