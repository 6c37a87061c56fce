"""The command line: `mqtt-speaker run | say [--stream] | devices | check | discovery`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from mqtt_speaker import __version__
from mqtt_speaker.cli import EXIT_CONFIG, EXIT_NOT_FINISHED, EXIT_OK, cmd_discovery, cmd_say
from mqtt_speaker.protocol.topics import BROADCAST_SITE
from mqtt_speaker.settings import ConfigError, Settings, load_settings

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


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from mqtt_speaker.check import run_checks

    return EXIT_OK if run_checks(settings, args.config) else EXIT_NOT_FINISHED


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
