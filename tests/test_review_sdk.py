"""The Cartesia SDK's private part the engine relies on, checked against the real SDK (pinned in
constraints.txt): `AsyncTTSResourceConnection._connection` is the websockets ClientConnection whose
`wait_closed()` ends when the socket closes. If an SDK update changes it, this fails, loudly."""

from __future__ import annotations

import asyncio

from cartesia import AsyncCartesia
from websockets.asyncio.client import ClientConnection

from mqtt_speaker.engines.cartesia import _closed_waiter
from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator
from tests.sound import wait_until


def test_the_sdk_socket_exposes_the_connection_the_engine_watches(emulator: CartesiaEmulator) -> None:
    async def main() -> None:
        client = AsyncCartesia(api_key=TEST_API_KEY, websocket_base_url=emulator.url)
        ws = await client.tts.websocket_connect().enter()
        try:
            assert isinstance(ws._connection, ClientConnection), type(ws._connection)
            closed = _closed_waiter(ws)
            await asyncio.to_thread(wait_until, lambda: emulator.open_connections() == 1, 10, "the socket")
            assert not closed.done()
            await asyncio.to_thread(emulator.drop_connections, 1000, "bye")
            await asyncio.wait_for(closed, 10)  # the engine's only way to see a close between requests
        finally:
            await ws.close()
            await client.close()

    asyncio.run(main())
