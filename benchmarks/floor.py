"""The floor: a minimal MQTT subscriber that writes a pre-generated tone into an output stream that is
already open, the moment a message arrives. Nothing can beat it by much."""

from __future__ import annotations

import sys
import threading

import numpy as np
import paho.mqtt.client as paho
import sounddevice as sd
from paho.mqtt.enums import CallbackAPIVersion

RATE = 44100
TONE = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(0.3 * RATE)) / RATE)).astype(np.float32)


def main() -> None:
    port, topic = int(sys.argv[1]), sys.argv[2]
    lock = threading.Lock()
    pending: list[np.ndarray] = []

    def callback(outdata: np.ndarray, frames: int, _time: object, _status: object) -> None:
        out = outdata[:, 0]
        out[:] = 0
        filled = 0
        with lock:
            while pending and filled < frames:
                block = pending[0]
                take = min(frames - filled, block.size)
                out[filled : filled + take] = block[:take]
                filled += take
                if take == block.size:
                    pending.pop(0)
                else:
                    pending[0] = block[take:]

    def on_message(*_args: object) -> None:
        with lock:
            pending.append(TONE)

    stream = sd.OutputStream(
        samplerate=RATE, channels=1, dtype="float32", device="pulse", latency="low", callback=callback
    )
    stream.start()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.on_subscribe = lambda *_: print("ready", flush=True)  # subscribed: nothing published is missed
    client.loop_forever()


if __name__ == "__main__":
    main()
