"""The scheduling policy: which request speaks when. No audio here.

Rules: higher priorities first, arrival order within one; `critical` interrupts (unless a critical
request is speaking), drops queued requests below `high` and ignores quiet mode; a request that has
not started within its TTL is dropped; an id seen within the dedupe window is dropped; requests arriving
during shutdown are dropped. Every accepted request ends with exactly one terminal event: finished,
interrupted, dropped or failed. How a request is voiced is voice.py's business (`speak`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import TTLCache

from mqtt_speaker.core.listener import Listener
from mqtt_speaker.core.quiet import Quiet
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.text import LiveText
from mqtt_speaker.speech.vocabulary import (
    ClearCommand,
    DroppedEvent,
    DropReason,
    ErrorCode,
    ErrorReport,
    Event,
    InterruptedEvent,
    InterruptReason,
    Priority,
    QueuedEvent,
    SayRequest,
)

LOG = logging.getLogger(__name__)
DEDUPE_MAX_IDS = 10_000  # ids remembered for the dedupe window at most; the oldest are forgotten first
QUIET_HOURS_CHECK = 15.0  # seconds between looks at the clock for quiet hours beginning or ending


@dataclass
class Interruption:
    reason: InterruptReason
    by: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Job:
    request: SayRequest
    seq: int
    text: LiveText
    received: float = field(default_factory=time.monotonic)
    deadline: float = float("inf")
    ended: bool = False
    expiry: asyncio.TimerHandle | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    interruption: Interruption | None = None

    @property
    def order(self) -> tuple[int, int]:
        return (-self.request.priority.rank, self.seq)


class Voicer(Protocol):
    """How a request is spoken (core/voice.py), as the scheduler sees it."""

    def refuse(self, job: Job) -> ErrorReport | None:
        """Why it may not start now (the cost guard), or None."""
        ...

    async def speak(self, job: Job) -> Event:
        """Play it; its terminal event."""
        ...


class Scheduler:
    """Owns the queue and the current request (event loop only)."""

    def __init__(self, settings: Settings, voice: Voicer, quiet: Quiet, listener: Listener) -> None:
        self._settings = settings
        self._voice = voice
        self.quiet = quiet
        self._listener = listener
        self._queue: list[Job] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._current: Job | None = None
        self._closing = False  # shutting down: nothing new is accepted or started
        self._recent_ids: TTLCache[str, bool] = TTLCache(DEDUPE_MAX_IDS, ttl=settings.dedupe_window)

    @property
    def current(self) -> Job | None:
        return self._current

    @property
    def closing(self) -> bool:
        """Shutting down: nothing new is accepted."""
        return self._closing

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def _end(self, job: Job, event: Event) -> None:
        """Publish the request's terminal event: exactly once, whatever happens."""
        if job.ended:
            LOG.error("request %s already ended; not publishing %s", job.request.id, event.event_type)
            return
        job.ended = True
        if job.expiry is not None:
            job.expiry.cancel()
        self._listener.on_event(event)

    def _drop(self, job: Job, reason: DropReason) -> None:
        LOG.info("dropped %s: %s", job.request.id, reason)
        self._end(job, DroppedEvent(id=job.request.id, reason=reason))

    def drop_where(self, condition: Callable[[Job], bool], reason: DropReason) -> None:
        dropped = [job for job in self._queue if condition(job)]
        self._queue = [job for job in self._queue if not condition(job)]
        for job in dropped:
            self._drop(job, reason)
        if dropped:
            self._listener.on_change()

    def _remaining_ttl(self, request: SayRequest) -> float:
        """Counted from its own start instant, or when it was sent, not from its arrival; a `ts` ahead of
        the arrival (a sender's clock that is ahead) counts as the arrival: it never lengthens the TTL."""
        ttl = request.ttl if request.ttl is not None else self._settings.default_ttl
        now = time.time()
        origin = request.at if request.at is not None else request.sent_at
        if origin is not None and (request.at is not None or origin < now):
            return origin + ttl - now
        return ttl

    def _is_duplicate(self, request: SayRequest) -> bool:
        return request.id_given and request.id in self._recent_ids

    def submit(self, request: SayRequest, text: LiveText | None = None) -> None:
        """Queue a request; its text is `text` as it arrives (a stream), or else its complete segments."""
        job = Job(request, next(self._seq), text if text is not None else LiveText.complete(request.segments))
        if self._closing:
            return self._drop(job, "shutdown")
        if self._is_duplicate(request):
            return self._drop(job, "duplicate")
        remaining = self._remaining_ttl(request)
        if remaining <= 0:
            return self._drop(job, "expired")
        if self.quiet.silences(request):
            return self._drop(job, "quiet")
        if request.priority is Priority.CRITICAL:
            self.drop_where(lambda queued: queued.request.priority.rank < Priority.HIGH.rank, "preempted")
            current = self._current
            if current is not None and current.request.priority is not Priority.CRITICAL:
                self._interrupt(current, Interruption("priority", request.id))
        if len(self._queue) >= self._settings.queue_size:
            lowest = max(self._queue, key=lambda queued: queued.order)
            self._listener.on_error(
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
        if request.id_given:  # remembered only once accepted: a retry after queue_full or quiet is spoken
            self._recent_ids[request.id] = True
        job.deadline = time.monotonic() + remaining
        job.expiry = asyncio.get_running_loop().call_later(remaining, self._expire, job)
        self._queue.append(job)
        self._queue.sort(key=lambda queued: queued.order)
        position = self._queue.index(job) + 1 + (1 if self._current else 0)
        self._listener.on_event(
            QueuedEvent(id=request.id, position=position, queue_length=len(self._queue), priority=request.priority)
        )
        self._wakeup.set()
        self._listener.on_change()
        return None

    def _expire(self, job: Job) -> None:
        if job in self._queue:
            self._queue.remove(job)
            self._drop(job, "expired")
            self._listener.on_change()

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
        self.drop_where(lambda job: job.request.priority.rank < below, "cleared")
        if command.stop:
            self.stop("stop")

    async def run(self) -> None:
        """Speak queued requests one at a time until cancelled."""
        watch = asyncio.create_task(self._watch_quiet_hours()) if self._settings.quiet_hours else None
        try:
            await self._work()
        finally:
            if watch is not None:
                watch.cancel()

    async def _watch_quiet_hours(self) -> None:
        """Quiet hours beginning or ending show in the state at once (and drop what waits, when they begin)."""
        was = self.quiet.now()
        while True:
            await asyncio.sleep(QUIET_HOURS_CHECK)
            if (now := self.quiet.now()) != was:
                was = now
                self.drop_quieted()
                self._listener.on_change()

    def drop_quieted(self) -> None:
        """Quiet mode came on: what it silences is dropped from the queue."""
        self.drop_where(lambda job: self.quiet.silences(job.request), "quiet")

    def _dropped_at_dequeue(self, job: Job) -> bool:
        if time.monotonic() >= job.deadline:
            self._drop(job, "expired")
            return True
        if self.quiet.silences(job.request):  # quiet hours began
            self._drop(job, "quiet")
            return True
        refused = self._voice.refuse(job)  # the cost guard
        if refused is not None:
            self._listener.on_error(refused)
            self._drop(job, "rate_limited")
            return True
        return False

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            job = self._queue.pop(0)
            if job.expiry is not None:
                job.expiry.cancel()
            if self._dropped_at_dequeue(job):
                self._listener.on_change()  # queue_length changed
                continue
            self._current = job
            self._listener.on_change()
            try:
                self._end(job, await self._voice.speak(job))
            finally:
                self._current = None
                job.done.set()
                self._listener.on_change()

    async def shutdown(self, grace: float) -> None:
        """Queued requests are dropped, and any that arrive from now on; the current one fades out and ends
        `interrupted` (within `grace` seconds)."""
        self._closing = True
        self.drop_where(lambda _job: True, "shutdown")
        current = self._current
        if current is None:
            return
        self._interrupt(current, Interruption("shutdown", None))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(current.done.wait(), grace)
        if not current.ended:
            self._end(current, InterruptedEvent(id=current.request.id, reason="shutdown"))
