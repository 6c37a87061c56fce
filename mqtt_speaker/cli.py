"""The commands that talk to the broker once: `say` (and `say --stream`) and `discovery`."""

from __future__ import annotations

import argparse
import codecs
import json
import os
import select
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from mqtt_speaker.protocol.discovery import discovery_messages, removal_messages
from mqtt_speaker.protocol.link import BrokerUnreachable, one_shot
from mqtt_speaker.protocol.topics import BROADCAST_SITE, Command, Topics
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.vocabulary import TERMINAL_EVENTS, ErrorCode, EventType

EXIT_OK = 0
EXIT_NOT_FINISHED = 1
EXIT_CONFIG = 2
EXIT_BROKER = 3
EXIT_TIMEOUT = 4
KEEPALIVE = 2.0  # seconds of quiet input after which `say --stream` sends an empty chunk (at most; a
# quarter of stream.timeout when that is shorter): the stream stays open while the writer thinks
# Errors about our request that mean part of its text was not (or will not be) spoken.
TEXT_LOST = frozenset(
    {
        ErrorCode.INVALID_REQUEST,
        ErrorCode.STREAM_ENDED,
        ErrorCode.STREAM_TIMEOUT,
        ErrorCode.STREAM_GAP,
        ErrorCode.TEXT_TOO_LONG,
        ErrorCode.TOO_MANY_STREAMS,
    }
)


class _Outcome:
    """What the broker says about one request: its terminal event, and the errors about it that mean
    part of its text was not spoken."""

    def __init__(self, request_id: str, *, stream: bool) -> None:
        self._id = request_id
        self._stream = stream
        self.ended = threading.Event()
        self.event: dict[str, Any] | None = None
        self.lost: list[dict[str, Any]] = []
        self.refused: str | None = None  # by the broker

    def on_message(self, _c: Any, _u: Any, message: Any) -> None:
        try:
            report = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(report, dict) or report.get("id") != self._id:
            return
        if report.get("event_type") in TERMINAL_EVENTS:
            self.event = report
            self.ended.set()
        elif report.get("code") in TEXT_LOST:
            self.lost.append(report)
            refused_whole = ErrorCode.TOO_MANY_STREAMS if self._stream else ErrorCode.INVALID_REQUEST
            if report["code"] == refused_whole:
                self.ended.set()  # not accepted: no event will come

    def exit_code(self) -> int:
        """Printed: the terminal event (standard output) and what was lost (standard error)."""
        for error in self.lost:
            print(f"{error['code']}: {error.get('message', '')}", file=sys.stderr)
        if self.event is None:
            return EXIT_NOT_FINISHED
        print(json.dumps(self.event))
        finished = self.event["event_type"] == EventType.FINISHED
        return EXIT_OK if finished and not self.lost else EXIT_NOT_FINISHED


def cmd_say(settings: Settings, args: argparse.Namespace) -> int:
    """Publish a say request (or, with --stream, standard input as it arrives, chunk by chunk). Waiting,
    it exits 0 only when the request finished and none of its text was lost on the way (an error about
    it such as stream_ended, stream_timeout or stream_gap makes it 1)."""
    if args.stream == (args.text is not None):
        print("say: give the text, or --stream to read it from standard input (not both)", file=sys.stderr)
        return EXIT_CONFIG
    site = args.site or settings.site
    topics = Topics(settings.base_topic, settings.site)
    request_id = args.id or uuid.uuid4().hex
    wait = args.wait or args.stream  # a stream's command ends when its speech does
    subscribed = threading.Event()
    outcome = _Outcome(request_id, stream=args.stream)
    heard = Topics(settings.base_topic, "+" if site == BROADCAST_SITE else site)

    def on_connect(client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            outcome.refused = str(reason)
            outcome.ended.set()
        elif wait:
            client.subscribe([(heard.event, 1), (heard.error, 1)])
        else:
            subscribed.set()

    try:
        with one_shot(
            settings.mqtt,
            "cli",
            on_connect=on_connect,
            on_subscribe=lambda *_: subscribed.set(),
            on_message=outcome.on_message,
        ) as client:
            if not subscribed.wait(10) or outcome.refused is not None:
                print(f"the broker did not accept us: {outcome.refused or 'no answer'}", file=sys.stderr)
                return EXIT_BROKER
            opening: dict[str, Any] = {"id": request_id}
            if args.emotion:
                opening["emotion"] = args.emotion
            if args.stream:
                topic = topics.command(Command.SAY_STREAM, site)
                keepalive = min(KEEPALIVE, settings.stream.timeout / 4)
                stream_stdin(lambda chunk: client.publish(topic, chunk, qos=1), opening, keepalive)
            else:
                payload = json.dumps({**opening, "text": args.text})
                client.publish(topics.command(Command.SAY, site), payload, qos=1).wait_for_publish(10)
            if not wait:
                print(request_id)
                return EXIT_OK
            if not outcome.ended.wait(args.timeout):
                print(f"no terminal event for {request_id} within {args.timeout:.0f} s", file=sys.stderr)
                return EXIT_TIMEOUT
    except BrokerUnreachable as exc:
        print(exc, file=sys.stderr)
        return EXIT_BROKER
    return outcome.exit_code()


def stream_stdin(publish: Callable[[str], Any], opening: dict[str, Any], keepalive: float = KEEPALIVE) -> None:
    """Publish standard input as say/stream chunks as it arrives: whatever one read returns (mid-line
    too: a language model writes no newline for a long while), with seq; `end` at end of input (or at
    Ctrl-C). While the input is quiet (a tool call, a slow model), an empty chunk every `keepalive`
    seconds keeps the stream open past the daemon's stream.timeout."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = sys.stdin.fileno()
    seq = 0
    while True:
        try:
            readable, _, _ = select.select([fd], [], [], keepalive)
            # os.read returns what is there, without waiting for a full buffer or a line
            data: bytes | None = os.read(fd, 4096) if readable else None
        except KeyboardInterrupt:  # Ctrl-C: the stream ends here; what was sent is still spoken
            data = b""
        text = "" if data is None else decoder.decode(data, final=not data)
        if text or data is None or not data:
            chunk = {**(opening if seq == 0 else {"id": opening["id"]}), "seq": seq, "text": text}
            if data == b"":
                chunk["end"] = True
            publish(json.dumps(chunk)).wait_for_publish(10)
            seq += 1
        if data == b"":
            return


def cmd_discovery(settings: Settings, args: argparse.Namespace) -> int:
    """Print the Home Assistant discovery messages, or (--remove) clear them from the broker."""
    topics = Topics(settings.base_topic, settings.site, settings.homeassistant.prefix)
    if not args.remove:
        for topic, payload in discovery_messages(settings, topics):
            print(topic)
            print(json.dumps(json.loads(payload), indent=2) if payload else "(empty: discovery is off)")
        return EXIT_OK
    try:
        with one_shot(settings.mqtt, "cli") as client:
            for topic, payload in removal_messages(topics, settings):
                client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    except BrokerUnreachable as exc:
        print(exc, file=sys.stderr)
        return EXIT_BROKER
    print(
        f"removed the discovery of {settings.device_name} ({topics.discovery}); stop the daemon, or set "
        "homeassistant.discovery = false, or it is published again when it connects"
    )
    return EXIT_OK
