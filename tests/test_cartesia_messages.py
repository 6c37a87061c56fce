"""The Cartesia engine's own reading of the socket's messages: each goes to its context by id; what
cannot be read fails that context with a clear error, never the reader (which serves every context on
the socket)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import numpy as np
import pytest

from mqtt_speaker.engines.base import SynthesisError
from mqtt_speaker.engines.cartesia import CartesiaEngine, Context
from mqtt_speaker.settings import CartesiaSettings
from mqtt_speaker.speech.vocabulary import ErrorCode


def raw(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def chunk(context_id: str, samples: list[int]) -> bytes:
    data = base64.b64encode(np.array(samples, dtype="<i2").tobytes()).decode()
    return raw({"type": "chunk", "context_id": context_id, "data": data, "done": False, "status_code": 206})


def run(messages: list[bytes], *ids: str) -> tuple[dict[str, Context], list[Context]]:
    """The messages handed to the engine's dispatch, with a context open for each of `ids`."""

    async def main() -> tuple[dict[str, Context], list[Context]]:
        engine = CartesiaEngine(CartesiaSettings())
        records = [Context(None, {"context_id": i}, 0, 0, 24000) for i in ids]  # type: ignore[arg-type, typeddict-item]
        contexts = {r.id: r for r in records}
        for message in messages:
            engine.dispatch(None, contexts, message)  # type: ignore[arg-type]
        return contexts, records

    return asyncio.run(main())


def taken(record: Context) -> list[Any]:
    async def main() -> list[Any]:
        items: list[Any] = []
        while not items or isinstance(items[-1], np.ndarray):
            items.append(await record.out.take())
        return items

    return asyncio.run(main())


def test_audio_goes_to_its_context_and_arrives_as_one_chunk() -> None:
    done = raw({"type": "done", "context_id": "a", "done": True, "status_code": 206})
    contexts, (a, b) = run([chunk("a", [1, 2]), chunk("b", [9]), chunk("a", [3]), done], "a", "b")
    first, end = taken(a)
    assert first.tolist() == [1, 2, 3] and end is None
    assert a.done and a.received == 3
    assert list(contexts) == ["b"]  # a context that said `done` is no longer listed
    assert b.received == 1 and not b.over


@pytest.mark.parametrize(
    ("message", "what"),
    [
        (raw({"type": "chunk", "context_id": "a", "data": 12}), "chunk"),
        (raw({"type": "chunk", "context_id": "a", "data": "@@not base64@@"}), "chunk"),
        (raw({"type": "timestamps", "context_id": "a", "word_timestamps": {"words": ["x"]}}), "timestamps"),
    ],
)
def test_a_message_that_cannot_be_read_fails_its_context_with_what_it_was(message: bytes, what: str) -> None:
    contexts, (a, b) = run([message], "a", "b")
    [error] = taken(a)
    assert isinstance(error, SynthesisError)
    assert error.code is ErrorCode.SYNTHESIS_FAILED
    assert f"Cartesia sent a {what} message not understood" in error.message
    assert list(contexts) == ["b"] and not b.over  # the other context goes on


def test_what_is_not_json_or_for_no_open_context_is_passed_over() -> None:
    contexts, (a,) = run([b"not json", b"[1, 2]", chunk("gone", [1]), chunk("a", [5])], "a")
    assert list(contexts) == ["a"] and not a.over
    assert a.received == 1


def test_a_held_take_merges_what_comes_meanwhile_and_ends_early_at_the_end() -> None:
    """While the listener is far ahead, the engine holds off taking: the audio that comes meanwhile goes
    up as one chunk, and the context's end (or error) is not held back."""

    async def main() -> tuple[list[int], float, Any]:
        record = Context(None, {"context_id": "a"}, 0, 0, 24000)  # type: ignore[arg-type, typeddict-item]
        loop = asyncio.get_running_loop()
        record.out.put(np.array([1], dtype=np.int16))
        loop.call_later(0.05, record.out.put, np.array([2], dtype=np.int16))
        loop.call_later(0.1, record.out.put, np.array([3], dtype=np.int16))
        merged = await record.out.take(hold=0.3)
        started = time.monotonic()
        loop.call_later(0.05, record.out.put, None)
        end = await record.out.take(hold=60)
        return merged.tolist(), time.monotonic() - started, end  # type: ignore[union-attr]

    merged, waited, end = asyncio.run(main())
    assert merged == [1, 2, 3]
    assert end is None and waited < 30
