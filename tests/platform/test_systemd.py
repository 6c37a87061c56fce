"""systemd as PID 1: a Debian bookworm root into which script/install installed the product, booted
with systemd-nspawn, checked the way a user would with systemctl and the broker.

The container shares the host's network: the daemon inside reaches the test broker (which asks for a
password) and the Cartesia emulator on 127.0.0.1. Its secrets are only in the credential files that
script/install created; it writes WAV files into its state directory instead of playing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import mdns
from tests.cartesia_emulator import TEST_API_KEY, CartesiaEmulator
from tests.conftest import Broker, Observer, free_port, port_open
from tests.platform import roots
from tests.platform.conftest import USER
from tests.sound import wait_until
from tests.test_esphome_e2e import CLIENT

pytestmark = [pytest.mark.platform]

SITE = "pi"
ESPHOME_KEY = base64.b64encode(b"systemd-test-esphome-key-32byte!").decode()
USER_SITE = "pi-user"
UNIT = "mqtt-speaker.service"
BROKER_USER = "speaker"
BROKER_PASSWORD = "broker-secret-4711"


@dataclass
class Machine:
    booted: roots.Booted
    root: Path
    broker: Broker
    observer: Observer
    emulator: CartesiaEmulator
    api_port: int  # the ESPHome API, on loopback (and advertised there only)

    def show(self, prop: str, unit: str = UNIT) -> str:
        return self.booted.run(f"systemctl show -P {prop} {unit}").stdout.strip()

    def availability(self) -> list[str]:
        return [m.payload.decode() for m in self.observer.on(f"mqtt-speaker/{SITE}/availability")]

    def events(self, request_id: str) -> list[dict[str, object]]:
        found = [m.json() for m in self.observer.on(f"mqtt-speaker/{SITE}/event")]
        return [e for e in found if e.get("id") == request_id]

    def journal(self) -> str:
        return self.booted.run(f"journalctl -u {UNIT} --no-pager -o cat", check=False).stdout


def broker_with_password(directory: Path) -> tuple[Broker, int]:
    """Port one needs the daemon's password; port two lets the test's observer in without one."""
    passwords = directory / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), BROKER_USER, BROKER_PASSWORD], check=True)
    passwords.chmod(0o600)
    anonymous = free_port()
    config = (
        "user root\n"  # it reads the password file after dropping its privileges, from a private directory
        "per_listener_settings true\n"
        "listener {port} 127.0.0.1\n"
        f"allow_anonymous false\npassword_file {passwords}\n"
        f"listener {anonymous} 127.0.0.1\nallow_anonymous true\n"
        "persistence false\n"
    )
    return Broker(directory, config), anonymous


def configure(root: Path, broker: Broker, emulator: CartesiaEmulator, api_port: int) -> None:
    """What a user does after script/install: the config file, and the secrets in the credential files."""
    (root / "etc/mqtt-speaker/config.toml").write_text(
        f'site = "{SITE}"\nfallback = []\n'
        + f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nusername = "{BROKER_USER}"\n'
        + f'[cartesia]\nurl = "{emulator.url}"\n'
        + '[audio]\noutput_dir = "/var/lib/mqtt-speaker/out"\n'
        + "[cache]\nenabled = false\n"
        + f'[esphome]\nhost = "127.0.0.1"\nport = {api_port}\n'
    )
    credentials = root / "etc/mqtt-speaker/credentials"
    (credentials / "cartesia_api_key").write_text(TEST_API_KEY)
    (credentials / "mqtt_password").write_text(BROKER_PASSWORD)
    (credentials / "esphome_encryption_key").write_text(ESPHOME_KEY)


@pytest.fixture(scope="module")
def machine(installed_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    directory = tmp_path_factory.mktemp("systemd")
    broker, anonymous = broker_with_password(directory)
    broker.start()
    emulator = CartesiaEmulator().start()
    observer = Observer(anonymous)
    try:
        with roots.working_copy(installed_root) as root:
            api_port = free_port()
            configure(root, broker, emulator, api_port)
            booted = roots.Booted(root, directory / "console.log")
            try:
                yield Machine(booted.start(), root, broker, observer, emulator, api_port)
            finally:
                booted.stop()
    finally:
        observer.close()
        emulator.stop()
        broker.stop()


def wait_active(machine: Machine, timeout: float = 60) -> None:
    def active() -> bool:
        return machine.show("ActiveState") == "active" and machine.show("SubState") == "running"

    wait_until(active, timeout, f"{UNIT} active; journal:\n{machine.journal()[-2000:]}")


def test_the_unit_is_active_after_ready_and_says_what_it_does(machine: Machine) -> None:
    wait_active(machine)
    assert machine.show("Type") == "notify"
    # STATUS= from the daemon: first "waiting for the broker", then what it listens to once connected.
    wait_until(
        lambda: machine.show("StatusText") == f"speaking for mqtt-speaker/{SITE}/say (cartesia)",
        30,
        f"the status line; it is {machine.show('StatusText')!r}",
    )
    wait_until(lambda: machine.availability()[-1:] == ["online"], 30, "online on the broker")
    status = machine.booted.run(f"systemctl status --no-pager {UNIT}").stdout
    assert "active (running)" in status
    assert f'Status: "speaking for mqtt-speaker/{SITE}/say (cartesia)"' in status


def test_secrets_come_from_the_credential_files_only(machine: Machine) -> None:
    wait_active(machine)
    # The broker took the password (it refuses the daemon without one), and Cartesia the key: the
    # emulator answers only the right key, and the request is spoken with it, into a WAV file.
    wait_until(lambda: machine.availability()[-1:] == ["online"], 30, "online on the broker")
    machine.observer.publish(f"mqtt-speaker/{SITE}/say", json.dumps({"id": "cred-1", "text": "Hello from PID 1"}))
    wait_until(
        lambda: any(e["event_type"] == "finished" for e in machine.events("cred-1")),
        60,
        f"the request finished; events {machine.events('cred-1')}",
    )
    started = next(e for e in machine.events("cred-1") if e["event_type"] == "started")
    assert started["engine"] == "cartesia"
    assert machine.emulator.contexts_for("Hello from PID 1")[0].done
    wavs = list((machine.root / "var/lib/mqtt-speaker/out").glob("*-cred-1.wav"))
    assert len(wavs) == 1 and wavs[0].stat().st_size > 10_000
    # ... and no secret is in the unit, its environment, the process's environment or the journal.
    pid = machine.show("MainPID")
    seen = "\n".join(
        [
            machine.booted.run(f"systemctl cat {UNIT}").stdout,
            machine.show("Environment"),
            machine.booted.run(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout,
            machine.journal(),
        ]
    )
    assert "CREDENTIALS_DIRECTORY=" in seen
    assert TEST_API_KEY not in seen
    assert BROKER_PASSWORD not in seen
    assert ESPHOME_KEY not in seen


def test_the_esphome_api_serves_and_advertises_inside_the_sandbox(machine: Machine) -> None:
    """The key from its credential file (a client with it is served, one without is refused), the port
    listened on and the mDNS advertisement sent (on loopback) by the sandboxed service."""
    wait_active(machine)
    wait_until(lambda: port_open(machine.api_port), 30, "the ESPHome API to listen")
    client = [sys.executable, "-P", str(CLIENT), "127.0.0.1", str(machine.api_port)]
    served = subprocess.run([*client, ESPHOME_KEY, "info"], capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(served.stdout.splitlines()[-1])["name"] == f"{SITE}-speaker", served.stderr
    refused = subprocess.run([*client, "-", "info"], capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(refused.stdout.splitlines()[-1])["error"] == "RequiresEncryptionAPIError"
    info = asyncio.run(mdns.find(f"{SITE}-speaker"))
    assert info.port == machine.api_port and "api_encryption" in mdns.records(info)
    assert ESPHOME_KEY not in machine.journal()  # nor after the clients came


def test_the_sandbox_is_in_force(machine: Machine) -> None:
    wait_active(machine)
    pid = machine.show("MainPID")
    status = machine.booted.run(f"cat /proc/{pid}/status").stdout
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
    assert re.search(r"^Seccomp:\s+2$", status, re.M)  # a system call filter
    assert re.search(r"^CapEff:\s+0+$", status, re.M)
    uid = re.findall(r"^Uid:\s+(\d+)", status, re.M)[0]
    gid = re.findall(r"^Gid:\s+(\d+)", status, re.M)[0]
    assert machine.booted.run(f"id -un {uid}").stdout.strip() == "mqtt-speaker"

    # In the service's own mount namespace, as its user: only the state directory is writable.
    def write(path: str) -> subprocess.CompletedProcess[str]:
        command = f"nsenter -t {pid} -m -S {uid} -G {gid} -- /bin/sh -c 'echo x > {path}'"
        return machine.booted.run(command, check=False)

    assert write("/var/lib/mqtt-speaker/probe").returncode == 0
    for outside in ("/opt/mqtt-speaker/probe", "/etc/mqtt-speaker/probe", "/root/probe", "/usr/probe"):
        result = write(outside)
        assert result.returncode != 0, f"{outside} was writable"
        assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr, result.stderr
    assert not (machine.root / "opt/mqtt-speaker/probe").exists()

    # systemd's own verdict, from inside: the unit verifies cleanly against the systemd that runs it...
    verify = machine.booted.run(f"systemd-analyze verify {UNIT}", check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    # ... and its sandbox scores as the README says.
    security = machine.booted.run(f"systemd-analyze security --no-pager {UNIT}").stdout
    exposure = float(re.findall(r"Overall exposure level for \S+: ([\d.]+)", security)[0])
    print(f"systemd-analyze security {UNIT}: {exposure}")
    assert exposure <= 2.0, security


def test_offline_and_online_across_a_restart(machine: Machine) -> None:
    wait_active(machine)
    wait_until(lambda: machine.availability()[-1:] == ["online"], 30, "online on the broker")
    before = len(machine.availability())
    old_pid = machine.show("MainPID")
    machine.booted.run(f"systemctl restart {UNIT}")
    wait_until(
        lambda: machine.availability()[before:] == ["offline", "online"],
        60,
        f"offline, then online; saw {machine.availability()[before:]}",
    )
    assert machine.show("MainPID") != old_pid
    wait_active(machine)


def test_a_restart_runs_from_the_bytecode_the_first_start_wrote(machine: Machine) -> None:
    """The unit's interpreter settings (docs/performance.md): the first start compiled what it imported,
    without docstrings, into the service's cache directory, the stdlib too; a restart compiles nothing."""
    wait_active(machine)
    wait_until(lambda: machine.availability()[-1:] == ["online"], 30, "online on the broker")
    listing = "cd /var/cache/mqtt-speaker/bytecode && find . -name '*.pyc' -printf '%p %T@\\n' | sort"
    before = machine.booted.run(listing).stdout.splitlines()
    names = [line.split()[0] for line in before]
    assert any(re.search(r"/site-packages/mqtt_speaker/daemon\.cpython-\d+\.opt-2\.pyc$", n) for n in names)
    assert any(re.search(r"^\./usr/lib/python3[.\d]*/asyncio/base_events\.", n) for n in names)
    assert all(n.endswith(".opt-2.pyc") for n in names)
    count = len(machine.availability())
    machine.booted.run(f"systemctl restart {UNIT}")
    wait_until(lambda: machine.availability()[count:][-1:] == ["online"], 60, "online after the restart")
    assert machine.booted.run(listing).stdout.splitlines() == before


def test_the_watchdog_restarts_a_hung_daemon(machine: Machine) -> None:
    wait_active(machine)
    restarts = int(machine.show("NRestarts"))
    pid = machine.show("MainPID")
    before = len(machine.availability())
    # Freeze it: its event loop stops pinging the watchdog. The PID is the container's: signal it there.
    machine.booted.run(f"kill -STOP {pid}")
    wait_until(
        lambda: int(machine.show("NRestarts")) > restarts,
        90,
        f"the watchdog to restart it; journal:\n{machine.journal()[-2000:]}",
        interval=1,
    )
    assert "Watchdog timeout" in machine.booted.run("journalctl --no-pager -o cat").stdout
    wait_active(machine)
    assert machine.show("MainPID") != pid
    wait_until(lambda: machine.availability()[before:][-1:] == ["online"], 60, "online again")


def test_the_user_unit_runs_under_a_user_manager(machine: Machine) -> None:
    """script/install --user ran as the login user when the root was built; lingering starts that
    user's service manager at once, which starts the enabled user unit with the user's own secrets."""
    home = machine.root / "home" / USER
    config = home / ".config/mqtt-speaker"
    (config / "config.toml").write_text(
        f'site = "{USER_SITE}"\nengine = "espeak"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {machine.broker.port}\nusername = "{BROKER_USER}"\n'
        f'[audio]\noutput_dir = "/home/{USER}/out"\n'
        "[esphome]\nport = 0\n"  # the system unit's API is enough (none on 6053, no mDNS on the network)
    )
    (config / "credentials/mqtt_password").write_text(BROKER_PASSWORD)
    machine.booted.run(f"chown -R {USER}: /home/{USER}/.config")
    machine.booted.run(f"loginctl enable-linger {USER}")
    uid = machine.booted.run(f"id -u {USER}").stdout.strip()
    user_systemctl = f"runuser -u {USER} -- env XDG_RUNTIME_DIR=/run/user/{uid} systemctl --user"

    def active() -> str:
        return machine.booted.run(f"{user_systemctl} is-active mqtt-speaker-user.service", check=False).stdout.strip()

    wait_until(lambda: active() == "active", 60, f"the user unit active; it is {active()!r}", interval=0.5)
    topic = f"mqtt-speaker/{USER_SITE}/availability"
    wait_until(lambda: [m.payload for m in machine.observer.on(topic)][-1:] == [b"online"], 60, "the user unit online")
    machine.observer.publish(f"mqtt-speaker/{USER_SITE}/say", json.dumps({"id": "user-1", "text": "Hello"}))
    wait_until(lambda: list((home / "out").glob("*-user-1.wav")), 60, "the user unit's WAV file")
    status = machine.booted.run(f"{user_systemctl} show -P StatusText mqtt-speaker-user.service").stdout
    assert status.strip() == f"speaking for mqtt-speaker/{USER_SITE}/say (espeak)"
