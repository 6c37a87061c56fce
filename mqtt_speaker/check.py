"""`mqtt-speaker check`: is everything in place? One line per check; non-zero exit if any failed."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mqtt_speaker.engines.base import SynthesisError
from mqtt_speaker.playback.devices import sound_player
from mqtt_speaker.playback.ducking import describe_server
from mqtt_speaker.playback.output import AudioDeviceError
from mqtt_speaker.protocol.link import BrokerUnreachable, one_shot
from mqtt_speaker.settings import ConfigError, Settings, config_path_from
from mqtt_speaker.speech.vocabulary import EngineChoice

TIMEOUT = 10.0


class CheckFailed(Exception):
    pass


class NotAvailable(Exception):
    """An optional feature that cannot work here: said, but not a failure."""


def check_config(settings: Settings, path: Path | None) -> str:
    """The file the settings were read from (--config, $MQTT_SPEAKER_CONFIG or /etc's), and the topics."""
    return f"{path or 'no config file'}; site {settings.site!r}, topics under {settings.base_topic}/{settings.site}/"


def check_broker(settings: Settings) -> str:
    mqtt = settings.mqtt
    answered = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        outcome["reason"] = reason
        answered.set()

    where = f"{mqtt.host}:{mqtt.port}{' (TLS)' if mqtt.tls else ''}"
    try:
        with one_shot(mqtt, "check", keepalive=10, on_connect=on_connect):
            if not answered.wait(TIMEOUT):
                raise CheckFailed(f"{where} did not answer within {TIMEOUT:.0f} s")
    except BrokerUnreachable as exc:
        raise CheckFailed(f"cannot reach {where}: {exc.__cause__}") from exc
    if outcome["reason"].is_failure:
        raise CheckFailed(f"{where} refused the connection: {outcome['reason']}")
    user = f" as {mqtt.username}" if mqtt.username else ""
    return f"connected to {where}{user}"


def check_speech(settings: Settings) -> str:
    if settings.use_cartesia:
        from mqtt_speaker.engines.cartesia import CartesiaEngine  # the SDK is imported only when used

        async def probe() -> None:
            engine = CartesiaEngine(settings.cartesia)
            try:
                await engine.probe()
            finally:
                await engine.close()

        try:
            asyncio.run(probe())
        except SynthesisError as exc:
            raise CheckFailed(f"{exc.code}: {exc.message}") from exc
        return f"Cartesia socket opens at {settings.cartesia.url} (model {settings.cartesia.model})"
    if settings.primary_engine == EngineChoice.PIPER:
        return check_piper(settings)
    executable = shutil.which(settings.espeak.executable)
    if executable is None:
        raise CheckFailed(f"no Cartesia API key, and {settings.espeak.executable} is not installed")
    version = subprocess.run([executable, "--version"], capture_output=True, text=True, check=False, timeout=10)
    return f"no Cartesia API key: the local engine is used ({version.stdout.strip() or executable})"


def check_piper(settings: Settings) -> str:
    """Load the Piper voice, as the daemon does at start."""
    from mqtt_speaker.engines.piper import PiperEngine  # Piper (onnxruntime) is imported only when used

    engine = PiperEngine(settings.piper)
    asyncio.run(engine.start())
    problem = engine.problem()
    if problem is not None:
        raise CheckFailed(f"{problem.code}: {problem.message}")
    model = settings.piper.model
    return f"the Piper voice {model.name if model else None} loads (no Cartesia API key: the local engine is used)"


def check_audio(settings: Settings) -> str:
    directory = settings.audio.output_dir
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as exc:
            raise CheckFailed(f"cannot write WAV files to {directory}: {exc}") from exc
        return f"utterances are written to {directory}"
    try:
        return sound_player(settings.audio).probe()
    except (AudioDeviceError, OSError) as exc:
        raise CheckFailed(str(exc)) from exc


def check_ducking(settings: Settings) -> str:
    if settings.audio.output_dir is not None:
        raise NotAvailable("not available: utterances are written to files, nothing plays")
    if settings.audio.sink:  # the sink we play on, and so duck on (this one-shot process's own environment)
        os.environ["PULSE_SINK"] = settings.audio.sink
    try:
        server = describe_server()
    except ConnectionError as exc:
        raise NotAvailable(f"not available (other audio is not lowered while speaking): {exc}") from exc
    if settings.audio.duck_db == 0:
        return f"works on {server}, but off (audio.duck_db = 0)"
    return f"works: other streams are lowered {settings.audio.duck_db:g} dB while speaking ({server})"


CHECKS: list[tuple[str, Callable[[Settings], str]]] = [
    ("broker", check_broker),
    ("speech", check_speech),
    ("audio", check_audio),
    ("ducking", check_ducking),
]


def run_checks(settings: Settings, config: Path | None = None) -> bool:
    """Print one line per check (`config`: --config, when given); True when all passed."""
    ok = True
    path = config_path_from(config)
    checks: list[tuple[str, Callable[[Settings], str]]] = [("config", functools.partial(check_config, path=path))]
    for name, check in checks + CHECKS:
        mark = "ok  "
        try:
            detail = check(settings)
        except NotAvailable as exc:
            detail, mark = str(exc), "--  "
        except (CheckFailed, ConfigError) as exc:
            detail, mark, ok = str(exc), "FAIL", False
        print(f"{mark}  {name:<7} {detail}", flush=True)
    return ok
