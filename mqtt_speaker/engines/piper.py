"""Piper, the local neural voice (the optional extra mqtt-speaker[piper]): sentence by sentence, so the
first sentence plays while the next one is synthesized. Piper has no emotion; speed maps onto its
length scale and generation volume onto its volume.

ONNX inference blocks, so each sentence is produced in a worker thread; the voice is loaded once. A
sentence whose request moved on (interrupted, or its engine abandoned) is stopped mid-inference through
onnxruntime's RunOptions.terminate, so it does not keep the CPU from the next request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import numpy as np

from mqtt_speaker.engines.base import SynthesisError, Voicing
from mqtt_speaker.settings import PiperSettings
from mqtt_speaker.speech.audio import AudioChunk
from mqtt_speaker.speech.text import Script
from mqtt_speaker.speech.vocabulary import ErrorCode

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
        self._session: _StoppableSession | None = None  # the voice's ONNX session, stoppable

    @property
    def in_flight(self) -> asyncio.Future[Any] | None:
        """The sentence being made in the worker thread (or the last one made)."""
        return self._sentence

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
        self._session = voice.session = _StoppableSession(voice.session)
        return voice

    async def _ready(self) -> Any:
        if self._voice is None:
            if self._loading is None or (self._loading.done() and self._loading.exception()):
                self._loading = asyncio.ensure_future(asyncio.to_thread(self._load))
            self._voice = await asyncio.shield(self._loading)
        return self._voice

    async def _next_sentence(self, sentences: Iterator[Any]) -> Any:
        """The next sentence's audio, made in a worker thread. One abandoned by an interrupted request is
        stopped (see _abandon), and the next one waits for it to end rather than run beside it."""
        abandoned = self._sentence
        if abandoned is not None and not abandoned.done():
            await asyncio.wait({abandoned})
        if self._session is not None:
            self._session.fresh()
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
            try:
                while True:
                    try:
                        chunk = await self._next_sentence(sentences)
                    except (RuntimeError, ValueError) as exc:
                        raise SynthesisError(ErrorCode.SYNTHESIS_FAILED, f"Piper failed: {exc}") from exc
                    if chunk is None:
                        break
                    samples = np.asarray(chunk.audio_int16_array, dtype=np.int16)
                    yield AudioChunk(samples=samples, sample_rate=int(chunk.sample_rate), segment=index)
            finally:  # closed early (the request moved on): the sentence being made is not wanted
                self._abandon()
            spoken = piece.offset + len(piece.text)
            yield AudioChunk(np.zeros(0, dtype=np.int16), voice.config.sample_rate, index, spoken=spoken)

    def _abandon(self) -> None:
        """Stop the sentence being made, if any (its worker thread's ONNX run ends with an error)."""
        if self._sentence is not None and not self._sentence.done() and self._session is not None:
            LOG.debug("Piper: stopping an abandoned sentence")
            self._session.stop()


class _StoppableSession:
    """The voice's onnxruntime session, each run with RunOptions whose `terminate` stops it mid-way."""

    def __init__(self, session: Any) -> None:
        import onnxruntime

        self._session = session
        self._options_type = onnxruntime.RunOptions
        self._options = onnxruntime.RunOptions()

    def fresh(self) -> None:
        """Options for the next run (a terminated one stays terminated)."""
        self._options = self._options_type()

    def stop(self) -> None:
        self._options.terminate = True  # onnxruntime checks it between nodes, from another thread too

    def run(self, output_names: Any, inputs: Any) -> Any:
        return self._session.run(output_names, inputs, self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _discard_result(done: asyncio.Future[Any]) -> None:
    """An abandoned sentence's outcome is not wanted (retrieved, so that asyncio does not warn)."""
    if not done.cancelled():
        done.exception()
