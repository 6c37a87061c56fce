"""Streaming benchmark: a reply written at ten words a second, spoken with say/stream, against the usual
approach (wait for the whole reply, then say it), on real parts (mosquitto, the daemon, the Cartesia
emulator through the SDK, the PulseAudio capture).

Figures (each the median of BENCH_STREAMS replies, with the worst):
- first sentence: from the publication of the chunk that ends the reply's first sentence to the first
  audible sample, minus the emulator's first-chunk delay (target: within 50 ms);
- largest gap inside a stream whose text arrives faster than speech (target: under 10 ms);
- seam after a stall: the writer stops for 3 s in the middle of a sentence (the speech before it has
  ended, and its Cartesia context is closed); from the writer's first chunk after the stall to the first
  audible sample, minus the first-chunk delay (target: within 20 ms).

Run with script/bench (after the main benchmark) or `python -m benchmarks.streaming`.
Writes benchmarks/results/streaming.{json,md}.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from benchmarks.bench import write_results
from benchmarks.rig import FIRST_CHUNK, rig
from tests.conftest import Daemon, Observer
from tests.sound import longest_gap, sound_regions

REPLY = (
    "Good morning. The washing machine finished its cycle twenty minutes ago, and the laundry is ready to hang. "
    "Rain is expected after lunch, so the garden can wait until tomorrow. Your first meeting starts at nine."
)
WORD_INTERVAL = 0.1  # ten words a second: faster than the emulator speaks (40 ms a character)


def words(text: str) -> list[str]:
    first, *rest = text.split(" ")
    return [first, *(f" {word}" for word in rest)]


class Writer:
    """Publishes a reply on say/stream, word by word, and notes when each chunk was published."""

    def __init__(self, observer: Observer, topic: str) -> None:
        self._observer = observer
        self._topic = topic

    def write(self, stream_id: str, pieces: list[str], pause_after: int | None = None) -> list[float]:
        published = []
        for seq, text in enumerate(pieces):
            chunk: dict[str, Any] = {"id": stream_id, "seq": seq, "text": text}
            if seq == len(pieces) - 1:
                chunk["end"] = True
            self._observer.publish(self._topic, json.dumps(chunk))
            published.append(time.monotonic())
            time.sleep(3.0 if seq == pause_after else WORD_INTERVAL)
        return published


def first_sentence_end(pieces: list[str]) -> int:
    return next(i for i, piece in enumerate(pieces) if piece.rstrip().endswith("."))


def run(count: int) -> dict[str, Any]:
    pieces = words(REPLY)
    end_of_first = first_sentence_end(pieces)
    first_ms: list[float] = []
    usual_ms: list[float] = []
    gaps_ms: list[float] = []
    usual_gaps_ms: list[float] = []  # the same reply as one say: what the machine's audio path does alone
    seams_ms: list[float] = []
    contexts: list[int] = []
    with rig("mqtt-speaker-bench-stream-") as parts:
        work, _, broker, emulator, observer, capture = parts
        daemon = Daemon(broker, observer, parts.daemon_env(MQTT_SPEAKER_CACHE__ENABLED="false"), work)
        daemon.start(LOG_LEVEL="WARNING")
        writer = Writer(observer, daemon.topic("say/stream"))
        for n in range(count):
            # Streamed: heard from the first sentence on, while the rest is written.
            capture.quiet_for(0.3)
            start = capture.samples()
            before = len(emulator.contexts)
            published = writer.write(f"reply{n}", pieces)
            first_sentence = published[end_of_first]
            first_ms.append((capture.onset_after(first_sentence - 0.05) - first_sentence - FIRST_CHUNK) * 1000)
            daemon.wait_terminal(f"reply{n}", timeout=120)
            capture.quiet_for(0.3, timeout=120)
            x = capture.signal(start)
            region = sound_regions(x)
            gaps_ms.append(longest_gap(x[region[0].start : region[-1].end]) * 1000)
            contexts.append(len(emulator.contexts) - before)

            # The usual approach: the same reply written at the same pace, said when it is complete.
            capture.quiet_for(0.3)
            start = capture.samples()
            began = time.monotonic()
            written = began + end_of_first * WORD_INTERVAL
            time.sleep(len(pieces) * WORD_INTERVAL)
            observer.publish(daemon.topic("say"), json.dumps({"id": f"usual{n}", "text": REPLY, "cache": False}))
            usual_ms.append((capture.onset_after(written) - written - FIRST_CHUNK) * 1000)
            daemon.wait_terminal(f"usual{n}", timeout=120)
            capture.quiet_for(0.3, timeout=120)
            x = capture.signal(start)
            region = sound_regions(x)
            usual_gaps_ms.append(longest_gap(x[region[0].start : region[-1].end]) * 1000)

            # A writer that stalls for 3 s in the middle of the second sentence (after "... washing machine").
            stall_at = end_of_first + 3
            published = writer.write(f"stall{n}", pieces, pause_after=stall_at)
            resumed = published[stall_at + 1]
            seams_ms.append((capture.onset_after(resumed - 0.05) - resumed - FIRST_CHUNK) * 1000)
            daemon.wait_terminal(f"stall{n}", timeout=120)
            capture.quiet_for(0.3, timeout=120)
        daemon.stop()

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "worst": max(values), "n": len(values)}

    return {
        "first_sentence_to_audio_ms": summary(first_ms),
        "usual_first_sentence_to_audio_ms": summary(usual_ms),
        "largest_gap_in_stream_ms": summary(gaps_ms),
        "usual_largest_gap_ms": summary(usual_gaps_ms),
        "seam_after_stall_ms": summary(seams_ms),
        "contexts_per_reply": contexts,
        "raw": {"first": first_ms, "usual": usual_ms, "gaps": gaps_ms, "usual_gaps": usual_gaps_ms, "seams": seams_ms},
    }


def _met(flag: bool) -> str:
    return "yes" if flag else "**no**"


def table(r: dict[str, Any]) -> str:
    first, usual = r["first_sentence_to_audio_ms"], r["usual_first_sentence_to_audio_ms"]
    gap, seam, usual_gap = r["largest_gap_in_stream_ms"], r["seam_after_stall_ms"], r["usual_largest_gap_ms"]
    rows = [
        ("first sentence published -> first audio (ms)", usual, first, f"within 50 ms: {_met(first['median'] <= 50)}"),
        ("largest gap inside the reply (ms)", usual_gap, gap, f"under 10 ms: {_met(gap['median'] < 10)}"),
        ("seam after a 3 s stall (ms)", None, seam, f"within 20 ms: {_met(seam['median'] <= 20)}"),
    ]
    lines = [
        f"A {len(REPLY.split())}-word reply written at {1 / WORD_INTERVAL:.0f} words a second. Emulator first-chunk "
        f"delay {FIRST_CHUNK * 1000:.0f} ms (subtracted). Median (worst) of {first['n']} replies. Contexts per reply: "
        f"{r['contexts_per_reply']}.",
        "",
        "| measure | usual approach (wait, then say) | say/stream | target met |",
        "|---|---|---|---|",
    ]
    for label, theirs, ours, target in rows:
        usual_cell = "" if theirs is None else f"{theirs['median']:.1f} ({theirs['worst']:.1f})"
        lines.append(f"| {label} | {usual_cell} | {ours['median']:.1f} ({ours['worst']:.1f}) | {target} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    count = int(os.environ.get("BENCH_STREAMS", "5"))
    results = run(count)
    write_results("streaming", results, table(results))


if __name__ == "__main__":
    main()
