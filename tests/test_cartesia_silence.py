"""A Cartesia socket that stays silent before any audio is retried once on a fresh socket (README)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.cartesia_emulator import CartesiaEmulator, Fault, FaultKind
from tests.conftest import Daemon, spoken_ok
from tests.sound import wait_until

pytestmark = pytest.mark.e2e


@pytest.mark.fault
def test_a_socket_silent_before_any_audio_is_retried_once_and_speaks(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env, CARTESIA__FIRST_CHUNK_TIMEOUT="1")
    wait_until(lambda: emulator.open_connections() == 1, 10, "the warm socket")
    emulator.behaviour.faults.append(Fault("silent", after_chunks=0))  # this context gets nothing, ever
    daemon.say(b'{"id": "hushed", "text": "Silence first"}')
    spoken_ok(daemon, "hushed")
    assert len(emulator.contexts_for("Silence first")) == 2  # the silent attempt, and the retry
    assert [e["event_type"] for e in daemon.events("hushed")] == ["queued", "started", "finished"]


@pytest.mark.fault
@pytest.mark.parametrize("kind", ["abort", "close_1000"])
def test_a_socket_dropped_before_any_audio_is_retried_once_and_speaks(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, kind: FaultKind
) -> None:
    daemon = make_daemon(cartesia_env)
    wait_until(lambda: emulator.open_connections() == 1, 10, "the warm socket")
    emulator.behaviour.faults.append(Fault(kind, after_chunks=0))
    daemon.say(b'{"id": "dropped-first", "text": "Dropped before a word"}')
    spoken_ok(daemon, "dropped-first")
    assert len(emulator.contexts_for("Dropped before a word")) == 2


@pytest.mark.fault
def test_a_socket_lost_before_segment_n_is_retried_from_segment_n(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env, CARTESIA__PREFETCH_SEGMENTS="1")  # segment 1 opens once 0 is done
    wait_until(lambda: emulator.open_connections() == 1, 10, "the warm socket")
    emulator.behaviour.faults.append(Fault("close_1011", after_chunks=0, transcript="Second half"))
    segments = [{"text": "First half spoken. "}, {"text": "Second half after the loss.", "emotion": "sad"}]
    daemon.say(json.dumps({"id": "halves", "segments": segments}))
    spoken_ok(daemon, "halves")
    assert len(emulator.contexts_for("First half")) == 1  # not asked again
    assert len(emulator.contexts_for("Second half")) == 2  # lost, then retried on a fresh socket
