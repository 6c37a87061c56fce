"""The queue and the one worker that speaks requests in turn.

Rules: higher priorities first, arrival order within one; `critical` interrupts (unless a critical
request is speaking), drops queued requests below `high` and ignores quiet mode; a request that has
not started within its TTL is dropped; an id seen within the dedupe window is dropped. Every
accepted request ends with exactly one terminal event: finished, interrupted, dropped or failed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import functools
import itertools
import logging
import string
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from mqtt_speaker.audio import AudioDeviceError, Output, Playback
from mqtt_speaker.cache import AudioCache, cache_key, recording, replay
from mqtt_speaker.ducking import Ducker, Lowering, once_lowered
from mqtt_speaker.engines.base import AudioChunk, Engine, SynthesisError, Voicing
from mqtt_speaker.models import (
    ClearCommand,
    DroppedEvent,
    DropReason,
    ErrorCode,
    ErrorReport,
    Event,
    FailedEvent,
    FinishedEvent,
    InterruptedEvent,
    InterruptReason,
    LastError,
    Priority,
    QueuedEvent,
    SayRequest,
    SpeakerState,
    StartedEvent,
    StateReport,
)
from mqtt_speaker.runtime import RuntimeDefaults
from mqtt_speaker.settings import Settings
from mqtt_speaker.sounds import Sounds

LOG = logging.getLogger(__name__)
PREFETCH_CHUNKS = 256


@dataclass
class Interruption:
    reason: InterruptReason
    by: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Job:
    request: SayRequest
    seq: int
    received: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")
    ended: bool = False
    expiry: asyncio.TimerHandle | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    interruption: Interruption | None = None
    lowered: Lowering | None = None  # other audio is being lowered (ducking); None: not ducked

    @property
    def order(self) -> tuple[int, int]:
        return (-self.request.priority.rank, self.seq)


class Speaker:
    """Owns the queue, the current request, the runtime defaults and the problem flags (event loop only)."""

    def __init__(
        self,
        engines: dict[str, Engine],
        output: Output,
        settings: Settings,
        *,
        primary: str | None = None,
        cache: AudioCache | None = None,
        ducker: Ducker | None = None,
        publish_event: Callable[[Event], None],
        report_error: Callable[[ErrorReport], None],
        on_change: Callable[[], None],
        clock: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self._engines = engines
        self._primary = primary or next(iter(engines))
        self._cache = cache
        self._ducker = ducker
        self._failing: set[str] = set()
        self._writes: set[asyncio.Future[None]] = set()
        self._output = output
        self._settings = settings
        self._publish_event = publish_event
        self._report_error = report_error
        self._on_change = on_change
        self._clock = clock
        self._sounds = Sounds(settings.sounds_dir)
        self.defaults = RuntimeDefaults.load(settings)
        self._queue: list[Job] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._current: Job | None = None
        self._closing = False  # shutting down: nothing new is accepted or started
        self._recent_ids: dict[str, float] = {}
        self._problems: dict[str, LastError] = {}
        self._last_error: LastError | None = None
        self._billed: collections.deque[tuple[float, int]] = collections.deque()  # (time, characters)

    # ------------------------------------------------------------------------------------------ state

    def quiet_now(self) -> bool:
        return self.defaults.quiet or self._settings.in_quiet_hours(self._clock().time())

    def state(self) -> StateReport:
        return StateReport(
            state=SpeakerState.SPEAKING if self._current else SpeakerState.IDLE,
            queue_length=len(self._queue),
            current_id=self._current.request.id if self._current else None,
            engine=self.engine_in_use(),
            problem=bool(self._problems),
            problems=sorted(self._problems),
            last_error=self._last_error,
            volume=self.defaults.volume,
            emotion=self.defaults.emotion,
            voice=self._settings.voice_name(self.defaults.voice),
            quiet=self.defaults.quiet,
            quiet_now=self.quiet_now(),
            duck_db=self.defaults.duck_db,
        )

    def _set_problem(self, area: str, error: ErrorReport | None) -> None:
        if error is None:
            if self._problems.pop(area, None) is not None:
                LOG.info("%s works again", area)
                self._on_change()
            return
        self._last_error = LastError(code=error.code, message=error.message, ts=error.ts)
        self._problems[area] = self._last_error
        self._on_change()

    def update_defaults(self, **changes: object) -> None:
        """set/volume, set/emotion, set/voice, set/quiet: applied, saved, and shown in the state."""
        self.defaults = self.defaults.model_copy(update=changes)
        self.defaults.save(self._settings.state_file)
        if self.defaults.quiet:
            self._drop_where(lambda job: job.request.priority is not Priority.CRITICAL, "quiet")
        self._on_change()

    # -------------------------------------------------------------------------------------- lifecycle

    def _end(self, job: Job, event: Event) -> None:
        """Publish the request's terminal event: exactly once, whatever happens."""
        if job.ended:
            LOG.error("request %s already ended; not publishing %s", job.request.id, event.event_type)
            return
        job.ended = True
        if job.expiry is not None:
            job.expiry.cancel()
        self._publish_event(event)

    def _drop(self, job: Job, reason: DropReason) -> None:
        LOG.info("dropped %s: %s", job.request.id, reason)
        self._end(job, DroppedEvent(id=job.request.id, reason=reason))

    def _drop_where(self, condition: Callable[[Job], bool], reason: DropReason) -> None:
        dropped = [job for job in self._queue if condition(job)]
        self._queue = [job for job in self._queue if not condition(job)]
        for job in dropped:
            self._drop(job, reason)
        if dropped:
            self._on_change()

    def _remaining_ttl(self, request: SayRequest) -> float:
        ttl = request.ttl if request.ttl is not None else self._settings.default_ttl
        if request.sent_at is not None:  # counted from when it was sent, not from when it reached us
            return request.sent_at + ttl - time.time()
        return ttl

    def _is_duplicate(self, request: SayRequest) -> bool:
        if not request.id_given:
            return False
        now = time.monotonic()
        window = self._settings.dedupe_window
        self._recent_ids = {k: t for k, t in self._recent_ids.items() if now - t < window}
        seen = request.id in self._recent_ids
        self._recent_ids[request.id] = now
        return seen

    def submit(self, request: SayRequest) -> None:
        job = Job(request, next(self._seq))
        if self._closing:
            return self._drop(job, "shutdown")
        if self._is_duplicate(request):
            return self._drop(job, "duplicate")
        remaining = self._remaining_ttl(request)
        if remaining <= 0:
            return self._drop(job, "expired")
        critical = request.priority is Priority.CRITICAL
        if self.quiet_now() and not critical:
            return self._drop(job, "quiet")
        if critical:
            self._drop_where(lambda queued: queued.request.priority.rank < Priority.HIGH.rank, "preempted")
            current = self._current
            if current is not None and current.request.priority is not Priority.CRITICAL:
                self._interrupt(current, Interruption("priority", request.id))
        if len(self._queue) >= self._settings.queue_size:
            lowest = max(self._queue, key=lambda queued: queued.order)
            self._report_error(
                ErrorReport(
                    code=ErrorCode.QUEUE_FULL,
                    message=f"the queue is full ({self._settings.queue_size} requests)",
                    id=request.id if lowest.order < job.order else lowest.request.id,
                )
            )
            if lowest.order < job.order:
                return self._drop(job, "queue_full")
            self._queue.remove(lowest)
            self._drop(lowest, "queue_full")
        job.deadline = time.monotonic() + remaining
        job.expiry = asyncio.get_running_loop().call_later(remaining, self._expire, job)
        self._queue.append(job)
        self._queue.sort(key=lambda queued: queued.order)
        position = self._queue.index(job) + 1 + (1 if self._current else 0)
        self._publish_event(
            QueuedEvent(id=request.id, position=position, queue_length=len(self._queue), priority=request.priority)
        )
        self._wakeup.set()
        self._on_change()
        return None

    def _over_budget(self, job: Job) -> bool:
        """The cost guard: drop (rate_limited) what would take the billed characters over a limit."""
        engine = self._engines[self.candidates(job.request)[0]]
        error = self._charge(engine, job.request, "")
        if error is None:
            return False
        self._report_error(error)
        self._drop(job, "rate_limited")
        return True

    def _charge(self, engine: Engine, request: SayRequest, what: str) -> ErrorReport | None:
        """Count the characters `engine` is about to be paid for; the error instead, if that would pass a
        limit. Free: an engine that does not bill, one known to be down (a fallback speaks), a cache hit."""
        if not engine.billed or engine.problem() is not None or self._in_cache(engine, request):
            return None
        now = time.monotonic()
        while self._billed and now - self._billed[0][0] > 3600:
            self._billed.popleft()
        chars = len(request.text)
        bypass = request.priority is Priority.CRITICAL and self._settings.critical_bypasses_cost_guard
        for window, limit in ((60, self._settings.chars_per_minute), (3600, self._settings.chars_per_hour)):
            used = sum(n for t, n in self._billed if now - t <= window)
            if limit is not None and used + chars > limit and not bypass:
                return ErrorReport(
                    code=ErrorCode.RATE_LIMITED,
                    message=f"{what}cost guard: {chars} more characters would pass the limit of {limit} "
                    f"per {'minute' if window == 60 else 'hour'} ({used} used)",
                    id=request.id,
                )
        self._billed.append((now, chars))
        return None

    def _in_cache(self, engine: Engine, request: SayRequest) -> bool:
        cache = self._cache
        if cache is None or not cache.enabled or not request.cache:
            return False
        return cache.has(cache_key(engine.identity, request, self._voicing(request), self._output.sample_rate))

    def _expire(self, job: Job) -> None:
        if job in self._queue:
            self._queue.remove(job)
            self._drop(job, "expired")
            self._on_change()

    def _interrupt(self, job: Job, interruption: Interruption) -> None:
        if job.interruption is None:
            LOG.info("interrupting %s: %s", job.request.id, interruption.reason)
            job.interruption = interruption
            job.stop.set()

    def stop(self, reason: InterruptReason) -> None:
        """`stop` / `skip`: end what is playing now; the queue goes on."""
        if self._current is not None:
            self._interrupt(self._current, Interruption(reason, None))

    def clear(self, command: ClearCommand) -> None:
        below = command.below.rank if command.below else len(Priority)
        self._drop_where(lambda job: job.request.priority.rank < below, "cleared")
        if command.stop:
            self.stop("stop")

    async def run(self) -> None:
        """Speak queued requests one at a time until cancelled."""
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            job = self._queue.pop(0)
            if job.expiry is not None:
                job.expiry.cancel()
            if time.monotonic() >= job.deadline:
                self._drop(job, "expired")
                continue
            if self.quiet_now() and job.request.priority is not Priority.CRITICAL:  # quiet hours began
                self._drop(job, "quiet")
                continue
            if self._over_budget(job):
                continue
            self._current = job
            self._on_change()
            self._duck(job)
            try:
                await self._speak(job)
            finally:
                if job.lowered is not None and self._ducker is not None:
                    self._ducker.release()
                self._current = None
                job.done.set()
                self._on_change()

    async def shutdown(self, grace: float) -> None:
        """Queued requests are dropped, and any that arrive from now on; the current one fades out and ends
        `interrupted` (within `grace` seconds)."""
        self._closing = True
        self._drop_where(lambda _job: True, "shutdown")
        current = self._current
        if current is None:
            return
        self._interrupt(current, Interruption("shutdown", None))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(current.done.wait(), grace)
        if not current.ended:
            self._end(current, InterruptedEvent(id=current.request.id, reason="shutdown"))

    # --------------------------------------------------------------------------------------- speaking

    def _duck(self, job: Job) -> None:
        """Lower other audio for this request (chime included), unless it says `"duck": false`."""
        request = job.request
        depth = request.duck_db if request.duck_db is not None else self.defaults.duck_db
        if self._ducker is not None and request.duck and depth > 0:
            job.lowered = self._ducker.hold(depth)

    def _voicing(self, request: SayRequest) -> Voicing:
        return Voicing(
            emotion=self.defaults.emotion,
            voice=self._settings.voice_id(request.voice or self.defaults.voice),
            language=request.language or self._settings.cartesia.language,
        )

    def _with_chime(self, job: Job, speech: AsyncGenerator[AudioChunk, None]) -> AsyncGenerator[AudioChunk, None]:
        """The speech, after the chime when one is asked for (its synthesis starts at once, in parallel)."""
        request = job.request
        if request.chime is False:
            return speech
        chime = self._sounds.chunks(request.chime, self._output.sample_rate)
        if chime is None:
            self._report_error(
                ErrorReport(
                    code=ErrorCode.UNKNOWN_SOUND,
                    message=f"chime: no sound {request.chime!r} in the sounds folder; the default chime is played",
                    id=request.id,
                    field="chime",
                    severity="warning",
                )
            )
            chime = self._sounds.chunks(True, self._output.sample_rate) or []
        return _after(chime, speech)

    async def _source(
        self, engine: Engine, request: SayRequest, voicing: Voicing
    ) -> tuple[AsyncGenerator[AudioChunk, None], bool]:
        """The request's audio from the cache (True) or from the engine, kept in the cache when complete.
        The cache is read in a worker thread: a long entry on an SD card must not stall the loop."""
        rate = self._output.sample_rate
        cache = self._cache
        if cache is None or not cache.enabled or not request.cache:
            return engine.synthesize(request, voicing, rate), False
        key = cache_key(engine.identity, request, voicing, rate)
        hit = await asyncio.to_thread(cache.get, key)
        if hit is not None:
            return replay(hit), True
        return recording(engine.synthesize(request, voicing, rate), lambda chunks: self._store(key, chunks)), False

    def _store(self, key: str, chunks: list[AudioChunk]) -> None:
        """Write to the cache (and evict) in a worker thread: disk I/O stays off the event loop."""
        assert self._cache is not None
        task = asyncio.ensure_future(asyncio.to_thread(self._cache.put, key, chunks))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def candidates(self, request: SayRequest) -> list[str]:
        """The engine to ask first (the request's or the primary), then the fallbacks that are installed."""
        first = request.engine if request.engine in self._engines else self._primary
        return [first, *(name for name in self._settings.fallback if name != first and name in self._engines)]

    def engine_in_use(self) -> str:
        names = [self._primary, *self._settings.fallback]
        return next((n for n in names if n in self._engines and self._engines[n].problem() is None), self._primary)

    def _engine_failed(self, name: str, error: SynthesisError, request_id: str) -> None:
        """Record an engine's failure: published once per outage, not once per request."""
        report = ErrorReport(code=error.code, message=f"{name}: {error.message}", id=request_id)
        if name == self._primary:
            self._set_problem("tts", report)
        if name not in self._failing:
            self._failing.add(name)
            self._report_error(report)
        else:
            LOG.info("%s still failing: %s", name, error.message)

    def _engine_worked(self, name: str) -> None:
        if name in self._failing:
            self._failing.discard(name)
            LOG.info("%s works again", name)
        if name == self._primary:
            self._set_problem("tts", None)

    async def _speak(self, job: Job) -> None:
        request = job.request
        voicing = self._voicing(request)
        gain = request.volume if request.volume is not None else self.defaults.volume / 100
        names = self.candidates(request)
        remaining: SayRequest | None = request
        fallback_reason: str | None = None
        played_total = 0.0
        progress = _Progress()
        tried = False
        last_error: SynthesisError | None = None
        for index, name in enumerate(names):
            if remaining is None:
                break
            engine = self._engines[name]
            known = engine.problem()
            if known is not None and index < len(names) - 1:
                self._engine_failed(name, known, request.id)
                fallback_reason = fallback_reason or f"{name}: {known.code}"
                continue
            try:
                source, cached = await self._source(engine, remaining, voicing)
                attempt = _Attempt(source)
                on_first_audio = functools.partial(
                    self._started, job, voicing, engine, cached, fallback_reason if index > 0 else None, progress
                )
                stream = attempt.stream() if tried else self._with_chime(job, attempt.stream())
                if job.lowered is not None:
                    stream = once_lowered(job.lowered, stream)
                tried = True
                async with contextlib.aclosing(stream) as chunks:
                    played = await self._output.play(chunks, Playback(request.id, on_first_audio, job.stop, gain))
            except AudioDeviceError as exc:
                failure = ErrorReport(code=ErrorCode.AUDIO_DEVICE_UNAVAILABLE, message=str(exc), id=request.id)
                self._set_problem("audio", failure)
                return self._fail(job, failure)
            except Exception as exc:
                LOG.exception("speaking %s failed unexpectedly", request.id)
                return self._fail(job, ErrorReport(code=ErrorCode.INTERNAL_ERROR, message=repr(exc), id=request.id))
            played_total += played.seconds
            if played.interrupted and job.interruption is not None:
                return self._interrupted(job, played_total)
            if attempt.error is None:
                self._engine_worked(name)
                remaining = None
                break
            last_error = attempt.error
            self._engine_failed(name, attempt.error, request.id)
            fallback_reason = f"{name}: {attempt.error.code}"
            if attempt.heard:  # the rest, from the first word not spoken whole, by the next engine
                remaining = _rest(remaining, attempt.segment, attempt.error.spoken_chars)
                if remaining is None:  # every word had been spoken: nothing is missing
                    break
        if remaining is not None:
            error = last_error or SynthesisError(ErrorCode.ENGINE_UNAVAILABLE, "no engine could speak it")
            if progress.started and error.code is not ErrorCode.SYNTHESIS_INTERRUPTED:
                error = SynthesisError(ErrorCode.SYNTHESIS_INTERRUPTED, f"cut short: {error.message}")
            return self._fail(job, ErrorReport(code=error.code, message=error.message, id=request.id), report=False)
        if played_total == 0:
            return self._fail(job, ErrorReport(code=ErrorCode.SYNTHESIS_FAILED, message="no audio", id=request.id))
        self._set_problem("audio", None)
        duration = round(played_total * 1000)
        self._end(job, FinishedEvent(id=request.id, duration_ms=duration, engine=names[index]))
        LOG.info("finished %s (%d ms of audio)", request.id, duration)
        return None

    def _started(
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
        self._publish_event(
            StartedEvent(
                id=request.id,
                engine=engine.name,
                emotion=request.segments[0].emotion or voicing.emotion,
                voice=voicing.voice,
                segments=len(request.segments),
                latency_ms=latency,
                emotion_applied=engine.emotion_applied,
                cached=cached,
                fallback=fallback_reason is not None,
                fallback_reason=fallback_reason,
            )
        )
        LOG.info("speaking %s with %s (%d ms after it arrived)", request.id, engine.name, latency)

    def clear_cache(self) -> None:
        if self._cache is not None:
            LOG.info("audio cache cleared: %d entries removed", self._cache.clear())

    async def warm(self, requests: list[SayRequest]) -> None:
        """Synthesize into the cache without playing (with the primary engine), one after the other."""
        engine = self._engines[self._primary]
        for request in requests:
            refused = self._charge(engine, request, "cache warm: ")
            if refused is not None:
                self._report_error(refused)
                continue
            source, cached = await self._source(engine, request, self._voicing(request))
            try:
                async with contextlib.aclosing(source) as chunks:
                    async for _ in chunks:
                        pass
            except SynthesisError as exc:
                self._report_error(ErrorReport(code=exc.code, message=f"cache warm: {exc.message}", id=request.id))
                continue
            LOG.info("cache warm %s: %s", request.id, "already there" if cached else "stored")

    def _fail(self, job: Job, failure: ErrorReport, report: bool = True) -> None:
        if report:
            self._report_error(failure)
        self._end(job, FailedEvent(id=job.request.id, code=failure.code, message=failure.message))

    def _interrupted(self, job: Job, played: float) -> None:
        interruption = job.interruption
        assert interruption is not None
        self._end(
            job,
            InterruptedEvent(
                id=job.request.id,
                reason=interruption.reason,
                by=interruption.by,
                duration_ms=round(played * 1000),
                stop_ms=round((time.monotonic() - interruption.at) * 1000),
            ),
        )


@dataclass
class _Progress:
    started: bool = False


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
        finally:
            await self._source.aclose()


CLAUSE_MARKS = string.whitespace + ",;:.!?"


def _rest(request: SayRequest, segment: int, spoken_chars: int) -> SayRequest | None:
    """What is left of `request` when `spoken_chars` of `segment`'s text have been spoken; None if nothing."""
    first, *others = request.segments[max(segment, 0) :]
    text = first.text[spoken_chars:].lstrip(CLAUSE_MARKS)
    spoken_all = not text.strip(string.punctuation + string.whitespace)
    segments = tuple(others) if spoken_all else (first.model_copy(update={"text": text}), *others)
    return request.model_copy(update={"segments": segments}) if segments else None


async def _after(first: list[AudioChunk], then: AsyncGenerator[AudioChunk, None]) -> AsyncGenerator[AudioChunk, None]:
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
        for chunk in first:
            yield chunk
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await then.aclose()
