"""Fixtures of the platform tests: cached Debian roots, a test's own copy of one, and cleanup that
also runs when the run is stopped with SIGTERM (a CI timeout, say)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.platform import roots

ROOT = Path(__file__).resolve().parents[2]

USER = "pi"  # the login user whose user service manager runs the user unit
# Debian bookworm (what Raspberry Pi OS Lite is built on) with systemd, as a machine that boots.
BOOKWORM = roots.RootSpec(
    "bookworm-amd64",
    "bookworm",
    "amd64",
    include=("systemd", "systemd-sysv", "dbus", "libpam-systemd", "python3"),
)
# ... into which script/install has installed the product, from this source tree.
INSTALLED = roots.RootSpec(
    "bookworm-amd64-installed",
    "bookworm",
    "amd64",
    tree=ROOT,
    base=BOOKWORM,
    steps=(
        "cd /root/mqtt-speaker && script/install",
        # ... and as the user service of a login user, as `script/install --user` does it for them.
        f"useradd --create-home {USER} && cp -r /root/mqtt-speaker /home/{USER}/ && chown -R {USER}: /home/{USER}",
        f"runuser --login {USER} --command 'mqtt-speaker/script/install --user'",
    ),
)

# A Raspberry Pi 4's core, for qemu (a Pi 5 has cortex-a76).
QEMU_CPU = "cortex-a72"
# A Raspberry Pi's system: arm64 Debian bookworm, run through qemu-user-static. Minimal (no systemd,
# as in a container image): script/install must finish there too, and say what it skipped.
ARM64 = roots.RootSpec("bookworm-arm64", "bookworm", "arm64", include=("python3",))
ARM64_INSTALLED = roots.RootSpec(
    "bookworm-arm64-installed",
    "bookworm",
    "arm64",
    tree=ROOT,
    base=ARM64,
    steps=("cd /root/mqtt-speaker && script/install",),
    env=(("QEMU_CPU", QEMU_CPU),),
)


@pytest.fixture(scope="session", autouse=True)
def _sigterm_runs_cleanup() -> Iterator[None]:
    with roots.sigterm_runs_cleanup():
        yield


@pytest.fixture(scope="session")
def installed_root() -> Path:
    """The cached root with the product installed (built on first use: a few minutes)."""
    return roots.ensure(INSTALLED)
