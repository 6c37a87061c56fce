"""The scheduling policy alone (a fake voice; no engine, no audio): every accepted request ends with
exactly one terminal event under random traffic, priorities and preemption, shutdown, quiet hours."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_speaker.core.quiet import Quiet
from mqtt_speaker.core.scheduler import Scheduler
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.vocabulary import TERMINAL_EVENTS, ClearCommand, Event, Priority, SayRequest, Segment
from tests.fakes import FakeVoice, Recorder

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("say"),
            st.sampled_from(list(Priority)),
            st.sampled_from(["a", "b", "c", None, None, None]),  # repeated ids exercise de-duplication
            st.sampled_from([None, None, 0.002, 0.05]),  # ttl
            st.sampled_from(["hello world", "fail here", "hi"]),
        ),
        st.tuples(st.sampled_from(["stop", "skip"])),
        st.tuples(st.just("clear"), st.sampled_from([None, *Priority]), st.booleans()),
        st.tuples(st.just("quiet"), st.booleans()),
        st.tuples(st.just("wait"), st.sampled_from([0, 0.001, 0.01])),
    ),
    max_size=40,
)


class Policy:
    """A scheduler on a fake voice, its quiet switch, and what it says."""

    def __init__(self, per_char: float = 0.0001, clock: Any = dt.datetime.now, **values: Any) -> None:
        self.listener = Recorder()
        self.quiet = False
        config = Settings(**values)
        quiet = Quiet(config, lambda: self.quiet, clock)
        self.scheduler = Scheduler(config, FakeVoice(self.listener, per_char), quiet, self.listener)
        self.worker = asyncio.create_task(self.scheduler.run())

    @property
    def events(self) -> list[Event]:
        return self.listener.events

    def say(self, request_id: str, priority: Priority = Priority.NORMAL, text: str = "x" * 200, **fields: Any) -> None:
        self.scheduler.submit(SayRequest(id=request_id, segments=(Segment(text=text),), priority=priority, **fields))

    def ends(self) -> list[tuple[str, str, str | None]]:
        return [
            (e.id, e.event_type.value, getattr(e, "reason", None))
            for e in self.events
            if e.event_type in TERMINAL_EVENTS
        ]

    async def until(self, condition: Any) -> None:
        async with asyncio.timeout(10):
            while not condition():
                self.listener.noted.clear()
                await self.listener.noted.wait()

    async def close(self) -> None:
        await self.scheduler.shutdown(grace=2)
        self.worker.cancel()
        await asyncio.gather(self.worker, return_exceptions=True)


async def scenario(operations: list[tuple[Any, ...]]) -> None:
    policy = Policy(queue_size=4, dedupe_window=60)
    submitted: collections.Counter[str] = collections.Counter()
    for n, op in enumerate(operations):
        match op:
            case ("say", priority, given_id, ttl, text):
                request_id = given_id or f"gen{n}"
                request = SayRequest(
                    id=request_id,
                    id_given=given_id is not None,
                    segments=(Segment(text=text),),
                    priority=priority,
                    ttl=ttl,
                )
                submitted[request_id] += 1
                policy.scheduler.submit(request)
            case ("stop" | "skip" as kind,):
                policy.scheduler.stop(kind)
            case ("clear", below, stop):
                policy.scheduler.clear(ClearCommand(below=below, stop=stop))
            case ("quiet", on):
                policy.quiet = on
                policy.scheduler.drop_quieted()
            case ("wait", seconds):
                await asyncio.sleep(seconds)
    await asyncio.sleep(0.02)
    await policy.close()

    events = policy.events
    ended = collections.Counter(e.id for e in events if e.event_type in TERMINAL_EVENTS)
    assert ended == submitted, (ended, submitted)
    assert policy.scheduler.queue_length == 0
    # Nothing happens to a request after its terminal event.
    seen_end: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.event_type in TERMINAL_EVENTS:
            seen_end[event.id] += 1
        else:
            assert seen_end[event.id] < submitted[event.id], event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_every_accepted_request_ends_exactly_once(operations: list[tuple[Any, ...]]) -> None:
    asyncio.run(scenario(operations))


def test_priority_order_and_critical_preemption() -> None:
    async def run() -> list[tuple[str, str, str | None]]:
        policy = Policy(per_char=0.001)
        policy.say("first")
        await policy.until(lambda: policy.scheduler.current is not None)  # "first" is speaking
        policy.say("low", Priority.LOW)
        policy.say("normal", Priority.NORMAL)
        policy.say("high", Priority.HIGH)
        policy.say("high2", Priority.HIGH)
        policy.say("alarm", Priority.CRITICAL)
        await policy.until(lambda: len(policy.ends()) == 6)
        await policy.close()
        return policy.ends()

    assert asyncio.run(run()) == [
        ("normal", "dropped", "preempted"),  # in queue order
        ("low", "dropped", "preempted"),
        ("first", "interrupted", "priority"),
        ("alarm", "finished", None),
        ("high", "finished", None),
        ("high2", "finished", None),
    ]


def test_a_request_arriving_during_shutdown_is_dropped_not_left_queued() -> None:
    async def run() -> list[tuple[str, str, str | None]]:
        policy = Policy(per_char=0.001)
        policy.say("long", text="x" * 2000)
        await policy.until(lambda: any(e.event_type.value == "started" for e in policy.events))
        closing = asyncio.create_task(policy.scheduler.shutdown(grace=1.5))
        await asyncio.sleep(0)
        policy.say("late")  # the MQTT link still delivers until it is stopped
        await closing
        events = [e.event_type.value for e in policy.events if e.id == "late"]
        await policy.close()
        assert events == ["dropped"]
        return policy.ends()

    assert asyncio.run(run()) == [("late", "dropped", "shutdown"), ("long", "interrupted", "shutdown")]


def test_quiet_hours_beginning_drop_what_is_still_queued(monkeypatch: Any) -> None:
    from mqtt_speaker.core import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "QUIET_HOURS_CHECK", 0.01)

    async def run() -> list[tuple[str, str, str | None]]:
        now = [dt.datetime(2026, 11, 25, 21, 59, 59)]
        policy = Policy(per_char=0.001, clock=lambda: now[0], quiet_hours="22:00-07:00")
        policy.say("before")
        policy.say("waiting")
        await policy.until(lambda: any(e.event_type.value == "started" for e in policy.events))
        now[0] = dt.datetime(2026, 11, 25, 22, 0, 1)
        await policy.until(lambda: len(policy.ends()) == 2)
        await policy.close()
        return policy.ends()

    assert asyncio.run(run()) == [("waiting", "dropped", "quiet"), ("before", "finished", None)]


def test_a_ts_in_the_future_does_not_lengthen_the_ttl() -> None:
    async def run() -> list[tuple[str, str, str | None]]:
        policy = Policy(per_char=0.001)
        policy.say("long", text="x" * 2000)  # two seconds
        policy.say("ahead", ttl=0.5, sent_at=time.time() + 3600)  # a sender's clock an hour ahead
        policy.say("past", ttl=0.5, sent_at=time.time() - 0.1)
        await policy.until(lambda: len(policy.ends()) == 3)
        await policy.close()
        return policy.ends()

    assert asyncio.run(run()) == [
        ("past", "dropped", "expired"),  # 0.4 s after its arrival
        ("ahead", "dropped", "expired"),  # 0.5 s after its arrival, not an hour and a half
        ("long", "finished", None),
    ]
