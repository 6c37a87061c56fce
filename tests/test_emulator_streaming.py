"""The emulator's input streaming, through the official SDK: what the daemon's streaming is tested against."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cartesia import AsyncCartesia

from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator
from tests.sound import wait_until


async def polled(condition: Callable[[], bool]) -> None:
    """Wait (off the loop: the emulator runs in its own thread) until `condition()` holds."""
    await asyncio.to_thread(wait_until, condition, 5, "the emulator")


@pytest.fixture
def emu() -> Iterator[CartesiaEmulator]:
    server = CartesiaEmulator().start()
    yield server
    server.stop()


async def until(ctx: Any, kind: str) -> float:
    """Read the context's events until one of `kind`; when it came."""
    async with asyncio.timeout(5):
        async for event in ctx.receive():
            if event.type == kind:
                return time.monotonic()
    raise AssertionError(f"no {kind}")


def test_text_is_held_for_max_buffer_delay_flush_speaks_it_and_an_idle_context_expires(emu: CartesiaEmulator) -> None:
    async def run() -> tuple[float, float, float]:
        client = AsyncCartesia(api_key=TEST_API_KEY, websocket_base_url=emu.url)
        ws = await client.tts.websocket_connect().enter()
        options: dict[str, Any] = {
            "model_id": "sonic-3",
            "voice": "v",
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        }
        held = ws.context("held", max_buffer_delay_ms=300, **options)
        sent = time.monotonic()
        await held.push("No sentence end yet")  # held until the delay: no end of sentence in it
        waited = await until(held, "chunk") - sent
        flushed = ws.context("flushed", max_buffer_delay_ms=3000, **options)
        sent = time.monotonic()
        await flushed.push("Held by the default delay")
        await flushed.push("", flush=True)  # ... unless flushed
        flush_waited = await until(flushed, "flush_done") - sent
        done_at = time.monotonic()
        await polled(lambda: emu.contexts["flushed"].expired)  # nothing left to say: it expires ...
        expired_after = time.monotonic() - done_at
        await flushed.push(" and more", continue_=False)
        await polled(lambda: bool(emu.contexts["flushed"].late_inputs))
        await ws.close()
        return waited, flush_waited, expired_after

    waited, flush_waited, expired_after = asyncio.run(run())
    assert 0.25 <= waited < 1.0, waited
    assert flush_waited < 1.0, flush_waited
    assert 0.8 < expired_after < 1.5, expired_after  # ... about a second after its last audio
    flushed = emu.contexts["flushed"]
    assert flushed.expired and not flushed.done
    assert [m["transcript"] for m in flushed.late_inputs] == [" and more"]  # ignored: nothing more was spoken
    assert flushed.transcript == "Held by the default delay"


def test_a_sentence_end_is_spoken_at_once_with_managed_buffering(emu: CartesiaEmulator) -> None:
    async def run() -> float:
        client = AsyncCartesia(api_key=TEST_API_KEY, websocket_base_url=emu.url)
        ws = await client.tts.websocket_connect().enter()
        ctx = ws.context(
            "sentence",
            model_id="sonic-3",
            voice="v",
            output_format={"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
            max_buffer_delay_ms=3000,
        )
        sent = time.monotonic()
        await ctx.push("A whole sentence. And the start of")
        waited = await until(ctx, "chunk") - sent
        await ws.close()
        return waited

    assert asyncio.run(run()) < 0.5
