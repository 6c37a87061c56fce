"""The systemd units and script/install, checked without systemd as PID 1 (CI has none)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"


def with_local_exec(unit: Path, tmp_path: Path) -> Path:
    """The shipped unit, verbatim but for ExecStart pointing at this checkout's mqtt-speaker
    (systemd-analyze verify insists that the program exists)."""
    executable = Path(sys.executable).parent / "mqtt-speaker"
    text = unit.read_text().replace("/opt/mqtt-speaker/venv/bin/mqtt-speaker", str(executable))
    copy = tmp_path / unit.name
    copy.write_text(text)
    return copy


def test_system_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = with_local_exec(UNITS / "mqtt-speaker.service", tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNITS / "mqtt-speaker.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for mqtt-speaker.service: (\d+\.\d+)", security.stdout)
    assert match, security.stdout + security.stderr
    assert float(match.group(1)) <= 2.0
    text = (UNITS / "mqtt-speaker.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=mqtt-speaker",
        "ConfigurationDirectory=mqtt-speaker",
        "After=network-online.target sound.target",
        "SupplementaryGroups=audio",
        "DeviceAllow=char-alsa rw",
        "LoadCredential=cartesia_api_key:",
        "LoadCredential=esphome_encryption_key:",
    ):
        assert line in text
    assert "ExecStart=/opt/mqtt-speaker/venv/bin/mqtt-speaker run\n" in text  # no secret on the command line


def test_user_unit_verifies(tmp_path: Path) -> None:
    unit = with_local_exec(UNITS / "mqtt-speaker-user.service", tmp_path)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--user", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )
    assert verify.returncode == 0, verify.stderr
    assert "loginctl enable-linger" in unit.read_text()


def installer(root: Path, **env: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """script/install --root `root`, with `env` on top of ours; it must succeed."""
    environment = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME")} | env

    def install(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(ROOT / "script" / "install"), "--root", str(root), *args],
            capture_output=True,
            text=True,
            check=False,
            env=environment,
        )
        assert result.returncode == 0, result.stderr
        return result

    return install


def assert_installed_program_runs(root: Path, prefix: str) -> None:
    """The venv's scripts name the final location (not the staging root), and its Python imports us."""
    program = root / prefix.lstrip("/") / "venv/bin/mqtt-speaker"
    assert program.is_file() and program.read_text().startswith(f"#!{prefix}/venv/bin/python")
    python = root / prefix.lstrip("/") / "venv/bin/python"
    version = subprocess.run(
        [str(python), "-c", "import mqtt_speaker; print(mqtt_speaker.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.returncode == 0 and version.stdout.strip(), version.stderr


def assert_private(conf: Path) -> None:
    assert stat.S_IMODE((conf / "config.toml").stat().st_mode) == 0o640
    assert stat.S_IMODE(conf.stat().st_mode) == 0o750
    assert stat.S_IMODE((conf / "credentials").stat().st_mode) == 0o700
    # Present (systemd will not start a unit whose LoadCredential= file is missing), private.
    for credential in ("cartesia_api_key", "mqtt_password", "esphome_encryption_key"):
        assert stat.S_IMODE((conf / "credentials" / credential).stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="script/install's system mode runs as root")
def test_install_into_a_root_directory_is_idempotent_and_undone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    install = installer(root)

    install()
    conf = root / "etc/mqtt-speaker"
    assert (conf / "credentials/cartesia_api_key").read_text() == ""
    (conf / "config.toml").write_text('site = "kept"\n')
    (conf / "credentials/cartesia_api_key").write_text("sk_car_kept")
    install()  # again: nothing breaks, the edited config and the secret are kept
    assert (conf / "config.toml").read_text() == 'site = "kept"\n'
    assert (conf / "credentials/cartesia_api_key").read_text() == "sk_car_kept"
    assert_private(conf)
    passwd = (root / "etc/passwd").read_text()
    assert passwd.count("\nmqtt-speaker:") + passwd.startswith("mqtt-speaker:") == 1
    gid = int(
        next(line for line in (root / "etc/group").read_text().splitlines() if line.startswith("mqtt-speaker:")).split(
            ":"
        )[2]
    )
    assert (conf / "config.toml").stat().st_gid == gid
    audio = next(line for line in (root / "etc/group").read_text().splitlines() if line.startswith("audio:"))
    assert "mqtt-speaker" in audio.split(":")[3].split(",")
    assert (root / "etc/systemd/system/multi-user.target.wants/mqtt-speaker.service").is_symlink()
    assert_installed_program_runs(root, "/opt/mqtt-speaker")
    bytecode = root / "var/cache/mqtt-speaker/bytecode"  # what the service's first start writes
    bytecode.mkdir(parents=True)

    install("--uninstall")
    assert not (root / "opt/mqtt-speaker").exists()
    assert not bytecode.parent.exists()
    assert not (root / "etc/systemd/system/mqtt-speaker.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/mqtt-speaker.service").exists()
    assert "mqtt-speaker:" not in (root / "etc/passwd").read_text()
    assert (conf / "config.toml").exists()  # kept: it may hold the user's settings
    install("--purge")
    assert not conf.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="script/install's system mode runs as root")
def test_user_install_into_a_root_directory_is_enabled_and_undone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    install = installer(root, HOME="/home/alice")
    home = root / "home/alice"

    install("--user")
    (home / ".config/mqtt-speaker/config.toml").write_text('site = "kept"\n')
    install("--user")  # again: nothing breaks, the edited config is kept
    conf = home / ".config/mqtt-speaker"
    assert (conf / "config.toml").read_text() == 'site = "kept"\n'
    assert_private(conf)
    units = home / ".config/systemd/user"
    unit = units / "mqtt-speaker-user.service"
    assert "\nExecStart=/home/alice/.local/share/mqtt-speaker/venv/bin/mqtt-speaker run\n" in unit.read_text()
    wanted = units / "default.target.wants/mqtt-speaker-user.service"
    assert wanted.is_symlink() and wanted.resolve() == unit.resolve()  # enabled, as `systemctl --user enable`
    assert_installed_program_runs(root, "/home/alice/.local/share/mqtt-speaker")
    bytecode = home / ".cache/mqtt-speaker/bytecode"  # what the service's first start writes
    bytecode.mkdir(parents=True)

    install("--user", "--uninstall")
    assert not (home / ".local/share/mqtt-speaker").exists()
    assert not bytecode.parent.exists()
    assert not unit.exists() and not wanted.is_symlink()
    assert (conf / "config.toml").exists()
    install("--user", "--purge")
    assert not conf.exists()
