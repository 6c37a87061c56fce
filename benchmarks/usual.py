"""The usual approach (most MQTT speakers, and the SDK's own example): on each message a new WebSocket,
all the audio collected, then played."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import paho.mqtt.client as paho
import sounddevice as sd
from cartesia import AsyncCartesia
from paho.mqtt.enums import CallbackAPIVersion

RATE = 44100


async def speak(url: str, key: str, text: str) -> None:
    client = AsyncCartesia(api_key=key, websocket_base_url=url)
    ws = await client.tts.websocket_connect().enter()
    ctx = ws.context(
        model_id="sonic-3",
        voice="6ccbfb76-1fc6-48f7-b71d-91ac6298247b",
        output_format={"container": "raw", "encoding": "pcm_s16le", "sample_rate": RATE},
        timeout=30,
    )
    await ctx.push(text, continue_=False)
    audio = bytearray()
    async for event in ctx.receive():
        if event.type == "chunk" and event.audio:
            audio += event.audio
    await ws.close()
    samples = np.frombuffer(bytes(audio), dtype="<i2").astype(np.float32) / 32768
    sd.play(np.concatenate([samples, np.zeros(RATE // 4, dtype=np.float32)]), RATE, device="pulse", blocking=True)


def main() -> None:
    port, topic, url, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = lambda _c, _u, message: asyncio.run(speak(url, key, message.payload.decode()))
    client.connect("127.0.0.1", port)
    client.on_subscribe = lambda *_: print("ready", flush=True)  # subscribed: nothing published is missed
    client.loop_forever()


if __name__ == "__main__":
    main()
