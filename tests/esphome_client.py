"""A client of the daemon's ESPHome API, run as a script with the Python of whichever aioesphomeapi release
a test wants (the tests' own, 46.x as Home Assistant 2026.11 uses; or Home Assistant 2025.4.4's
virtualenv, 29.9.0): it does what Home Assistant does, step by step, and prints what it saw as JSON lines.

    python esphome_client.py HOST PORT KEY STEP...       (KEY: "-" for none)

Steps: info (connect with login, device info, entities, the first state), volume=0.35, mute, unmute,
announce=TEXT, announce-media=URL, play=URL, announce-url=URL, stop, wait-state=playing|idle,
wait-volume=0.6, sleep=S.
Each prints {"step": ..., ...}; an exception prints {"error": type, "message": ...} and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from aioesphomeapi.client import APIClient
from aioesphomeapi.model import MediaPlayerCommand, MediaPlayerInfo, MediaPlayerState


def out(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def run(host: str, port: int, key: str | None, steps: list[str]) -> None:  # noqa: PLR0912 - one branch per step
    client = APIClient(host, port, "", noise_psk=key, client_info="mqtt-speaker test client")
    states: asyncio.Queue[Any] = asyncio.Queue()
    player_key = 0
    await client.connect(login=True)
    try:
        for step in steps:
            name, _, value = step.partition("=")
            if name == "info":
                info = await client.device_info()
                entities, _services = await client.list_entities_services()
                players = [e for e in entities if isinstance(e, MediaPlayerInfo)]
                player_key = players[0].key
                client.subscribe_states(states.put_nowait)
                state = await asyncio.wait_for(states.get(), 10)
                out(
                    step=name,
                    name=info.name,
                    friendly_name=info.friendly_name,
                    mac=info.mac_address,
                    uses_password=info.uses_password,
                    voice_assistant_feature_flags=info.voice_assistant_feature_flags,
                    api_version=str(client.api_version),
                    players=[{"key": p.key, "object_id": p.object_id, "name": p.name} for p in players],
                    state=MediaPlayerState(state.state).name,
                    volume=round(state.volume, 3),
                    muted=state.muted,
                )
            elif name in ("volume", "mute", "unmute"):
                if name == "volume":
                    client.media_player_command(player_key, volume=float(value))
                else:
                    command = MediaPlayerCommand.MUTE if name == "mute" else MediaPlayerCommand.UNMUTE
                    client.media_player_command(player_key, command=command)
                state = await asyncio.wait_for(states.get(), 10)
                out(step=name, volume=round(state.volume, 3), muted=state.muted)
            elif name in ("announce", "announce-media"):
                text, media = (value, "") if name == "announce" else ("", value)
                finished = await client.send_voice_assistant_announcement_await_response(media, 60, text=text)
                out(step=name, success=finished.success)
            elif name in ("play", "announce-url"):
                client.media_player_command(player_key, media_url=value, announcement=name == "announce-url")
                out(step=name)
            elif name == "stop":
                client.media_player_command(player_key, command=MediaPlayerCommand.STOP)
                out(step=name)
            elif name == "wait-state":
                while MediaPlayerState((state := await asyncio.wait_for(states.get(), 30)).state).name.lower() != value:
                    pass
                out(step=name, state=value)
            elif name == "wait-volume":
                while round((state := await asyncio.wait_for(states.get(), 30)).volume, 3) != float(value):
                    pass
                out(step=name, volume=float(value), muted=state.muted)
            elif name == "sleep":
                await asyncio.sleep(float(value))
    finally:
        await client.disconnect()


def main() -> None:
    host, port, key, *steps = sys.argv[1:]
    try:
        asyncio.run(run(host, int(port), None if key == "-" else key, steps))
    except Exception as exc:
        out(error=type(exc).__name__, message=str(exc)[:300])
        sys.exit(1)


if __name__ == "__main__":
    main()
