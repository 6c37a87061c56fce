"""A minimal sounddevice player, the benchmark's yardstick: blocking writes of 4096 frames (93 ms) into
a default-latency stream. Prints "ready" once open; plays the raw s16le file named on the command line
when a line arrives on stdin; prints "done" after the last sample has been heard; exits on end of input."""

from __future__ import annotations

import sys
import time

import numpy as np
import sounddevice as sd

RATE = 44100
BLOCK = 4096


def main() -> None:
    audio = np.fromfile(sys.argv[1], dtype="<i2")
    with sd.OutputStream(samplerate=RATE, channels=1, dtype="int16", device="pulse", blocksize=BLOCK) as stream:
        print("ready", flush=True)
        sys.stdin.readline()
        for start in range(0, audio.size, BLOCK):
            stream.write(audio[start : start + BLOCK])
        time.sleep(stream.latency + 0.05)  # the tail, before stop drops it
        print("done", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
