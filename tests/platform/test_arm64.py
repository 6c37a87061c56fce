"""A Raspberry Pi's system under emulation: arm64 Debian bookworm through qemu-user-static, with the
CPU set to a Pi 4's core. script/install installed the product there as on Raspberry Pi OS Lite (the
system packages, a virtualenv with aarch64 wheels, the unit, the service user); the installed daemon,
started the way its unit starts it, comes online on the test broker and speaks with espeak-ng.

The root is minimal, without systemd (like a container image being built): script/install finishes
there too and says what it skipped. The timings printed are qemu's, not a Pi's.
"""

from __future__ import annotations

import json
import re
import shlex
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Broker, Observer, free_port
from tests.platform import roots
from tests.platform.conftest import ARM64_INSTALLED, QEMU_CPU
from tests.sound import wait_until

pytestmark = [pytest.mark.platform]

SITE = "pi4"
UNIT = Path("etc/systemd/system/mqtt-speaker.service")


@pytest.fixture(scope="module")
def arm64_root() -> Path:
    return roots.ensure(ARM64_INSTALLED)


def unit_settings(root: Path) -> dict[str, list[str]]:
    """The [Service] lines of the installed unit, by key."""
    found: dict[str, list[str]] = {}
    for line in (root / UNIT).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_script_install_finished_without_systemctl_and_said_so(arm64_root: Path) -> None:
    log = (arm64_root / "root/build.log").read_text()
    assert "skipped systemctl (not installed here)" in log, log[-3000:]
    assert (arm64_root / "etc/systemd/system/multi-user.target.wants/mqtt-speaker.service").is_symlink()
    assert not (arm64_root / "usr/bin/systemctl").exists()
    # ... after everything else: the system packages it names, from the arm64 archive; the service user.
    status = (arm64_root / "var/lib/dpkg/status").read_text()
    for package in ("libportaudio2", "espeak-ng", "ffmpeg", "python3-venv"):
        assert re.search(
            rf"^Package: {package}\nStatus: install ok installed\n(?:.+\n)*?Architecture: (arm64|all)$", status, re.M
        ), package
    group = next(line for line in (arm64_root / "etc/group").read_text().splitlines() if line.startswith("audio:"))
    assert "mqtt-speaker" in group.split(":")[3].split(",")


def test_the_virtualenv_holds_aarch64_code(arm64_root: Path) -> None:
    machine = roots.run_in(
        arm64_root, "/opt/mqtt-speaker/venv/bin/python -c 'import platform; print(platform.machine())'"
    )
    assert machine.stdout.strip() == "aarch64"
    wheels = list((arm64_root / "opt/mqtt-speaker/venv/lib").glob("python3*/site-packages/numpy-*.dist-info/WHEEL"))
    assert wheels and "aarch64" in wheels[0].read_text()
    # The ESPHome API's compiled parts load there: protobuf and aioesphomeapi's messages, libsodium, zeroconf.
    imports = "import mqtt_speaker.protocol.esphome.messages, mqtt_speaker.protocol.esphome.noise, zeroconf.asyncio"
    loaded = roots.run_in(arm64_root, f"/opt/mqtt-speaker/venv/bin/python -c '{imports}; print(\"ok\")'")
    assert loaded.stdout.strip() == "ok", loaded.stderr


# The daemon runs on each Pi's core (the install ran on a Pi 4's).
CORES = {"pi4": QEMU_CPU, "pi5": "cortex-a76"}


@pytest.fixture(params=sorted(CORES))
def cpu(request: pytest.FixtureRequest) -> str:
    return CORES[request.param]


@pytest.fixture
def started(
    arm64_root: Path, cpu: str, broker: Broker, observer: Observer, tmp_path: Path
) -> Iterator[tuple[Path, float, roots.Contained]]:
    """The installed daemon in a copy of the root, as its unit starts it: the unit's ExecStart, User,
    Environment and state directory (which systemd would create)."""
    with roots.working_copy(arm64_root) as root:
        unit = unit_settings(root)
        (root / "etc/mqtt-speaker/config.toml").write_text(
            f'site = "{SITE}"\nengine = "espeak"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
            '[audio]\noutput_dir = "/var/lib/mqtt-speaker/out"\n'
            f'[esphome]\nhost = "127.0.0.1"\nport = {free_port()}\nmdns = false\n'  # loaded, on loopback only
        )
        user = unit["User"][0]
        roots.run_in(root, f"install -d -o {user} -g {user} -m 0750 /var/lib/{unit['StateDirectory'][0]}")
        env = dict(item.split("=", 1) for value in unit.get("Environment", []) for item in shlex.split(value))
        args = roots.nspawn_args(root) + [f"--setenv={k}={v}" for k, v in {**env, "QEMU_CPU": cpu}.items()]
        args += ["--user", user, "--chdir", "/", "--console=pipe", "--kill-signal=SIGTERM"]
        args += shlex.split(unit["ExecStart"][0])
        began = time.monotonic()
        daemon = roots.Contained(args, tmp_path / "daemon.log")
        try:
            yield root, began, daemon
        finally:
            daemon.stop()
            roots.forget_machine(root)


def test_the_installed_daemon_comes_online_speaks_and_stops(
    started: tuple[Path, float, roots.Contained], cpu: str, observer: Observer
) -> None:
    root, began, daemon = started
    availability = f"mqtt-speaker/{SITE}/availability"
    wait_until(lambda: [m.payload for m in observer.on(availability)][-1:] == [b"online"], 300, "online", interval=0.5)
    online = time.monotonic() - began
    listening = "ESPHome API listening on 127.0.0.1"  # the API's server started there too (on loopback, no mDNS)
    wait_until(lambda: listening in daemon.log.read_text(), 60, "the ESPHome API to listen")
    asked = time.monotonic()
    observer.publish(f"mqtt-speaker/{SITE}/say", json.dumps({"id": "pi-1", "text": "Hello from an arm64 Pi"}))

    def events() -> list[dict[str, object]]:
        return [m.json() for m in observer.on(f"mqtt-speaker/{SITE}/event") if m.json().get("id") == "pi-1"]

    wait_until(lambda: any(e["event_type"] == "finished" for e in events()), 300, f"finished; {events()}", interval=0.5)
    spoken = time.monotonic() - asked
    started_event = next(e for e in events() if e["event_type"] == "started")
    assert started_event["engine"] == "espeak"
    [path] = (root / "var/lib/mqtt-speaker/out").glob("*-pi-1.wav")
    with wave.open(str(path)) as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        seconds = wav.getnframes() / wav.getframerate()
    assert seconds > 1.0 and np.abs(samples).max() > 3000  # speech, not silence
    # SIGTERM: it says offline and exits 0.
    assert daemon.stop() == 0, daemon.log.read_text()[-3000:]
    wait_until(lambda: [m.payload for m in observer.on(availability)][-1:] == [b"offline"], 10, "offline")
    build = re.findall(r"bookworm-arm64-installed-\S+ (\d+) s", (roots.ROOTS / "build-times.log").read_text())
    print(
        f"\narm64 under qemu ({cpu}): install {build[-1] if build else '?'} s (cached since), "
        f"start to online {online:.1f} s, first request to finished {spoken:.1f} s ({seconds:.1f} s of speech)"
    )
