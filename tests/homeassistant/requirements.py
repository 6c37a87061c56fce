"""Print the requirements Home Assistant would install at its first start (and when the MQTT broker and the
ESPHome device are added), read from the installed release's own manifests: run with that release's Python,
stdlib only.

So that a release runs with --skip-pip, with no pinned list kept here per release."""

import importlib
import json
import sys
from pathlib import Path

import homeassistant  # type: ignore[import-not-found]  # (run inside the root, with its Python)
from homeassistant import bootstrap

components = Path(homeassistant.__file__).parent / "components"
# A requirement pinned to a release this machine's package index does not have: the newest it has in which
# every name the release's own code imports exists (checked by hand for the release named).
SUBSTITUTES = {"aioesphomeapi==46.25.0": "aioesphomeapi==46.23.0"}  # Home Assistant 2026.11.0's esphome
wanted = {
    "frontend",
    "mqtt",
    "esphome",  # the daemon's ESPHome native API (media player, assist satellite)
    "demo",  # its TTS platform: speech for the tests without the internet
    *getattr(bootstrap, "DEFAULT_INTEGRATIONS", ()),
    *getattr(bootstrap, "CORE_INTEGRATIONS", ()),
}
seen: set[str] = set()
requirements: set[str] = set()
while wanted:
    domain = wanted.pop()
    manifest = components / domain / "manifest.json"
    if domain in seen or not manifest.exists():
        continue
    seen.add(domain)
    data = json.loads(manifest.read_text())
    requirements.update(data.get("requirements", []))
    # after_dependencies too: they are imported when present (mqtt's config flow imports hassio).
    wanted.update(data.get("dependencies", []), data.get("after_dependencies", []))
# The owner's login offers these multi-factor modules, which name their own requirements.
for module in ("totp", "notify"):
    requirements.update(
        getattr(importlib.import_module(f"homeassistant.auth.mfa_modules.{module}"), "REQUIREMENTS", [])
    )
requirements = {SUBSTITUTES.get(requirement, requirement) for requirement in requirements}
sys.stdout.write("\n".join(sorted(requirements)) + "\n")
