"""A real Home Assistant Core for the discovery tests: its own Python, a cached virtualenv, onboarded
and given the MQTT broker entirely over its HTTP API (no `default_config`, nothing from the internet)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.sound import terminate, wait_until

HERE = Path(__file__).resolve().parent
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
http:
  server_host: 127.0.0.1
  server_port: {port}
logger:
  default: warning
"""


@dataclass(frozen=True)
class Release:
    version: str
    python: str  # a pyenv version that can run it
    uv_args: tuple[str, ...] = ()


# The newest Home Assistant that installs on each Python the machine image ships (see the research notes).
RELEASES = (Release("2025.4.4", "3.13.0"), Release("2025.1.4", "3.12.1", ("--prerelease=allow",)))


def pyenv_root() -> Path:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    if shutil.which("pyenv"):
        return Path(subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True).stdout.strip())
    return Path.home() / ".pyenv"


def find_release() -> tuple[Release, Path] | None:
    for release in RELEASES:
        python = pyenv_root() / "versions" / release.python / "bin" / "python"
        if python.exists():
            return release, python
    return None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mqtt-speaker-tests"


def ensure_venv(release: Release, python: Path) -> Path:
    """Home Assistant's virtualenv, built once per machine and kept in the cache between runs."""
    venv = cache_dir() / f"homeassistant-{release.version}"
    marker = venv / ".complete"
    if marker.exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "uv==0.6.10"], check=True)
    requirements = HERE / f"requirements-{release.version}.txt"
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


class HomeAssistant:
    """One Home Assistant process on a free loopback port, with its own config directory."""

    def __init__(self, venv: Path, port: int, mqtt_port: int) -> None:
        self.venv = venv
        self.port = port
        self.mqtt_port = mqtt_port
        self.dir = Path(tempfile.mkdtemp(prefix="mqtt-speaker-ha-"))
        (self.dir / "configuration.yaml").write_text(CONFIGURATION.format(port=port))
        self.base = f"http://127.0.0.1:{port}"
        self.token = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.dir / "ha.out").open("ab")
        self._proc = subprocess.Popen(
            [
                str(self.venv / "bin" / "hass"),
                "-c",
                str(self.dir),
                "--skip-pip",
                "--log-file",
                str(self.dir / "ha.log"),
            ],
            stdout=log,
            stderr=log,
        )
        wait_until(self._answers, 120, "Home Assistant to answer on HTTP", interval=0.25)

    def _answers(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"Home Assistant exited:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.base}/api/onboarding", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self._proc is not None:
            terminate(self._proc, 30)
            self._proc = None

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
        result = self.request(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": "127.0.0.1", "port": self.mqtt_port},
        )
        assert result["type"] == "create_entry", result

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

    def template(self, template: str) -> str:
        req = urllib.request.Request(
            self.base + "/api/template",
            data=json.dumps({"template": template}).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as response:
            return str(response.read().decode())
