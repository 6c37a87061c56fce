"""The command line: `mqtt-speaker run | say [--stream] | devices | check | discovery`."""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mqtt_speaker import __version__
from mqtt_speaker.models import TERMINAL_EVENTS, EventType
from mqtt_speaker.settings import ConfigError, Settings, load_settings
from mqtt_speaker.topics import BROADCAST_SITE, Command, Topics

EXIT_OK = 0
EXIT_NOT_FINISHED = 1
EXIT_CONFIG = 2
EXIT_BROKER = 3
EXIT_TIMEOUT = 4


NOISY_LOGGERS = ("websockets", "cartesia", "httpx", "asyncio")


class RedactingFormatter(logging.Formatter):
    """Replaces every configured secret with *** in whatever a log line ends up saying."""

    def __init__(self, fmt: str, secrets: list[str]) -> None:
        super().__init__(fmt)
        self._secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def setup_logging(settings: Settings) -> None:
    """Logs go to stderr; under systemd (JOURNAL_STREAM set) without timestamps, the journal adds them."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt, settings.secrets()))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    # Their DEBUG output is every frame (and, for websockets, the handshake headers).
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from mqtt_speaker.daemon import run_daemon

    asyncio.run(run_daemon(settings))
    return EXIT_OK


def connected(client: Any, settings: Settings) -> bool:
    """Connect a command's one-shot client and start its network thread; False (said why) if unreachable."""
    try:
        client.connect(settings.mqtt.host, settings.mqtt.port, keepalive=30)
    except OSError as exc:
        print(f"cannot reach the broker at {settings.mqtt.host}:{settings.mqtt.port}: {exc}", file=sys.stderr)
        return False
    client.loop_start()
    return True


def cmd_say(settings: Settings, args: argparse.Namespace) -> int:
    """Publish a say request (or, with --stream, standard input as it arrives, chunk by chunk)."""
    from mqtt_speaker.mqtt import new_client

    if args.stream == (args.text is not None):
        print("say: give the text, or --stream to read it from standard input (not both)", file=sys.stderr)
        return EXIT_CONFIG
    site = args.site or settings.site
    topics = Topics(settings.base_topic, settings.site)
    request_id = args.id or uuid.uuid4().hex
    wait = args.wait or args.stream  # a stream's command ends when its speech does
    client = new_client(settings.mqtt, f"mqtt-speaker-cli-{uuid.uuid4().hex[:8]}")
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

    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    if not connected(client, settings):
        return EXIT_BROKER
    try:
        if not subscribed.wait(10) or "refused" in outcome:
            print(f"the broker did not accept us: {outcome.get('refused', 'no answer')}", file=sys.stderr)
            return EXIT_BROKER
        opening: dict[str, Any] = {"id": request_id}
        if args.emotion:
            opening["emotion"] = args.emotion
        if args.stream:
            stream_stdin(lambda chunk: client.publish(topics.command(Command.SAY_STREAM, site), chunk, qos=1), opening)
        else:
            payload = json.dumps({**opening, "text": args.text})
            client.publish(topics.command(Command.SAY, site), payload, qos=1).wait_for_publish(10)
        if not wait:
            print(request_id)
            return EXIT_OK
        if not ended.wait(args.timeout):
            print(f"no terminal event for {request_id} within {args.timeout:.0f} s", file=sys.stderr)
            return EXIT_TIMEOUT
        print(json.dumps(outcome["event"]))
        return EXIT_OK if outcome["event"]["event_type"] == EventType.FINISHED else EXIT_NOT_FINISHED
    finally:
        client.disconnect()
        client.loop_stop()


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
    from mqtt_speaker.discovery import discovery_messages, removal_messages
    from mqtt_speaker.mqtt import new_client

    topics = Topics(settings.base_topic, settings.site, settings.homeassistant.prefix)
    if not args.remove:
        for topic, payload in discovery_messages(settings, topics):
            print(topic)
            print(json.dumps(json.loads(payload), indent=2) if payload else "(empty: discovery is off)")
        return EXIT_OK
    client = new_client(settings.mqtt, f"mqtt-speaker-cli-{uuid.uuid4().hex[:8]}")
    if not connected(client, settings):
        return EXIT_BROKER
    try:
        for topic, payload in removal_messages(topics, settings):
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    print(
        f"removed the discovery of {settings.device_name} ({topics.discovery}); stop the daemon, or set "
        "homeassistant.discovery = false, or it is published again when it connects"
    )
    return EXIT_OK


def cmd_check(settings: Settings, _args: argparse.Namespace) -> int:
    from mqtt_speaker.check import run_checks

    return EXIT_OK if run_checks(settings) else EXIT_NOT_FINISHED


def cmd_devices(settings: Settings, _args: argparse.Namespace) -> int:
    try:
        import sounddevice
    except OSError as exc:
        print(f"PortAudio is not installed ({exc}); on Debian: apt install libportaudio2", file=sys.stderr)
        return EXIT_CONFIG
    devices = sounddevice.query_devices()
    try:
        default_out = sounddevice.default.device[1]
    except (TypeError, IndexError):
        default_out = -1
    outputs = [(i, d) for i, d in enumerate(devices) if d["max_output_channels"] > 0]
    if not outputs:
        print("no output devices found", file=sys.stderr)
        return EXIT_NOT_FINISHED
    for index, device in outputs:
        mark = "*" if index == default_out else " "
        host = sounddevice.query_hostapis(device["hostapi"])["name"]
        print(f"{mark} {index:3d}  {device['name']}  ({host}, {int(device['default_samplerate'])} Hz)")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mqtt-speaker", description="Speak MQTT messages aloud.")
    p.add_argument("--config", type=Path, help="TOML config file (default: $MQTT_SPEAKER_CONFIG or /etc/mqtt-speaker)")
    p.add_argument("--version", action="version", version=f"mqtt-speaker {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the daemon").set_defaults(func=cmd_run)
    say = sub.add_parser("say", help="publish a say request")
    say.add_argument("text", nargs="?", help="the text (or --stream)")
    say.add_argument(
        "--stream", action="store_true", help="speak standard input as it arrives (say/stream); waits like --wait"
    )
    say.add_argument("--emotion")
    say.add_argument("--site", help=f"speaker to address (default: this one's site; '{BROADCAST_SITE}' for every one)")
    say.add_argument("--id", help="request id (default: generated)")
    say.add_argument("--wait", action="store_true", help="wait for the terminal event; exit 1 unless it is finished")
    say.add_argument("--timeout", type=float, default=120.0, help="seconds --wait waits (default 120)")
    say.set_defaults(func=cmd_say)
    sub.add_parser("devices", help="list output devices").set_defaults(func=cmd_devices)
    discovery = sub.add_parser("discovery", help="print the Home Assistant discovery messages, or remove them")
    discovery.add_argument("--remove", action="store_true", help="clear the retained discovery: the device disappears")
    discovery.set_defaults(func=cmd_discovery)
    check = sub.add_parser("check", help="check the config, the broker, the speech engine and the sound device")
    check.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"mqtt-speaker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings)
    try:
        result: int = args.func(settings, args)
    except ConfigError as exc:
        print(f"mqtt-speaker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return result


if __name__ == "__main__":
    sys.exit(main())
