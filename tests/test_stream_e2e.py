"""End to end, streamed text: chunks on say/stream through mosquitto -> daemon -> Cartesia emulator (official
SDK, input streaming) -> PortAudio -> PulseAudio capture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cartesia_emulator import CartesiaEmulator, frequency_for
from tests.conftest import Broker, Daemon, spoken_ok
from tests.sound import RATE, PulseAudio, dominant_frequency, longest_gap, sound_regions, wait_until
from tests.test_cli import broker_env

pytestmark = pytest.mark.e2e

REPLY = (
    "Good morning. The washing machine finished its cycle twenty minutes ago, and the laundry is ready to hang. "
    "Rain is expected after lunch, so the garden can wait until tomorrow. Your first meeting starts at nine."
)


def chunk(daemon: Daemon, stream_id: str, **fields: Any) -> None:
    daemon.observer.publish(daemon.topic("say/stream"), json.dumps({"id": stream_id, **fields}))


def write(daemon: Daemon, stream_id: str, pieces: list[str], interval: float, **opening: Any) -> None:
    """Publish `pieces` one chunk each, `interval` seconds apart, with seq; the last one ends the stream."""
    for seq, text in enumerate(pieces):
        fields = {**(opening if seq == 0 else {}), "seq": seq, "text": text}
        if seq == len(pieces) - 1:
            fields["end"] = True
        chunk(daemon, stream_id, **fields)
        if seq < len(pieces) - 1:
            time.sleep(interval)


def words(text: str) -> list[str]:
    """The text as a language model streams it: each word with the space before it."""
    first, *rest = text.split(" ")
    return [first, *(f" {word}" for word in rest)]


def terminal_events(daemon: Daemon, stream_id: str) -> list[str]:
    ends = {"finished", "interrupted", "dropped", "failed"}
    return [e["event_type"] for e in daemon.events(stream_id) if e["event_type"] in ends]


def assert_clean_contexts(emulator: CartesiaEmulator) -> None:
    """Every context was closed by the daemon (done), none expired or was sent anything after."""
    for context in emulator.contexts.values():
        assert context.late_inputs == [], context
        assert context.done and not context.expired, context


def test_streamed_seed_neutral_then_angry_mid_stream_without_a_gap(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        chunk(daemon, "seed", seq=0, text="Well maybe if you just ")
        chunk(daemon, "seed", seq=1, text="loosen up a little!", emotion="angry", end=True)
        finished = spoken_ok(daemon, "seed")
        x = capture.wait_for_sound_then_silence()

    assert [e["event_type"] for e in daemon.events("seed")] == ["queued", "started", "finished"]
    (first,) = emulator.contexts_for("Well maybe")
    (second,) = emulator.contexts_for("loosen up")
    assert (first.emotion, second.emotion) == ("neutral", "angry")
    assert first.transcript + second.transcript == "Well maybe if you just loosen up a little!"
    assert_clean_contexts(emulator)
    regions = sound_regions(x)
    assert len(regions) == 1, regions
    sound = x[regions[0].start : regions[0].end]
    split = first.samples_sent
    assert dominant_frequency(sound[: split - 441]) == pytest.approx(frequency_for("neutral"), abs=5)
    assert dominant_frequency(sound[split + 441 :]) == pytest.approx(frequency_for("angry"), abs=5)
    assert longest_gap(sound) < 0.03
    assert abs(finished["duration_ms"] / 1000 - (first.samples_sent + second.samples_sent) / RATE) < 0.015


def test_a_reply_written_at_ten_words_a_second_is_heard_long_before_its_end_on_one_context(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        write(daemon, "reply", words(REPLY), 0.1)
        heard_when_written = capture.signal()
        spoken_ok(daemon, "reply")
        x = capture.wait_for_sound_then_silence()

    # Audible long before the last word was published: seconds of it had played by then.
    before = sound_regions(heard_when_written)
    assert before and (heard_when_written.size - before[0].start) / RATE > 1.5, before
    # One context, fed with continuations, closed at the end; the text whole and in order.
    (context,) = emulator.contexts.values()
    assert context.transcript == REPLY
    assert context.inputs > 3
    assert_clean_contexts(emulator)
    frames = [f for f in emulator.frames if f.get("context_id") == context.context_id and "transcript" in f]
    assert all(f["continue"] for f in frames[:-1]) and frames[-1]["continue"] is False
    # Heard whole, without gaps: one sound as long as the audio sent.
    regions = sound_regions(x)
    assert len(regions) == 1, regions
    # Heard whole: nothing it was sent is missing (a short underrun on a busy machine may add a few tens of
    # milliseconds of silence inside; the gap check below bounds each one).
    assert -0.03 < regions[0].seconds - context.samples_sent / RATE < 0.1
    assert longest_gap(x[regions[0].start : regions[0].end]) < 0.03
    assert terminal_events(daemon, "reply") == ["finished"]


def test_a_writer_that_stalls_mid_sentence_goes_on_in_a_new_context(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    with pulse.capture() as capture:
        chunk(daemon, "stall", seq=0, text="Let me check the weather. The forecast")
        daemon.wait_for_event("stall", "started")
        time.sleep(3)  # the writer stalls (a tool call): the first context's audio ends and it would expire
        chunk(daemon, "stall", seq=1, text=" says sunshine all day.", end=True)
        spoken_ok(daemon, "stall")
        x = capture.wait_for_sound_then_silence()

    first, second = sorted(emulator.contexts.values(), key=lambda c: c.first_chunk_at or 0)
    assert first.transcript == "Let me check the weather. "
    assert second.transcript == "The forecast says sunshine all day."
    assert_clean_contexts(emulator)  # the first was closed before it could expire; nothing was lost
    heard = [r.seconds for r in sound_regions(x)]
    assert len(heard) == 2, heard
    assert heard[0] == pytest.approx(first.samples_sent / RATE, abs=0.02)
    assert heard[1] == pytest.approx(second.samples_sent / RATE, abs=0.02)
    assert terminal_events(daemon, "stall") == ["finished"]


@pytest.mark.parametrize(
    "sample",
    [
        ("ja", "今日は雨です。", "傘を持って行きましょう。"),
        ("zh", "今天下雨。", "带上雨伞。"),
        ("hi", "आज बारिश हो रही है।", " छाता ले लो।"),
    ],
    ids=lambda sample: sample[0],
)
def test_live_text_without_spaces_after_its_sentences_starts_at_the_first_sentence(
    make_daemon: Callable[..., Daemon],
    cartesia_env: dict[str, str],
    emulator: CartesiaEmulator,
    sample: tuple[str, str, str],
) -> None:
    language, first, rest = sample
    daemon = make_daemon(cartesia_env, stream__timeout="60")
    chunk(daemon, "lang", seq=0, text=first, language=language)
    daemon.wait_for_event("lang", "started", timeout=20)  # the writer has not gone on (nor ended): a sentence has
    chunk(daemon, "lang", seq=1, text=rest, end=True)
    spoken_ok(daemon, "lang")
    contexts = sorted(emulator.contexts.values(), key=lambda c: c.first_chunk_at or 0)
    assert contexts[0].transcript.startswith(first)
    assert "".join(c.transcript for c in contexts) == first + rest


def test_chunks_out_of_order_and_twice_are_spoken_once_in_order(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    parts = ["One, ", "two, ", "three, ", "four."]
    for seq in (2, 0, 1, 1, 0, 2):
        chunk(daemon, "order", seq=seq, text=parts[seq])
    chunk(daemon, "order", seq=3, text=parts[3], end=True)
    spoken_ok(daemon, "order")
    assert "".join(c.transcript for c in emulator.contexts.values()) == "One, two, three, four."
    assert daemon.errors() == []
    assert [e["event_type"] for e in daemon.events("order")] == ["queued", "started", "finished"]


def test_a_missing_chunk_is_waited_for_then_skipped_with_a_warning(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env, stream__gap_wait="0.5")
    chunk(daemon, "gap", seq=0, text="Before the gap. ")
    chunk(daemon, "gap", seq=2, text="After the gap.", end=True)
    spoken_ok(daemon, "gap")
    warning = daemon.wait_for_error(lambda e: e["code"] == "stream_gap")
    assert (warning["id"], warning["severity"], warning["field"]) == ("gap", "warning", "seq")
    assert "seq 1 " in warning["message"]
    assert "".join(c.transcript for c in emulator.contexts.values()) == "Before the gap. After the gap."


def test_a_stream_never_ended_times_out_and_finishes(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env, stream__timeout="1")
    chunk(daemon, "forever", seq=0, text="Nobody will end this")
    finished = spoken_ok(daemon, "forever")
    warning = daemon.wait_for_error(lambda e: e["code"] == "stream_timeout")
    assert warning["id"] == "forever" and "forever" in warning["message"]
    assert finished["duration_ms"] > 0
    assert "".join(c.transcript for c in emulator.contexts.values()) == "Nobody will end this"
    assert terminal_events(daemon, "forever") == ["finished"]


def test_stop_in_the_middle_of_a_stream_and_a_chunk_after_it(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], pulse: PulseAudio
) -> None:
    daemon = make_daemon(cartesia_env)
    chunk(daemon, "halt", seq=0, text="This reply goes on and on. " * 3)
    daemon.wait_for_event("halt", "started")
    daemon.observer.publish(daemon.topic("stop"), "")
    interrupted = daemon.wait_terminal("halt")
    assert (interrupted["event_type"], interrupted["reason"]) == ("interrupted", "stop")
    chunk(daemon, "halt", seq=1, text="Too late.")
    error = daemon.wait_for_error(lambda e: e["code"] == "stream_ended")
    assert error["id"] == "halt" and "halt" in error["message"] and "interrupted" in error["message"]
    time.sleep(0.5)  # anything else it would wrongly publish
    assert terminal_events(daemon, "halt") == ["interrupted"]


def test_bad_chunks_get_clear_errors_and_nothing_else(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env, stream__max_length="30")
    daemon.observer.publish(daemon.topic("say/stream"), json.dumps({"seq": 0, "text": "no id"}))
    daemon.observer.publish(daemon.topic("say/stream"), "just some words")
    daemon.observer.publish(daemon.topic("say/stream"), json.dumps([1, 2]))
    chunk(daemon, "neg", seq=-1, text="x")
    wait_until(lambda: len(daemon.errors()) >= 4, 10, "four errors")
    errors = daemon.errors()
    assert [(e["code"], e["field"]) for e in errors[:4]] == [
        ("invalid_request", "id"),
        ("invalid_request", "payload"),
        ("invalid_request", "payload"),
        ("invalid_request", "seq"),
    ]
    assert errors[3]["id"] == "neg"
    assert daemon.events() == []

    chunk(daemon, "far", seq=0, text="Hello. ")
    chunk(daemon, "far", seq=5000, text="Lost in the future.")
    far = daemon.wait_for_error(lambda e: e["id"] == "far")
    assert (far["code"], far["field"]) == ("invalid_request", "seq") and "5000" in far["message"]

    chunk(daemon, "long", seq=0, text="A sentence that is far too long for the cap.", end=True)
    long = daemon.wait_for_error(lambda e: e["id"] == "long")
    assert (long["code"], long["field"]) == ("text_too_long", "text")
    assert "first 30" in long["message"]
    spoken_ok(daemon, "long")
    assert "".join(c.transcript for c in emulator.contexts_for("A sentence")) == "A sentence that is far too lon"
    chunk(daemon, "far", seq=1, text="Bye.", end=True)
    spoken_ok(daemon, "far")
    assert terminal_events(daemon, "far") == ["finished"]


def test_retained_chunks_are_ignored(make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.observer.publish(
        daemon.topic("say/stream"), json.dumps({"id": "kept", "text": "Retained.", "end": True}), retain=True
    )
    error = daemon.wait_for_error(lambda e: e["code"] == "retained_command_ignored")
    assert error["field"] == "retain"
    daemon.observer.publish(daemon.topic("say/stream"), b"", retain=True)
    assert daemon.events("kept") == []


def test_say_stream_speaks_a_pipe_as_it_is_written_mid_line(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, broker: Broker
) -> None:
    daemon = make_daemon(cartesia_env)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_SPEAKER_", "CARTESIA_"))}
    env.update(broker_env(broker, daemon))
    command = [sys.executable, "-m", "mqtt_speaker", "say", "--stream", "--id", "piped", "--emotion", "calm"]
    proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"The kettle has boiled. Your tea")  # no newline: a model mid-reply
        proc.stdin.flush()
        started = daemon.wait_for_event("piped", "started")  # speaking while the pipe is still open
        assert started["emotion"] == "calm"
        assert proc.poll() is None
        out, err = proc.communicate(b" is ready, with a biscuit.", timeout=60)  # then end of input
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    event = json.loads(out)
    assert (event["id"], event["event_type"]) == ("piped", "finished")
    spoken = "".join(c.transcript for c in sorted(emulator.contexts.values(), key=lambda c: c.first_chunk_at or 0))
    assert spoken == "The kettle has boiled. Your tea is ready, with a biscuit."
    daemon.wait_terminal("piped")  # the CLI heard it from the broker; the observer may hear it a moment later
    assert terminal_events(daemon, "piped") == ["finished"]


def run_stream_cli(
    daemon: Daemon, broker: Broker, pieces: list[str], pause: float, **settings: str
) -> subprocess.CompletedProcess[bytes]:
    """`mqtt-speaker say --stream --id cli` fed `pieces` through a pipe, `pause` seconds of quiet after
    each but the last, then the end of input; the CLI's own settings as given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_SPEAKER_", "CARTESIA_"))}
    env.update(broker_env(broker, daemon))
    env.update({f"MQTT_SPEAKER_{k.upper()}": v for k, v in settings.items()})
    command = [sys.executable, "-m", "mqtt_speaker", "say", "--stream", "--id", "cli"]
    proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None
        for index, piece in enumerate(pieces):
            proc.stdin.write(piece.encode())
            proc.stdin.flush()
            if index < len(pieces) - 1:
                time.sleep(pause)  # the writer is quiet: a tool call, a slow model
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_say_stream_keeps_its_stream_open_while_its_input_is_quiet_past_the_stream_timeout(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, broker: Broker
) -> None:
    daemon = make_daemon(cartesia_env, stream__timeout="3")
    pieces = ["Let me look that up. ", "The shop opens at nine."]
    result = run_stream_cli(daemon, broker, pieces, pause=8)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["event_type"] == "finished"
    spoken = "".join(c.transcript for c in sorted(emulator.contexts.values(), key=lambda c: c.first_chunk_at or 0))
    assert spoken == "".join(pieces)
    assert [e["code"] for e in daemon.errors()] == []


def test_say_stream_never_reports_success_for_text_that_was_not_spoken(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, broker: Broker
) -> None:
    daemon = make_daemon(cartesia_env, stream__timeout="0.5")  # shorter than the CLI's keepalive (2 s)
    result = run_stream_cli(daemon, broker, ["Let me look that up. ", "The shop opens at nine."], pause=4)
    assert result.returncode == 1, result.stdout
    assert json.loads(result.stdout)["event_type"] == "finished"  # what arrived in time was spoken
    assert b"stream_timeout" in result.stderr and b"stream_ended" in result.stderr
    assert "nine" not in "".join(c.transcript for c in emulator.contexts.values())


def test_a_stream_still_being_written_is_not_cached(make_daemon: Callable[..., Daemon], pulse: PulseAudio) -> None:
    daemon = make_daemon({"MQTT_SPEAKER_CACHE__ENABLED": "true"})  # espeak-ng: free, so no cost guard either
    chunk(daemon, "live", seq=0, text="Hello there. ")
    daemon.wait_for_event("live", "started")
    chunk(daemon, "live", seq=1, text="And some more words after it.", end=True)
    spoken_ok(daemon, "live")
    # The same first sentence as a say: not the stream's audio from the cache (its text was not known).
    daemon.say(json.dumps({"id": "plain", "text": "Hello there. "}))
    assert daemon.wait_for_event("plain", "started")["cached"] is False
    spoken_ok(daemon, "plain")
    daemon.say(json.dumps({"id": "again", "text": "Hello there. "}))
    assert daemon.wait_for_event("again", "started")["cached"] is True  # a complete text is cached


def test_chunks_waiting_for_a_missing_seq_are_bounded_by_the_length_cap(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env, stream__max_length="30", stream__gap_wait="5")
    chunk(daemon, "early", seq=0, text="Hi. ")
    chunk(daemon, "early", seq=2, text="x" * 28)
    error = daemon.wait_for_error(lambda e: e["id"] == "early")
    assert (error["code"], error["field"]) == ("text_too_long", "text") and "seq 2 is not kept" in error["message"]
    chunk(daemon, "early", seq=1, text="Bye.", end=True)
    spoken_ok(daemon, "early")
    assert "".join(c.transcript for c in emulator.contexts.values()) == "Hi. Bye."


def test_streams_open_at_once_are_capped(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env, stream__max_open="1")
    chunk(daemon, "first", seq=0, text="The first stream. ")
    chunk(daemon, "second", seq=0, text="The second stream.", end=True)
    error = daemon.wait_for_error(lambda e: e["id"] == "second")
    assert error["code"] == "too_many_streams" and "second" in error["message"]
    assert daemon.events("second") == []
    chunk(daemon, "first", seq=1, text="Ends here.", end=True)
    spoken_ok(daemon, "first")
    chunk(daemon, "second", seq=1, text="Only the tail.", end=True)  # there is room now: still not opened
    ended = daemon.wait_for_error(lambda e: e["id"] == "second" and e["code"] == "stream_ended")
    assert "too many streams" in ended["message"]
    assert daemon.events("second") == [] and emulator.contexts_for("Only the tail") == []


def test_a_stream_dropped_in_quiet_mode_answers_its_next_chunk_with_an_error(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    daemon.observer.publish(daemon.topic("set/quiet"), "ON")
    wait_until(lambda: daemon.states()[-1]["quiet"], 10, "quiet mode")
    chunk(daemon, "hush", seq=0, text="Not now. ")
    dropped = daemon.wait_terminal("hush")
    assert (dropped["event_type"], dropped["reason"]) == ("dropped", "quiet")
    chunk(daemon, "hush", seq=1, text="Still not.", end=True)
    error = daemon.wait_for_error(lambda e: e["code"] == "stream_ended")
    assert error["id"] == "hush" and "dropped" in error["message"]
    assert emulator.contexts == {}


def test_a_later_chunk_with_invalid_say_fields_is_spoken_and_they_are_ignored(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    chunk(daemon, "lax", seq=0, text="Hello there. ")
    chunk(daemon, "lax", seq=1, text="Still here. ", priority="urgent")
    chunk(daemon, "lax", seq=2, text="And here. ", language="klingon")
    chunk(daemon, "lax", seq=3, text="Bye.", at=time.time() + 3600, end=True)
    spoken_ok(daemon, "lax")
    spoken = "".join(c.transcript for c in sorted(emulator.contexts.values(), key=lambda c: c.first_chunk_at or 0))
    assert spoken == "Hello there. Still here. And here. Bye."
    assert [(e["code"], e["field"]) for e in daemon.errors()] == [
        ("unknown_field", "priority"),
        ("unknown_field", "language"),
        ("unknown_field", "at"),
    ]


def test_a_refused_opening_chunk_neither_opens_nor_holds_the_speaker(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    chunk(daemon, "far", seq=5000, text="Lost in the future.")
    chunk(daemon, "urgent", seq=0, text="Hello. ", priority="urgent")
    daemon.say(json.dumps({"id": "after", "text": "Spoken at once."}))
    spoken_ok(daemon, "after")
    assert daemon.events("far") == [] and daemon.events("urgent") == []
    assert [(e["id"], e["code"], e["field"]) for e in daemon.errors()] == [
        ("far", "invalid_request", "seq"),
        ("urgent", "invalid_request", "priority"),
    ]


def test_a_redelivered_last_chunk_is_ignored_after_the_stream_ended(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str]
) -> None:
    daemon = make_daemon(cartesia_env)
    chunk(daemon, "twice", seq=0, text="Hello. ")
    chunk(daemon, "twice", seq=1, text="Bye.", end=True)
    spoken_ok(daemon, "twice")
    chunk(daemon, "twice", seq=1, text="Bye.", end=True)  # QoS 1 delivers it again
    chunk(daemon, "twice", seq=2, text="Something new.")
    daemon.say(b'{"id": "marker"}')  # handled after both: once its error is here, theirs would be too
    daemon.wait_for_error(lambda e: e["id"] == "marker")
    assert [e["code"] for e in daemon.errors()] == ["stream_ended", "invalid_request"]
    assert terminal_events(daemon, "twice") == ["finished"]


def test_an_unknown_emotion_on_a_later_chunk_keeps_the_streams_emotion_as_the_warning_says(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator
) -> None:
    daemon = make_daemon(cartesia_env)
    chunk(daemon, "mood", seq=0, text="Calm down. ", emotion="angry")
    chunk(daemon, "mood", seq=1, text="Right now!", emotion="grumpy", end=True)
    spoken_ok(daemon, "mood")
    (warning,) = daemon.errors()
    assert (warning["code"], warning["field"]) == ("invalid_emotion", "emotion")
    assert "the stream's emotion so far" in warning["message"]
    assert {c.emotion for c in emulator.contexts.values()} == {"angry"}


@pytest.mark.parametrize("blank", [["   "], ["...", " ", "..."], [""]])
def test_a_stream_with_nothing_to_speak_fails_as_an_invalid_request_and_reaches_no_engine(
    make_daemon: Callable[..., Daemon], cartesia_env: dict[str, str], emulator: CartesiaEmulator, blank: list[str]
) -> None:
    daemon = make_daemon(cartesia_env)
    write(daemon, "blank", blank, 0.1)
    failed = daemon.wait_terminal("blank")
    assert (failed["event_type"], failed["code"]) == ("failed", "invalid_request")
    assert "nothing to speak" in failed["message"]
    error = daemon.wait_for_error(lambda e: e["id"] == "blank")
    assert (error["code"], error["field"]) == ("invalid_request", "text")
    assert emulator.contexts == {}  # nothing was sent to Cartesia, nothing billed
    daemon.say(b'{"id": "dots", "text": "..."}')  # the same as a say
    refused = daemon.wait_for_error(lambda e: e["id"] == "dots")
    assert (refused["code"], refused["field"]) == ("invalid_request", "text")
