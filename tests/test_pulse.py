"""The sound server player's pieces that need no server: how long a CPU quota can pause the process."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqtt_speaker.playback.pulse import cpu_quota_pause


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_no_quota_no_pause(tmp_path: Path) -> None:
    write(tmp_path / "self", "0::/system.slice/mqtt-speaker.service\n")
    write(tmp_path / "fs/system.slice/mqtt-speaker.service/cpu.max", "max 100000\n")
    assert cpu_quota_pause(tmp_path / "fs", tmp_path / "self") == 0.0


def test_a_v2_quota_on_a_parent_group_pauses_for_the_rest_of_its_period(tmp_path: Path) -> None:
    write(tmp_path / "self", "0::/system.slice/mqtt-speaker.service\n")
    write(tmp_path / "fs/system.slice/mqtt-speaker.service/cpu.max", "max 100000\n")
    write(tmp_path / "fs/system.slice/cpu.max", "3000 100000\n")  # CPUQuota=3% on the slice
    assert cpu_quota_pause(tmp_path / "fs", tmp_path / "self") == pytest.approx(0.097)


def test_a_v1_quota(tmp_path: Path) -> None:
    write(tmp_path / "self", "5:memory:/bench\n4:cpu,cpuacct:/bench\n")
    write(tmp_path / "fs/cpu,cpuacct/bench/cpu.cfs_quota_us", "5000\n")
    write(tmp_path / "fs/cpu,cpuacct/bench/cpu.cfs_period_us", "50000\n")
    write(tmp_path / "fs/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert cpu_quota_pause(tmp_path / "fs", tmp_path / "self") == pytest.approx(0.045)


def test_unreadable_cgroups_mean_no_pause(tmp_path: Path) -> None:
    assert cpu_quota_pause(tmp_path / "fs", tmp_path / "missing") == 0.0
    write(tmp_path / "self", "0::/\n")
    assert cpu_quota_pause(tmp_path / "fs", tmp_path / "self") == 0.0
