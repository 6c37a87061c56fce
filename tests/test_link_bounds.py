"""The MQTT core's bounds: what paho's thread hands to the loop, and what paho holds for the broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import pytest

from mqtt_speaker.protocol.link import Inbound, MqttLink, Will
from mqtt_speaker.settings import MqttSettings
from tests.conftest import Broker, Observer, free_port
from tests.inprocess import until


def link(
    port: int, on_message: object, dropped: list[str], on_connected: Callable[[], None] = lambda: None, **limits: int
) -> MqttLink:
    built = MqttLink(
        MqttSettings(host="127.0.0.1", port=port, session_expiry=0),
        f"bounds-{port}",
        Will("mqtt-speaker/bounds/availability", "offline"),
        on_message=on_message,  # type: ignore[arg-type]
        on_connected=on_connected,
        on_problem=lambda _m: None,
        on_dropped=dropped.append,
        **limits,
    )
    built.subscribe(["mqtt-speaker/bounds/#"])
    return built


def test_a_flood_while_the_loop_is_busy_is_bounded_and_the_drops_are_reported(
    broker: Broker, observer: Observer
) -> None:
    received: list[bytes] = []
    dropped: list[str] = []
    counted: list[int] = []

    async def main() -> None:
        connected, probe, waited, after = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()

        def on_message(message: Inbound) -> None:
            received.append(message.payload)
            {b"probe": probe, b"9": waited, b"after": after}.get(message.payload, asyncio.Event()).set()

        the_link = link(broker.port, on_message, dropped, connected.set, inbound_limit=10)
        the_link.start()
        await asyncio.wait_for(connected.wait(), 10)
        for _ in range(20):  # until the subscription is in place (a probe sent before it is lost)
            await asyncio.to_thread(observer.publish, "mqtt-speaker/bounds/say", "probe")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(probe.wait(), 0.5)
                break
        received.clear()
        # The loop stalls (this blocks it) while 50 messages arrive: 10 may wait, the rest are dropped.
        for n in range(50):
            observer.publish("mqtt-speaker/bounds/say", f"{n}")
        deadline = time.monotonic() + 30
        while the_link.dropped_inbound < 40 and time.monotonic() < deadline:
            time.sleep(0.01)  # noqa: ASYNC251 (the point: the loop is stalled)
        await asyncio.wait_for(waited.wait(), 30)  # the 10 that waited are handled once the loop is free
        await asyncio.to_thread(observer.publish, "mqtt-speaker/bounds/say", "after")
        await asyncio.wait_for(after.wait(), 30)
        counted.append(the_link.dropped_inbound)
        await the_link.stop()

    asyncio.run(main())
    assert [m for m in received if m != b"probe"] == [*(f"{n}".encode() for n in range(10)), b"after"]
    assert counted == [40]
    assert dropped == ["40 inbound messages were dropped: more than 10 waited to be handled"]


def test_a_long_outage_bounds_the_outgoing_queue_and_counts_the_drops(caplog: pytest.LogCaptureFixture) -> None:
    dropped: list[str] = []
    the_link = link(free_port(), lambda _m: None, dropped, outbound_limit=20)  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="mqtt_speaker.protocol.link"):
        for n in range(25):
            the_link.publish("mqtt-speaker/bounds/event", f"{n}")
    assert the_link.dropped_outbound == 5
    assert [r.message for r in caplog.records if "dropping outgoing" in r.message]
    for n in range(10):  # retained ones (availability, state) still get out after the outage
        the_link.publish(f"mqtt-speaker/bounds/state{n}", "{}", retain=True)
    assert the_link.dropped_outbound == 5


def test_acknowledged_messages_free_their_room(broker: Broker) -> None:
    async def main() -> MqttLink:
        connected = asyncio.Event()
        the_link = link(broker.port, lambda _m: None, [], connected.set, outbound_limit=5)
        the_link.start()
        await asyncio.wait_for(connected.wait(), 10)
        for n in range(4):  # 4 x 5 messages: each batch fits once the one before is acknowledged
            for m in range(5):
                the_link.publish("mqtt-speaker/bounds/event", f"{n}.{m}")
            await until(lambda: the_link.outstanding == 0, "the broker's acknowledgements")
        await the_link.stop()
        return the_link

    assert asyncio.run(main()).dropped_outbound == 0
