"""The Cartesia SDK's surface the engine relies on, checked against the real SDK (pinned in
constraints.txt). The engine reads its socket itself: `recv_bytes()` gives each message as it came and
ends in a websockets exception when the socket closes (the engine's only way to see a close between
requests); `send()` takes a request as a dict; `parse_event()` reads an error frame. If an SDK update
changes one of these, this fails, loudly."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cartesia import AsyncCartesia
from websockets.exceptions import WebSocketException

from mqtt_speaker.engines.cartesia import error_frame
from mqtt_speaker.speech.vocabulary import ErrorCode
from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator
from tests.sound import wait_until


def request(context_id: str, voice: str) -> Any:
    return {
        "context_id": context_id,
        "model_id": "sonic-3",
        "voice": voice,
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000},
        "transcript": "Hello there.",
        "continue": False,
    }


def test_the_sdk_socket_gives_raw_messages_and_ends_when_it_closes(emulator: CartesiaEmulator) -> None:
    async def main() -> None:
        client = AsyncCartesia(api_key=TEST_API_KEY, websocket_base_url=emulator.url)
        ws = await client.tts.websocket_connect().enter()
        try:
            await ws.send(request("sdk-check", "a-voice"))
            kinds: list[str] = []
            while not kinds or kinds[-1] != "done":
                message = json.loads(await asyncio.wait_for(ws.recv_bytes(), 10))
                assert message["context_id"] == "sdk-check", message
                kinds.append(message["type"])
            assert kinds[0] == "chunk"

            await ws.send(request("sdk-refused", "over-quota"))
            raw = await asyncio.wait_for(ws.recv_bytes(), 10)
            assert json.loads(raw)["type"] == "error"
            assert error_frame(ws.parse_event(raw)).code == ErrorCode.CARTESIA_RATE_LIMITED

            reading = asyncio.ensure_future(ws.recv_bytes())
            await asyncio.to_thread(wait_until, lambda: emulator.open_connections() == 1, 10, "the socket")
            await asyncio.to_thread(emulator.drop_connections, 1000, "bye")
            with pytest.raises(WebSocketException):
                await asyncio.wait_for(reading, 10)
        finally:
            await ws.close()
            await client.close()

    asyncio.run(main())
