"""End to end: one voice for the whole house. A broadcast is synthesized once, by one room, and every room
plays the same audio, together from the first sample to the last (docs/sync.md).

Three daemons, each in its own room (tests/rooms.py: channels of one clocked pipe sink, one capture), the
Cartesia emulator giving every synthesis a pace of its own (within 8 %, as a generative voice never says a
text twice in the same time), and real parts throughout. A room's failure cases: the synthesizing room
killed or cut off mid-broadcast, the broker restarted, a room in quiet mode or busy with a critical
request, a room started mid-broadcast, forged and malformed frames, rooms behind slow and jittery
network paths, Piper for real.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mqtt_speaker.core.shared import Frame
from mqtt_speaker.protocol.fanout import AUDIO, encode_frame
from mqtt_speaker.protocol.fanout import RATE as RATE_SHARED
from tests.cartesia_emulator import CartesiaEmulator
from tests.conftest import BASE, Broker, Daemon, Observer, spoken_ok
from tests.relay import Relay
from tests.rooms import (
    NODELAY_BROKER,
    TARGET_MS,
    THRESHOLD,
    Rooms,
    end_spread_ms,
    heard,
    nodelay_broker,
    onset,
    spread_ms,
    stamped,
)
from tests.sound import RATE, wait_until

pytestmark = pytest.mark.e2e

broker = pytest.fixture(name="broker")(nodelay_broker)
TEXTS = [
    "The front door is open, please close it when you pass.",
    "Dinner is ready: come to the kitchen while it is still warm.",
    "The washing machine has finished its cycle and can be emptied.",
]
LONG = (
    "This is a long announcement for the whole house. It goes on for a while, sentence after sentence, "
    "so that there is time for something to go wrong in the middle of it. And then it ends."
)


@pytest.fixture
def paced(jittery: CartesiaEmulator) -> CartesiaEmulator:
    """Every synthesis at a pace of its own: the same text never lasts the same twice."""
    jittery.behaviour.pace_spread = 0.08
    return jittery


def shared_by(started: list[dict[str, Any]]) -> str:
    """The room that synthesized a broadcast, as every room's `started` says (the same in each)."""
    assert all(s["shared"] for s in started), started
    (site,) = {s["synthesized_by"] for s in started}
    return str(site)


def test_a_broadcast_is_synthesized_once_and_every_room_ends_together(
    start_rooms: Callable[..., list[Daemon]],
    rooms: Rooms,
    observer: Observer,
    paced: CartesiaEmulator,
    record_property: Callable[[str, object], None],
) -> None:
    daemons = start_rooms(*[{"env": json.dumps({"MQTT_SPEAKER_CACHE__ENABLED": "true"})}] * 3)
    onsets, ends = [], []
    for n, text in enumerate(TEXTS):
        request_id = f"house-{n}"
        x, started = heard(rooms, daemons, request_id, stamped(observer, {"id": request_id, "text": text}))
        site = shared_by(started)
        assert site in {d.site for d in daemons}
        assert len(paced.contexts_for(text)) == 1  # billed once, whatever the number of rooms
        onsets.append(spread_ms(x, [0, 1, 2]))
        ends.append(end_spread_ms(x, [0, 1, 2]))
        for daemon in daemons:
            finished = daemon.wait_terminal(request_id)
            assert (finished["synthesized_by"], finished["shared"]) == ([site], True), finished
    record_property("onset_spread_ms", onsets)
    record_property("end_spread_ms", ends)
    print(f"shared all/say: onset spread {onsets} ms, end spread {ends} ms")
    assert max(onsets) <= TARGET_MS and max(ends) <= TARGET_MS, (onsets, ends)
    # Every room kept what it heard under the same key: a repeat to any one room is free there.
    for daemon in daemons:
        request_id = f"repeat-{daemon.site}"
        daemon.say(json.dumps({"id": request_id, "text": TEXTS[0]}))
        assert daemon.wait_terminal(request_id)["event_type"] == "finished"
        (repeat,) = [e for e in daemon.events(request_id) if e["event_type"] == "started"]
        assert repeat["cached"] is True, repeat
    assert len(paced.contexts_for(TEXTS[0])) == 1


def test_rooms_that_synthesize_for_themselves_end_apart(
    start_rooms: Callable[..., list[Daemon]], rooms: Rooms, observer: Observer, paced: CartesiaEmulator
) -> None:
    # What sharing prevents: three syntheses of one text, each at its own pace, start together and end
    # apart (the echo a house hears at the end of a long announcement).
    own = {"sync__share": "false"}
    daemons = start_rooms(own, own, own)
    ends = []
    for n, text in enumerate(TEXTS[:2]):
        request_id = f"own-{n}"
        x, started = heard(rooms, daemons, request_id, stamped(observer, {"id": request_id, "text": text}))
        assert not any(s["shared"] for s in started) and spread_ms(x, [0, 1, 2]) <= TARGET_MS
        assert len(paced.contexts_for(text)) == 3
        ends.append(end_spread_ms(x, [0, 1, 2]))
    print(f"each room its own synthesis: end spread {ends} ms")
    assert max(ends) > 3 * TARGET_MS, ends


def test_a_group_a_stream_and_a_chime_are_shared_too(
    start_rooms: Callable[..., list[Daemon]], rooms: Rooms, observer: Observer, paced: CartesiaEmulator
) -> None:
    downstairs = {"sync__groups": '["downstairs"]'}
    daemons = start_rooms(downstairs, downstairs, {"sync__groups": '["upstairs"]'})
    members = daemons[:2]
    group = stamped(observer, {"id": "g-1", "text": TEXTS[0], "chime": True}, f"{BASE}/group/downstairs/say")
    x, started = heard(rooms, members, "g-1", group)
    assert shared_by(started) in {m.site for m in members}  # a room not in the group never synthesizes for it
    assert spread_ms(x, [0, 1]) <= TARGET_MS and end_spread_ms(x, [0, 1]) <= TARGET_MS
    assert np.abs(x[:, 2]).max() < THRESHOLD and daemons[2].events("g-1") == []
    assert len(paced.contexts_for(TEXTS[0])) == 1

    def stream() -> None:
        topic = f"{BASE}/all/say/stream"
        now = time.time()
        words = TEXTS[1].split(" ")
        for seq, word in enumerate(words):
            chunk: dict[str, Any] = {"id": "s-1", "seq": seq, "text": word + " ", "ts": now}
            if seq == len(words) - 1:
                chunk["end"] = True
            observer.publish(topic, json.dumps(chunk))
            time.sleep(0.05)  # a language model writing

    x, started = heard(rooms, daemons, "s-1", stream)
    shared_by(started)
    assert spread_ms(x, [0, 1, 2]) <= TARGET_MS and end_spread_ms(x, [0, 1, 2]) <= TARGET_MS
    assert len({c.context_id for c in paced.contexts.values() if "come to the kitchen" in c.transcript}) == 1


def test_the_synthesizing_room_killed_mid_broadcast_the_others_finish_it(
    start_rooms: Callable[..., list[Daemon]], rooms: Rooms, observer: Observer, paced: CartesiaEmulator
) -> None:
    paced.behaviour.real_time_factor = 1.0  # speech made at the pace it is heard: it is still being made
    daemons = start_rooms()
    with rooms.capture() as capture:
        stamped(observer, {"id": "killed", "text": LONG})()
        started = daemons[0].wait_for_event("killed", "started")
        synthesizer = next(d for d in daemons if d.site == started["synthesized_by"])
        others = [d for d in daemons if d is not synthesizer]
        wait_until(lambda: len(capture.signal()) > RATE * 3, 30, "three seconds of the broadcast")
        synthesizer.kill()
        for daemon in others:
            spoken_ok(daemon, "killed", timeout=60)
    for daemon in others:
        assert [e["event_type"] for e in daemon.events("killed")].count("finished") == 1
        finished = daemon.wait_terminal("killed")
        assert finished["synthesized_by"] == [synthesizer.site, daemon.site], finished
    # Each survivor went on from the first word not heard: its own synthesis is the rest of the text.
    own = [c for c in paced.contexts_for("ends") if not LONG.startswith(c.transcript)]
    assert len(own) == 2, [c.transcript for c in paced.contexts_for("ends")]
    for context in own:
        assert LONG.endswith(context.transcript.strip()) and len(context.transcript) < len(LONG) - 40, context


def test_a_broker_restart_mid_broadcast_every_room_still_finishes(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    rooms: Rooms,
    paced: CartesiaEmulator,
    workdir: Path,
) -> None:
    paced.behaviour.real_time_factor = 1.0
    config = NODELAY_BROKER + f"user root\npersistence true\npersistence_location {workdir}/\n"
    config = config.replace("persistence false\n", "")
    restartable = Broker(workdir, config)
    restartable.start()
    observer = Observer(restartable.port, persistent=True)
    try:
        daemons = [
            make_daemon(
                {**cartesia_env, **rooms.room_env(i)},
                on=(restartable, observer),
                SYNC__LEAD="1.0",
                MQTT__RECONNECT_MAX_DELAY="1",
            )
            for i in range(3)
        ]
        with rooms.capture() as capture:
            stamped(observer, {"id": "restart", "text": LONG})()
            wait_until(lambda: len(capture.signal()) > RATE * 2.5, 30, "the broadcast to be under way")
            restartable.stop()
            restartable.start()
            for daemon in daemons:
                spoken_ok(daemon, "restart", timeout=90)
        for daemon in daemons:
            ends = [e for e in daemon.events("restart") if e["event_type"] in ("finished", "failed", "interrupted")]
            assert len(ends) == 1, daemon.events("restart")
    finally:
        observer.close()
        restartable.stop()


def test_a_quiet_room_synthesizes_for_rooms_with_no_engine_of_their_own(
    start_rooms: Callable[..., list[Daemon]], rooms: Rooms, observer: Observer, paced: CartesiaEmulator
) -> None:
    # The first room has Cartesia and is in quiet mode; the others have no key and no Piper (espeak-ng
    # only). The house prefers Cartesia: the quiet room synthesizes, does not play it, the others do.
    no_key = {"env": json.dumps({"CARTESIA_API_KEY": "", "MQTT_SPEAKER_ENGINE": "espeak"})}
    daemons = start_rooms({}, no_key, no_key)
    quiet, listeners = daemons[0], daemons[1:]
    observer.publish(quiet.topic("set/quiet"), "ON")
    wait_until(lambda: quiet.states()[-1]["quiet"], 10, "quiet mode")
    for daemon in listeners:
        wait_until(lambda d=daemon: d.states()[-1]["engine"] == "espeak", 10, "no engine but espeak-ng")
    x, started = heard(rooms, listeners, "quiet-1", stamped(observer, {"id": "quiet-1", "text": TEXTS[0]}))
    assert shared_by(started) == quiet.site and {s["engine"] for s in started} == {"cartesia"}
    assert quiet.wait_terminal("quiet-1")["reason"] == "quiet"
    assert np.abs(x[:, 0]).max() < THRESHOLD  # the quiet room itself is silent
    assert spread_ms(x, [1, 2]) <= TARGET_MS and end_spread_ms(x, [1, 2]) <= TARGET_MS
    assert len(paced.contexts_for(TEXTS[0])) == 1


def test_a_room_busy_with_a_critical_request_keeps_it_the_others_play_on_time(
    start_rooms: Callable[..., list[Daemon]], rooms: Rooms, observer: Observer, paced: CartesiaEmulator
) -> None:
    daemons = start_rooms()
    busy = daemons[0]
    busy.say(json.dumps({"id": "fire", "text": LONG, "priority": "critical"}))
    busy.wait_for_event("fire", "started")
    x, started = heard(rooms, daemons[1:], "busy-1", stamped(observer, {"id": "busy-1", "text": TEXTS[1]}))
    shared_by(started)
    assert all(s["late_ms"] <= TARGET_MS for s in started), started
    assert spread_ms(x, [1, 2]) <= TARGET_MS and end_spread_ms(x, [1, 2]) <= TARGET_MS
    spoken_ok(busy, "fire")
    spoken_ok(busy, "busy-1")  # after the critical one: late, and it says so
    assert busy.wait_for_event("busy-1", "started")["late_ms"] > 1000


def test_a_room_started_mid_broadcast_joins_the_rest_of_it_in_step(
    start_rooms: Callable[..., list[Daemon]],
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    rooms: Rooms,
    observer: Observer,
    paced: CartesiaEmulator,
) -> None:
    paced.behaviour.real_time_factor = 1.0
    daemons = start_rooms({}, {})
    with rooms.capture() as capture:
        stamped(observer, {"id": "join", "text": LONG})()
        wait_until(lambda: len(capture.signal()) > RATE * 2.5, 30, "the broadcast to be under way")
        late = make_daemon({**cartesia_env, **rooms.room_env(2)}, SYNC__LEAD="1.0")  # room 2's, started now
        for daemon in [*daemons, late]:
            spoken_ok(daemon, "join", timeout=60)
        x = capture.wait_for_sound_then_silence([0, 1, 2])
    joined = late.wait_for_event("join", "started")
    assert joined["shared"], joined
    first = [onset(x[:, room]) for room in range(3)]
    assert first[2] is not None and first[0] is not None and first[2] > first[0] + RATE  # it came in later
    assert end_spread_ms(x, [0, 1, 2]) <= TARGET_MS  # and ended with the others: the same samples, in step


def test_forged_and_malformed_frames_get_errors_and_the_broadcast_goes_on(
    start_rooms: Callable[..., list[Daemon]], rooms: Rooms, observer: Observer, paced: CartesiaEmulator
) -> None:
    daemons = start_rooms()

    def publish() -> None:
        stamped(observer, {"id": "forged", "text": TEXTS[2]})()
        started = daemons[0].wait_for_event("forged", "started")
        key = next(
            json.loads(m.payload)["key"]
            for m in observer.messages
            if m.topic.endswith("/start") and m.payload and json.loads(m.payload)["request"]["id"] == "forged"
        )
        audio = f"{BASE}/all/shared/{key}/audio"
        observer.publish(audio, b"not a frame at all")
        observer.publish(audio, b"MSA1" + bytes(61))  # the size of no frame
        observer.publish(audio, b"\x00" * 100_000)  # oversized
        noise = Frame(0, 0, RATE_SHARED, 0, None, np.full(2400, 20000, dtype=np.int16))
        observer.publish(audio, encode_frame(AUDIO, 0, bytes(16), noise))  # a frame of another synthesis
        observer.publish(f"{BASE}/all/shared/{key}/start", b"{not json")
        assert started["shared"]

    x, _ = heard(rooms, daemons, "forged", publish)
    assert spread_ms(x, [0, 1, 2]) <= TARGET_MS and end_spread_ms(x, [0, 1, 2]) <= TARGET_MS
    for daemon in daemons:
        daemon.wait_for_error(lambda e: e["code"] == "invalid_frame")
        assert daemon.alive()


@pytest.fixture
def relays(broker: Broker) -> Iterator[list[Relay]]:
    started = [Relay(broker.port, seed=n).start() for n in range(3)]
    yield started
    for relay in started:
        relay.stop()


def test_rooms_on_slow_jittery_network_paths_still_end_together(
    start_rooms: Callable[..., list[Daemon]],
    rooms: Rooms,
    observer: Observer,
    paced: CartesiaEmulator,
    relays: list[Relay],
    record_property: Callable[[str, object], None],
) -> None:
    daemons = start_rooms(*({"mqtt__port": str(relay.port)} for relay in relays))
    ends = []
    for n, text in enumerate(TEXTS):
        request_id = f"relay-{n}"
        x, started = heard(rooms, daemons, request_id, stamped(observer, {"id": request_id, "text": text}))
        shared_by(started)
        assert spread_ms(x, [0, 1, 2]) <= TARGET_MS
        ends.append(end_spread_ms(x, [0, 1, 2]))
    record_property("end_spread_ms", ends)
    assert max(ends) <= TARGET_MS, ends


def test_piper_for_real_is_synthesized_once_and_heard_together(
    make_daemon: Callable[..., Daemon], rooms: Rooms, observer: Observer, piper_env: dict[str, str]
) -> None:
    daemons = [make_daemon({**piper_env, **rooms.room_env(i)}, SYNC__LEAD="1.5", FALLBACK="[]") for i in range(3)]
    for daemon in daemons:
        assert daemon.states()[-1]["engine"] == "piper"
    for n, text in enumerate(TEXTS[:2]):
        request_id = f"piper-{n}"
        x, started = heard(rooms, daemons, request_id, stamped(observer, {"id": request_id, "text": text}))
        assert shared_by(started) in {d.site for d in daemons} and {s["engine"] for s in started} == {"piper"}
        assert spread_ms(x, [0, 1, 2]) <= TARGET_MS and end_spread_ms(x, [0, 1, 2]) <= TARGET_MS
