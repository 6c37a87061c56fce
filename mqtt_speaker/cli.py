"""The commands that talk to the broker once: `say` (and `say --stream`) and `discovery`."""

from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import threading
import uuid
from collections.abc import Callable
from typing import Any

from mqtt_speaker.protocol.discovery import discovery_messages, removal_messages
from mqtt_speaker.protocol.link import BrokerUnreachable, one_shot
from mqtt_speaker.protocol.topics import BROADCAST_SITE, Command, Topics
from mqtt_speaker.settings import Settings
from mqtt_speaker.speech.vocabulary import TERMINAL_EVENTS, EventType

EXIT_OK = 0
EXIT_NOT_FINISHED = 1
EXIT_CONFIG = 2
EXIT_BROKER = 3
EXIT_TIMEOUT = 4


def cmd_say(settings: Settings, args: argparse.Namespace) -> int:
    """Publish a say request (or, with --stream, standard input as it arrives, chunk by chunk)."""
    if args.stream == (args.text is not None):
        print("say: give the text, or --stream to read it from standard input (not both)", file=sys.stderr)
        return EXIT_CONFIG
    site = args.site or settings.site
    topics = Topics(settings.base_topic, settings.site)
    request_id = args.id or uuid.uuid4().hex
    wait = args.wait or args.stream  # a stream's command ends when its speech does
    subscribed = threading.Event()
    ended = threading.Event()
    outcome: dict[str, Any] = {}
    event_topic = Topics(settings.base_topic, "+" if site == BROADCAST_SITE else site).event

    def on_connect(client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            outcome["refused"] = str(reason)
            ended.set()
        elif wait:
            client.subscribe(event_topic, qos=1)
        else:
            subscribed.set()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        try:
            event = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("id") == request_id and event.get("event_type") in TERMINAL_EVENTS:
            outcome["event"] = event
            ended.set()

    try:
        with one_shot(
            settings.mqtt,
            "cli",
            on_connect=on_connect,
            on_subscribe=lambda *_: subscribed.set(),
            on_message=on_message,
        ) as client:
            if not subscribed.wait(10) or "refused" in outcome:
                print(f"the broker did not accept us: {outcome.get('refused', 'no answer')}", file=sys.stderr)
                return EXIT_BROKER
            opening: dict[str, Any] = {"id": request_id}
            if args.emotion:
                opening["emotion"] = args.emotion
            if args.stream:
                topic = topics.command(Command.SAY_STREAM, site)
                stream_stdin(lambda chunk: client.publish(topic, chunk, qos=1), opening)
            else:
                payload = json.dumps({**opening, "text": args.text})
                client.publish(topics.command(Command.SAY, site), payload, qos=1).wait_for_publish(10)
            if not wait:
                print(request_id)
                return EXIT_OK
            if not ended.wait(args.timeout):
                print(f"no terminal event for {request_id} within {args.timeout:.0f} s", file=sys.stderr)
                return EXIT_TIMEOUT
    except BrokerUnreachable as exc:
        print(exc, file=sys.stderr)
        return EXIT_BROKER
    print(json.dumps(outcome["event"]))
    return EXIT_OK if outcome["event"]["event_type"] == EventType.FINISHED else EXIT_NOT_FINISHED


def stream_stdin(publish: Callable[[str], Any], opening: dict[str, Any]) -> None:
    """Publish standard input as say/stream chunks as it arrives: whatever one read returns (mid-line
    too: a language model writes no newline for a long while), with seq; `end` at end of input (or at
    Ctrl-C)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = sys.stdin.fileno()
    seq = 0
    while True:
        try:
            data = os.read(fd, 4096)  # returns what is there, without waiting for a full buffer or a line
        except KeyboardInterrupt:  # Ctrl-C: the stream ends here; what was sent is still spoken
            data = b""
        text = decoder.decode(data, final=not data)
        if text or not data:
            chunk = {**(opening if seq == 0 else {"id": opening["id"]}), "seq": seq, "text": text}
            if not data:
                chunk["end"] = True
            publish(json.dumps(chunk)).wait_for_publish(10)
            seq += 1
        if not data:
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
