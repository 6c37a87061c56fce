"""The voicing of one request: engine choice, fallback and resume, chime, cache and cost guard.

`speak(job)` plays a request's text (a Script, read as it arrives) with the first engine that works;
when one fails mid-way the next goes on from the first word not heard whole. A request for media plays
its URL instead (engines/media.py), and one whose text no engine can speak may name a URL to play in its
place. It returns the request's terminal event; the scheduler publishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace

from mqtt_speaker.core.cache import AudioCache, cache_key, recording, replay
from mqtt_speaker.core.costguard import CostGuard
from mqtt_speaker.core.defaults import Defaults
from mqtt_speaker.core.listener import Listener
from mqtt_speaker.core.problems import Problems
from mqtt_speaker.core.scheduler import Job
from mqtt_speaker.core.shared import SHARED_ENGINE, SharedSource
from mqtt_speaker.engines.base import Engine, SynthesisError, Voicing
from mqtt_speaker.engines.media import MediaSource
from mqtt_speaker.engines.registry import unavailable
from mqtt_speaker.playback.ducking import Ducker, Lowering, once_lowered
from mqtt_speaker.playback.output import AudioDeviceError, Output, Playback, Played, StartGate
from mqtt_speaker.playback.sounds import Sounds
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.audio import CHIME_SEGMENT, AudioChunk
from mqtt_speaker.speech.text import NOTHING_TO_SPEAK, Meter, Piece, Script, speakable
from mqtt_speaker.speech.vocabulary import (
    MEDIA,
    ErrorCode,
    ErrorReport,
    Event,
    FailedEvent,
    FinishedEvent,
    InterruptedEvent,
    Priority,
    SayRequest,
    StartedEvent,
    is_media_url,
)

LOG = logging.getLogger(__name__)
PREFETCH_CHUNKS = 256
MEDIA_LEAD = 2.0  # seconds of media handed to the device ahead of what is heard: a volume change is soon heard
CHIME_MAX_SECONDS = 30.0  # a chime from a URL is cut there


class Voice:
    """Speaks one request at a time with the engines (event loop only)."""

    def __init__(  # noqa: PLR0913 - the parts a voice is made of (keyword-only)
        self,
        engines: dict[str, Engine],
        output: Output,
        settings: Settings,
        *,
        defaults: Defaults,
        listener: Listener,
        problems: Problems,
        primary: str | None = None,
        cache: AudioCache | None = None,
        ducker: Ducker | None = None,
        guard: CostGuard | None = None,
    ) -> None:
        self._engines = engines
        self._primary = primary or next(iter(engines))
        self._cache = cache
        self._ducker = ducker
        self._clearing: asyncio.Future[int] | None = None  # cache/clear in a worker thread
        self._output = output
        self._settings = settings
        self._defaults = defaults
        self._listener = listener
        self._problems = problems
        self._guard = guard or CostGuard(settings)
        self._sounds = Sounds(settings.sounds_dir)
        self._media = MediaSource(settings.media)
        self._failing: set[str] = set()
        self._writes: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------------------------ cost guard

    def refuse(self, job: Job) -> ErrorReport | None:
        """The cost guard before a request starts: why it may not (rate_limited), or None. A text still
        arriving is charged piece by piece as it is pushed instead (see _meter)."""
        names = self.candidates(job.request)
        if not job.text.ended or job.request.media is not None or not names:
            return None
        engine = self._engines[names[0]]
        whole = job.request.model_copy(update={"segments": job.text.segments()})
        return self._charge(engine, whole, "", job.text.length)

    def _charge(
        self, engine: Engine, request: SayRequest, what: str, chars: int, *, whole: bool = True
    ) -> ErrorReport | None:
        """Count the `chars` `engine` is about to be paid for; the error instead, if that would pass a
        limit. Free: an engine that does not bill, one known to be down (a fallback speaks), a cache hit
        (when `whole`: the chars are the request's whole text, so its cache key is known)."""
        if not engine.billed or engine.problem() is not None or (whole and self._in_cache(engine, request)):
            return None
        return self._guard.charge(request, chars, what)

    def _meter(self, engine: Engine, request: SayRequest) -> Meter:
        """The cost guard for a text still arriving: each piece is charged as it is pushed."""

        def charge(piece: Piece) -> None:
            refused = self._charge(engine, request, "", len(piece.text), whole=False)
            if refused is not None:  # everything before this piece was pushed: the rest goes on from here
                self._listener.on_error(refused)
                raise SynthesisError(
                    ErrorCode.RATE_LIMITED, refused.message, spoken_chars=piece.offset, segment=piece.segment
                )

        return charge

    def _in_cache(self, engine: Engine, request: SayRequest) -> bool:
        cache = self._cache
        if cache is None or not cache.enabled or not request.cache:
            return False
        return cache.has(cache_key(engine.identity, request, self.voicing(request), self._output.sample_rate))

    # --------------------------------------------------------------------------------------- speaking

    def voicing(self, request: SayRequest) -> Voicing:
        """The defaults it is spoken with where it does not say otherwise."""
        return Voicing(
            emotion=self._defaults.current.emotion,
            voice=self._settings.voice_id(request.voice or self._defaults.current.voice),
            language=request.language or self._settings.cartesia.language,
        )

    def _gain(self, request: SayRequest) -> Callable[[], float]:
        """The playback volume, read as the audio is handed over (so a change reaches what plays next): the
        request's own or the default one, and nothing while muted; a critical request is always heard."""

        def gain() -> float:
            current = self._defaults.current
            if current.muted and request.priority is not Priority.CRITICAL:
                return 0.0
            return request.volume if request.volume is not None else current.volume / 100

        return gain

    async def _with_chime(self, job: Job, speech: AsyncGenerator[AudioChunk, None]) -> AsyncGenerator[AudioChunk, None]:
        """The speech, after the chime when one is asked for (its synthesis starts at once, in parallel).
        A chime file is read in a worker thread; a chime from a URL is fetched as it plays."""
        request = job.request
        if request.chime is False:
            return speech
        if is_media_url(request.chime):
            assert isinstance(request.chime, str)
            fetched = self._media.stream(
                request.chime, self._output.sample_rate, segment=CHIME_SEGMENT, max_seconds=CHIME_MAX_SECONDS
            )
            return _after(self._chime_or_nothing(fetched, request), speech)
        chime = await asyncio.to_thread(self._sounds.chunks, request.chime, self._output.sample_rate)
        if chime is None:
            message = f"no sound {request.chime!r} in the sounds folder; the default chime is played"
            self._chime_warning(request, ErrorCode.UNKNOWN_SOUND, message)
            chime = self._sounds.chunks(True, self._output.sample_rate) or []
        return _after(_each(chime), speech)

    async def _chime_or_nothing(
        self, chime: AsyncGenerator[AudioChunk, None], request: SayRequest
    ) -> AsyncGenerator[AudioChunk, None]:
        """A chime from a URL; one that cannot be had (or played whole) is a warning, and the speech goes on."""
        try:
            async with contextlib.aclosing(chime) as chunks:
                async for chunk in chunks:
                    yield chunk
        except SynthesisError as exc:
            self._chime_warning(request, exc.code, f"{exc.message}; played without it")

    def _chime_warning(self, request: SayRequest, code: ErrorCode, message: str) -> None:
        report = ErrorReport(code=code, message=f"chime: {message}", id=request.id, field="chime", severity="warning")
        self._listener.on_error(report)

    async def _source(
        self, engine: Engine, script: Script, voicing: Voicing
    ) -> tuple[AsyncGenerator[AudioChunk, None], bool]:
        """The script's audio from the cache (True) or from the engine, kept in the cache when complete.
        Only a text complete before it is spoken is cached (its key is known); a stream still being
        written is not.
        The cache is read in a worker thread: a long entry on an SD card must not stall the loop."""
        rate = self._output.sample_rate
        cache = self._cache
        if cache is None or not cache.enabled or not script.request.cache or not script.text.ended:
            return engine.synthesize(script, voicing, rate), False
        key = cache_key(engine.identity, script.request.model_copy(update={"segments": script.segments}), voicing, rate)
        hit = await asyncio.to_thread(cache.get, key)
        if hit is not None:
            return replay(hit), True
        return recording(engine.synthesize(script, voicing, rate), lambda chunks: self._store(key, chunks)), False

    def _store(self, key: str, chunks: list[AudioChunk]) -> None:
        """Write to the cache (and evict) in a worker thread: disk I/O stays off the event loop."""
        assert self._cache is not None
        task = asyncio.ensure_future(asyncio.to_thread(self._cache.put, key, chunks))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def candidates(self, request: SayRequest) -> list[str]:
        """The engines to ask in turn: for a broadcast the house shares, its shared audio; then the one the
        request asks for (else the primary), then the installed fallbacks. A request that asks for a local
        engine (Piper, espeak-ng) stays local: no billed engine is asked for it, not even as a fallback; one
        that asks for an engine not built here (see `_substituted`) starts with the next."""
        first = request.engine or self._primary
        local = request.engine is not None and request.engine != "cartesia"
        names = dict.fromkeys([first, *self._settings.fallback])
        own = [name for name in names if name in self._engines and not (local and self._engines[name].billed)]
        return [SHARED_ENGINE, *own] if request.shared and SHARED_ENGINE in self._engines else own

    def _substituted(self, request: SayRequest) -> SynthesisError | None:
        """Why the engine the request asks for cannot speak it here (it is not built), or None. Said once on
        the error topic, as a warning: the next engine speaks it (started says so)."""
        name = request.engine
        if name is None or name in self._engines:
            return None
        error = SynthesisError(ErrorCode.ENGINE_UNAVAILABLE, f"asked for, but {unavailable(name)}")
        if name not in self._failing:
            self._failing.add(name)
            message = f"{name}: {error.message}"
            self._listener.on_error(ErrorReport(code=error.code, message=message, id=request.id, severity="warning"))
        return error

    def engine_in_use(self) -> str:
        names = [self._primary, *self._settings.fallback]
        return next((n for n in names if n in self._engines and self._engines[n].problem() is None), self._primary)

    def _engine_failed(self, name: str, error: SynthesisError, request: SayRequest) -> None:
        """Record an engine's failure: published once per outage, not once per request. A refusal of what
        the request asked for (an unknown voice) is no outage: published for its request every time, and a
        problem only when it asked for nothing of its own (then the configuration is at fault)."""
        report = ErrorReport(code=error.code, message=f"{name}: {error.message}", id=request.id)
        if error.request_only:
            self._listener.on_error(report)
            if name == self._primary and request.voice is None:
                self._problems.set("tts", report)
            return
        if name == self._primary:
            self._problems.set("tts", report)
        if name not in self._failing:
            self._failing.add(name)
            self._listener.on_error(report)
        else:
            LOG.info("%s still failing: %s", name, error.message)

    def _engine_worked(self, name: str) -> None:
        if name in self._failing:
            self._failing.discard(name)
            LOG.info("%s works again", name)
        if name == self._primary:
            self._problems.clear("tts")

    async def speak(self, job: Job) -> Event:
        """Play the request; its terminal event (finished, interrupted or failed). Other audio on the sound
        server is lowered meanwhile (ducking.py), chime included, unless the request says `"duck": false`."""
        request = job.request
        depth = request.duck_db if request.duck_db is not None else self._defaults.current.duck_db
        lowered = None
        if self._ducker is not None and request.duck and depth > 0:  # a synchronized start: only as it nears
            lowered = self._ducker.hold(depth, at=request.start_at)
        try:
            return await self._speak(job, lowered)
        finally:
            if lowered is not None and self._ducker is not None:
                self._ducker.release()  # after a pause: the next queued request keeps the music down

    async def _speak(self, job: Job, lowered: Lowering | None) -> Event:  # noqa: PLR0912, PLR0915 - the engines in turn, each attempt's outcome decides the next: one loop reads best
        request = job.request
        if request.media is not None:
            return await self._play_media(job, lowered, request.media)
        voicing = self.voicing(request)
        gain = self._gain(request)
        names = self.candidates(request)
        live = not job.text.ended  # a stream still being written: charged as pushed, never cached
        remaining: Script | None = Script(request, job.text)
        fallback_reason: str | None = None
        played_total = 0.0
        progress = _Progress(StartGate(request.start_at) if request.start_at is not None else None)
        tried = False
        last_error = substituted = self._substituted(request)
        if substituted is not None:  # and in started's fallback_reason
            fallback_reason = f"{request.engine}: {substituted.code}"
        sources: list[tuple[str, str | None, bool]] = []  # (engine, room, shared) of each one heard, in order
        for index, name in enumerate(names):
            if remaining is None:
                break
            engine = self._engines[name]
            known = engine.problem()
            if known is not None and index < len(names) - 1:
                self._engine_failed(name, known, request)
                fallback_reason = fallback_reason or f"{name}: {known.code}"
                continue
            if live and engine.billed:
                remaining = replace(remaining, meter=self._meter(engine, request))
            if isinstance(engine, SharedSource):
                engine.bind(request, progress.pending_start())
            try:
                source, cached = await self._source(engine, remaining, voicing)
            except Exception as exc:
                return self._broke(job, exc)
            attempt = _Attempt(source)
            on_first_audio = functools.partial(
                self._started,
                job,
                voicing,
                engine,
                cached,
                fallback_reason if index or substituted else None,
                progress,
            )
            stream = attempt.stream() if tried else await self._with_chime(job, attempt.stream())
            tried = True
            playback = Playback(
                request.id, on_first_audio, job.stop, gain, progress.pending_start(), name, engine.identity
            )
            played = await self._play(job, stream, lowered, playback, played_total)
            if not isinstance(played, Played):
                return played  # the device failed, or a bug
            played_total += played.seconds
            if attempt.heard:
                sources.append((*self._origin(engine, request), name == SHARED_ENGINE))
            if played.interrupted and job.interruption is not None:
                return self._interrupted(job, played_total)
            if attempt.error is None:
                self._engine_worked(name)
                remaining = None
                break
            last_error = attempt.error
            if attempt.error.code is not ErrorCode.RATE_LIMITED:  # the cost guard said so already; not a fault
                self._engine_failed(name, attempt.error, request)
            fallback_reason = f"{name}: {attempt.error.code}"
            remaining = replace(remaining, meter=None)
            if attempt.heard:  # the rest, from the first word not spoken whole, by the next engine
                segment = attempt.segment if attempt.error.segment is None else attempt.error.segment
                remaining = remaining.rest(segment, attempt.error.spoken_chars)
                if remaining is None:  # every word had been spoken: nothing is missing
                    break
        if remaining is not None and request.fallback_media is not None and not progress.started:
            LOG.info("no engine could speak %s: its media is played instead", request.id)
            return await self._play_media(
                job, lowered, request.fallback_media, chime=not tried, fallback_reason=fallback_reason
            )
        if remaining is not None:
            error = last_error or SynthesisError(ErrorCode.ENGINE_UNAVAILABLE, "no engine could speak it")
            if progress.started and error.code is not ErrorCode.SYNTHESIS_INTERRUPTED:
                error = SynthesisError(ErrorCode.SYNTHESIS_INTERRUPTED, f"cut short: {error.message}")
            failure = ErrorReport(code=error.code, message=error.message, id=request.id)
            return self._fail(job, failure, report=False, played=played_total)
        if played_total == 0 and not speakable(job.text.whole):  # a stream of "   " or "...": never sent anywhere
            message = f"text: {NOTHING_TO_SPEAK}"
            return self._fail(
                job, ErrorReport(code=ErrorCode.INVALID_REQUEST, message=message, id=request.id, field="text")
            )
        if played_total == 0:
            return self._fail(job, ErrorReport(code=ErrorCode.SYNTHESIS_FAILED, message="no audio", id=request.id))
        self._problems.clear("audio")
        duration = round(played_total * 1000)
        LOG.info("finished %s (%d ms of audio)", request.id, duration)
        return FinishedEvent(
            id=request.id,
            duration_ms=duration,
            engine=sources[-1][0] if sources else name,
            synthesized_by=list(dict.fromkeys(site for _, site, _ in sources if site is not None)),
            shared=any(shared for _, _, shared in sources),
            fallback=fallback_reason is not None,
            fallback_reason=fallback_reason,
        )

    async def _play(
        self,
        job: Job,
        stream: AsyncGenerator[AudioChunk, None],
        lowered: Lowering | None,
        playback: Playback,
        played_before: float,
    ) -> Played | Event:
        """One go of the output (other audio lowered while it plays): how much was heard, or the failed event
        when the device failed (after `played_before` seconds of the request had played) or a bug struck."""
        if lowered is not None:
            stream = once_lowered(lowered, stream)
        try:
            async with contextlib.aclosing(stream) as chunks:
                return await self._output.play(chunks, playback)
        except AudioDeviceError as exc:
            failure = ErrorReport(code=ErrorCode.AUDIO_DEVICE_UNAVAILABLE, message=str(exc), id=job.request.id)
            self._problems.set("audio", failure)
            return self._fail(job, failure, played=played_before + exc.played)
        except Exception as exc:
            return self._broke(job, exc)

    def _broke(self, job: Job, exc: Exception) -> Event:
        LOG.exception("playing %s failed unexpectedly", job.request.id, exc_info=exc)
        return self._fail(job, ErrorReport(code=ErrorCode.INTERNAL_ERROR, message=repr(exc), id=job.request.id))

    async def _play_media(
        self, job: Job, lowered: Lowering | None, url: str, *, chime: bool = True, fallback_reason: str | None = None
    ) -> Event:
        """Play a URL (after the chime, unless it was heard already): finished, interrupted or failed (with the
        fetch's or the decoder's error, also on the error topic)."""
        request = job.request
        progress = _Progress(StartGate(request.start_at) if request.start_at is not None else None)
        attempt = _Attempt(self._media.stream(url, self._output.sample_rate))
        stream = await self._with_chime(job, attempt.stream()) if chime else attempt.stream()
        on_first_audio = functools.partial(self._media_started, job, fallback_reason, progress)
        playback = Playback(
            request.id, on_first_audio, job.stop, self._gain(request), progress.pending_start(), MEDIA, lead=MEDIA_LEAD
        )
        played = await self._play(job, stream, lowered, playback, 0.0)
        if not isinstance(played, Played):
            return played
        if played.interrupted and job.interruption is not None:
            return self._interrupted(job, played.seconds)
        if attempt.error is not None:
            failure = ErrorReport(code=attempt.error.code, message=f"media: {attempt.error.message}", id=request.id)
            LOG.warning("%s: %s (%s)", request.id, failure.message, url[:120])
            return self._fail(job, failure, played=played.seconds)
        if not progress.started:
            return self._fail(job, ErrorReport(code=ErrorCode.MEDIA_INVALID, message="media: no audio", id=request.id))
        self._problems.clear("audio")
        duration = round(played.seconds * 1000)
        LOG.info("finished %s (%d ms of media)", request.id, duration)
        return FinishedEvent(
            id=request.id,
            duration_ms=duration,
            engine=MEDIA,
            fallback=fallback_reason is not None,
            fallback_reason=fallback_reason,
        )

    def _media_started(self, job: Job, fallback_reason: str | None, progress: _Progress) -> None:
        """The first audio of a URL is playing: `started`, naming the media as its engine."""
        if progress.started:
            return
        progress.started = True
        latency = round((time.monotonic() - job.received) * 1000)
        self._listener.on_event(
            StartedEvent(
                id=job.request.id,
                engine=MEDIA,
                emotion=None,
                voice=None,
                segments=0,
                latency_ms=latency,
                emotion_applied=False,
                fallback=fallback_reason is not None,
                fallback_reason=fallback_reason,
                late_ms=progress.start.late_ms if progress.start else None,
            )
        )
        LOG.info("playing %s (%d ms after it arrived)", job.request.id, latency)

    def _started(  # noqa: PLR0913 - what the started event says, gathered where the first audio plays
        self,
        job: Job,
        voicing: Voicing,
        engine: Engine,
        cached: bool,
        fallback_reason: str | None,
        progress: _Progress,
    ) -> None:
        """The first audio of a request is playing: publish `started` (once, whichever engine it came from)."""
        if progress.started:
            return
        progress.started = True
        request = job.request
        latency = round((time.monotonic() - job.received) * 1000)
        name, by = self._origin(engine, request)
        self._listener.on_event(
            StartedEvent(
                id=request.id,
                engine=name,
                emotion=job.text.runs[0].voice.emotion or voicing.emotion,
                voice=voicing.voice,
                segments=len(job.text.runs),
                latency_ms=latency,
                emotion_applied=engine.emotion_applied,
                cached=cached,
                fallback=fallback_reason is not None,
                fallback_reason=fallback_reason,
                late_ms=progress.start.late_ms if progress.start else None,
                synthesized_by=by,
                shared=engine.name == SHARED_ENGINE,
            )
        )
        LOG.info("speaking %s with %s (%d ms after it arrived)", request.id, name, latency)
        if progress.start is not None and progress.start.late is not None:
            LOG.info("%s started %+.1f ms from its instant", request.id, progress.start.late * 1000)

    def _origin(self, engine: Engine, request: SayRequest) -> tuple[str, str | None]:
        """The engine whose audio plays, and the room (site) that synthesized it: for shared audio, the
        synthesizing room's, as its start message said."""
        if isinstance(engine, SharedSource):
            origin = engine.origin(request)
            return (origin.engine, origin.site) if origin is not None else (engine.name, None)
        return engine.name, self._settings.site

    def clear_cache(self) -> None:
        """cache/clear, in a worker thread (a thousand files on an SD card); one clear at a time."""
        if self._cache is None or (self._clearing is not None and not self._clearing.done()):
            return
        self._clearing = asyncio.ensure_future(asyncio.to_thread(self._cache.clear))
        self._clearing.add_done_callback(_log_cleared)

    async def warm(self, requests: list[SayRequest]) -> None:
        """Synthesize into the cache without playing (with the primary engine), one after the other."""
        engine = self._engines[self._primary]
        for request in requests:
            refused = self._charge(engine, request, "cache warm: ", len(request.text))
            if refused is not None:
                self._listener.on_error(refused)
                continue
            source, cached = await self._source(engine, Script.of(request), self.voicing(request))
            try:
                async with contextlib.aclosing(source) as chunks:
                    async for _ in chunks:
                        pass
            except SynthesisError as exc:
                self._listener.on_error(ErrorReport(code=exc.code, message=f"cache warm: {exc.message}", id=request.id))
                continue
            LOG.info("cache warm %s: %s", request.id, "already there" if cached else "stored")

    def _fail(self, job: Job, failure: ErrorReport, report: bool = True, played: float = 0.0) -> Event:
        if report:
            self._listener.on_error(failure)
        duration = round(played * 1000)
        return FailedEvent(id=job.request.id, code=failure.code, message=failure.message, duration_ms=duration)

    @staticmethod
    def _interrupted(job: Job, played: float) -> Event:
        interruption = job.interruption
        assert interruption is not None
        return InterruptedEvent(
            id=job.request.id,
            reason=interruption.reason,
            by=interruption.by,
            duration_ms=round(played * 1000),
            stop_ms=round((time.monotonic() - interruption.at) * 1000),
        )


def _log_cleared(done: asyncio.Future[int]) -> None:
    if done.cancelled():
        return
    if (error := done.exception()) is not None:
        LOG.warning("cannot clear the audio cache: %s", error)
    else:
        LOG.info("audio cache cleared: %d entries removed", done.result())


@dataclass
class _Progress:
    start: StartGate | None = None  # a synchronized start (the same one for a fallback engine)
    started: bool = False

    def pending_start(self) -> StartGate | None:
        """The start instant, until the first sample has been placed (the rest after it follows at once)."""
        return self.start if self.start is not None and self.start.late is None else None


class _Attempt:
    """One engine's go at a request: its chunks, and how it ended (error, last segment heard)."""

    def __init__(self, source: AsyncGenerator[AudioChunk, None]) -> None:
        self._source = source
        self.error: SynthesisError | None = None
        self.segment = 0
        self.heard = False

    async def stream(self) -> AsyncGenerator[AudioChunk, None]:
        try:
            async for chunk in self._source:
                if chunk.samples.size:
                    self.segment, self.heard = chunk.segment, True
                yield chunk
        except SynthesisError as exc:
            self.error = exc  # the audio so far plays out; the caller decides what comes next
        except Exception as exc:  # a bug, or a library's own exception: the fallbacks are tried all the same
            LOG.exception("the engine failed unexpectedly")
            self.error = SynthesisError(ErrorCode.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            await self._source.aclose()


async def _each(chunks: list[AudioChunk]) -> AsyncGenerator[AudioChunk, None]:
    for chunk in chunks:
        yield chunk


async def _after(
    first: AsyncGenerator[AudioChunk, None], then: AsyncGenerator[AudioChunk, None]
) -> AsyncGenerator[AudioChunk, None]:
    """`first`, then everything `then` yields; `then` starts producing at once, while `first` plays."""
    queue: asyncio.Queue[AudioChunk | BaseException | None] = asyncio.Queue(PREFETCH_CHUNKS)

    async def pump() -> None:
        try:
            async for chunk in then:
                await queue.put(chunk)
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)

    task = asyncio.create_task(pump())
    try:
        async for chunk in first:
            yield chunk
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await first.aclose()
        await then.aclose()
