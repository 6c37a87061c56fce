"""A real Home Assistant Core for the discovery tests: its own Python, a cached virtualenv, onboarded
and given the MQTT broker entirely over its HTTP API (no `default_config`, nothing from the internet).

Two releases: the oldest the README supports, on a Python of the machine image (pyenv), and the newest,
whose Python (3.14) only Debian sid has: it runs inside a cached debootstrap sid root (systemd-nspawn,
the host's network), with its configuration directory bound in at the same path."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.platform import roots
from tests.sound import wait_until

HERE = Path(__file__).resolve().parent
# internal_url: what Home Assistant gives a media player (TTS, its own sounds); without it, the address it
# would send is the machine's own on the network, where it does not listen (it listens on 127.0.0.1 only).
# The demo TTS: speech without the internet (a legacy platform: tts.demo_say, not tts.speak), which a media
# player resolves through media_source (part of default_config, which these tests do not load). Automations
# and scripts from files the REST API writes: the documented automations are run as written.
CONFIGURATION = """\
homeassistant:
  name: mqtt-speaker test
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: DE
  language: en
  internal_url: http://127.0.0.1:{port}
http:
  server_host: 127.0.0.1
  server_port: {port}
logger:
  default: warning
tts:
  - platform: demo
media_source:
automation: !include automations.yaml
script: !include scripts.yaml
"""


@dataclass(frozen=True)
class Release:
    version: str
    python: str  # a pyenv version that can run it, or the python3.X of a Debian root
    uv_args: tuple[str, ...] = ()
    root: roots.RootSpec | None = None  # where it runs: on the host (None) or in this root


# Debian sid: the only Debian with Python 3.14 (and a compiler, for the requirements without wheels).
SID = roots.RootSpec(
    "sid-amd64-python3.14",
    "sid",
    "amd64",
    include=("python3.14", "python3.14-venv", "python3.14-dev", "gcc", "g++"),
)
UV = "uv==0.13.6"  # the one Home Assistant 2026.11 pins


def in_sid(version: str) -> Release:
    """A release in its own layer on top of the sid root: its virtualenv in /opt, with what it would
    install itself at its first start (read from its own manifests by requirements.py)."""
    venv = f"/opt/homeassistant-{version}"
    uv = f"{venv}/bin/uv pip install -q --compile-bytecode -p {venv}/bin/python"
    script = (HERE / "requirements.py").read_text()
    spec = roots.RootSpec(
        # "-esphome": its requirements hold the esphome and demo integrations'. A root of another name is never
        # taken for an older build of this one (a build removes those), so checkouts without them keep theirs.
        f"sid-amd64-homeassistant-{version}-esphome",
        "sid",
        "amd64",
        base=SID,
        env=(("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),),  # uv does not read pip.conf
        steps=(
            f"python3.14 -m venv {venv} && {venv}/bin/pip install -q --disable-pip-version-check {UV}",
            f"{uv} homeassistant=={version}",
            f"cat > /root/requirements.py <<'EOF'\n{script}EOF\n",
            f"{venv}/bin/python /root/requirements.py > {venv}/requirements.txt && {uv} -r {venv}/requirements.txt",
        ),
    )
    return Release(version, "3.14", root=spec)


# The oldest release the README supports, on the newest Python of the machine image that runs it (the
# newest Home Assistant that installs on each, see the research notes), with a fallback.
OLDEST = (Release("2025.4.4", "3.13.0"), Release("2025.1.4", "3.12.1", ("--prerelease=allow",)))
NEWEST = in_sid("2026.11.0")


def pyenv_root() -> Path:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    if shutil.which("pyenv"):
        return Path(subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip())
    return Path.home() / ".pyenv"


def find_release() -> tuple[Release, Path] | None:
    """The oldest supported release and the host's Python for it, if the machine has one."""
    for release in OLDEST:
        python = pyenv_root() / "versions" / release.python / "bin" / "python"
        if python.exists():
            return release, python
    return None


def cache_dir() -> Path:
    return roots.cache_dir()


def ensure_venv(release: Release, python: Path) -> Path:
    """Home Assistant's virtualenv on the host, built once per machine (and again when its requirements
    change: their hash is in its name) and kept in the cache between runs."""
    requirements = HERE / f"requirements-{release.version}.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    venv = cache_dir() / f"homeassistant-{release.version}-{digest}"
    marker = venv / ".complete"
    if marker.exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "uv==0.6.10"], check=True)
    subprocess.run(
        [
            str(venv / "bin" / "uv"),
            "pip",
            "install",
            "-q",
            "--compile-bytecode",
            "-p",
            str(venv / "bin" / "python"),
            *release.uv_args,
            "-r",
            str(requirements),
        ],
        check=True,
    )
    marker.touch()
    return venv


@dataclass(frozen=True)
class Installed:
    """Where a release's `hass` is: a virtualenv on the host, or one inside a Debian root."""

    release: Release
    venv: Path  # inside the root, when there is one
    root: Path | None = None


def install(release: Release) -> Installed:
    if release.root is not None:
        return Installed(release, Path(f"/opt/homeassistant-{release.version}"), roots.ensure(release.root))
    found = find_release()
    assert found is not None and found[0] == release
    return Installed(release, ensure_venv(*found))


class HomeAssistant:
    """One Home Assistant process on a free loopback port, with its own config directory."""

    def __init__(self, installed: Installed, port: int, mqtt_port: int, *, zeroconf: bool = False) -> None:
        """zeroconf: with Home Assistant's mDNS discovery (it sends and listens on the default interface:
        only on a network of the test's own, tests/netns.py)."""
        self.installed = installed
        self.version = installed.release.version
        self.port = port
        self.mqtt_port = mqtt_port
        self.dir = Path(tempfile.mkdtemp(prefix="mqtt-speaker-ha-"))
        configuration = CONFIGURATION.format(port=port) + ("zeroconf:\n" if zeroconf else "")
        (self.dir / "configuration.yaml").write_text(configuration)
        for included in ("automations.yaml", "scripts.yaml"):
            (self.dir / included).write_text("[]\n" if included == "automations.yaml" else "{}\n")
        (self.dir / "www").mkdir()  # served at /local/ (the documented doorbell.mp3 is put there)
        self.base = f"http://127.0.0.1:{port}"
        self.token = ""
        self._proc: roots.Contained | None = None

    def start(self) -> None:
        hass = [str(self.installed.venv / "bin/hass"), "-c", str(self.dir), "--skip-pip"]
        hass += ["--log-file", str(self.dir / "ha.log")]
        if self.installed.root is not None:  # the configuration directory bound in at the same path
            inside = [*roots.nspawn_args(self.installed.root, [(self.dir, str(self.dir))]), "--console=pipe"]
            hass = [*inside, "--kill-signal=SIGTERM", *hass]  # nspawn's SIGTERM reaches hass as SIGTERM
        self._proc = roots.Contained(hass, self.dir / "ha.out")
        began = time.monotonic()
        wait_until(self._answers, 180, "Home Assistant to answer on HTTP", interval=0.25)
        print(f"Home Assistant {self.version} answered {time.monotonic() - began:.1f} s after its start")

    def _answers(self) -> bool:
        if self._proc is not None and not self._proc.running():
            out = (self.dir / "ha.out").read_text(errors="replace")
            raise RuntimeError(f"Home Assistant exited:\n{out[-2000:]}\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.base}/api/onboarding", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(30)
            self._proc = None
            if self.installed.root is not None:
                roots.forget_machine(self.installed.root)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        path = self.dir / "ha.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def request(self, method: str, path: str, body: Any = None, form: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if body is not None:
            if form:
                data = urllib.parse.urlencode(body).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as response:
            text = response.read().decode()
            return json.loads(text) if text else None

    def onboard(self) -> None:
        """Create the owner, get a token, finish onboarding and add the MQTT broker, all over HTTP."""
        client_id = self.base + "/"
        user = {"client_id": client_id, "name": "Test", "username": "test", "password": "test-password-123"}
        code = self.request("POST", "/api/onboarding/users", {**user, "language": "en"})["auth_code"]
        token = self.request(
            "POST", "/auth/token", {"grant_type": "authorization_code", "code": code, "client_id": client_id}, form=True
        )
        self.token = token["access_token"]
        # (The core_config step is skipped on purpose: it sets up integrations that want the internet.)
        self.request("POST", "/api/onboarding/analytics", {})
        self.request("POST", "/api/onboarding/integration", {"client_id": client_id, "redirect_uri": client_id})
        flow = self.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        answer: dict[str, Any] = {"broker": "127.0.0.1", "port": self.mqtt_port}
        fields = {field["name"]: field for field in flow.get("data_schema", [])}
        if "other_settings" in fields:
            # 2026.x: a required, folded section of the form. Its required keys, as a user leaves them: no
            # client certificate, no CA (plain TCP), and TCP (not WebSockets).
            answer["other_settings"] = {"set_client_cert": False, "set_ca_cert": "off", "transport": "tcp"}
        result = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", answer)
        assert result["type"] == "create_entry", (flow, result)

    def command(self, message: dict[str, Any]) -> Any:
        """One command over Home Assistant's WebSocket API (what REST does not offer); its result."""
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{self.port}/api/websocket", open_timeout=30) as ws:
            assert json.loads(ws.recv(30))["type"] == "auth_required"
            ws.send(json.dumps({"type": "auth", "access_token": self.token}))
            assert json.loads(ws.recv(30))["type"] == "auth_ok"
            ws.send(json.dumps({"id": 1, **message}))
            answer = json.loads(ws.recv(30))
        assert answer["success"], answer
        return answer["result"]

    def state(self, entity_id: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request("GET", f"/api/states/{entity_id}")
            return result
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def call(self, domain: str, service: str, **data: Any) -> None:
        self.request("POST", f"/api/services/{domain}/{service}", data)

    def add_esphome(self, port: int, key: str | None = None) -> dict[str, Any]:
        """The ESPHome integration's config flow, as a user goes through it: the address, then the key if the
        device asks for one. The flow's last answer."""
        flow = self.request("POST", "/api/config/config_entries/flow", {"handler": "esphome"})
        result: dict[str, Any] = self.request(
            "POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"host": "127.0.0.1", "port": port}
        )
        if key is not None and result.get("step_id") == "encryption_key":
            result = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"noise_psk": key})
        return result

    def run_script(self, name: str, sequence: list[dict[str, Any]]) -> None:
        """`sequence` as a script (templates rendered, as in an automation), run to its end."""
        self.request("POST", f"/api/config/script/config/{name}", {"alias": name, "sequence": sequence})
        wait_until(lambda: self.state(f"script.{name}") is not None, 30, f"script.{name} to load")
        self.call("script", name)

    def add_automation(self, name: str, automation: dict[str, Any]) -> str:
        """An automation, as the UI saves one; its entity id once it is loaded."""
        self.request("POST", f"/api/config/automation/config/{name}", {"id": name, "alias": name, **automation})
        entity = f"automation.{name}"
        wait_until(lambda: self.state(entity) is not None, 30, f"{entity} to load")
        return entity

    def template(self, template: str) -> str:
        req = urllib.request.Request(
            self.base + "/api/template",
            data=json.dumps({"template": template}).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as response:
            return str(response.read().decode())
