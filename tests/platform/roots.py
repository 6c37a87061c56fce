"""Debian roots for the platform tests: built once with debootstrap, cached, copied, entered with nspawn.

Layout under ~/.cache/mqtt-speaker-tests/roots (the user's cache directory, $XDG_CACHE_HOME honoured):
  <name>-<key>/        a finished root; <key> is a hash of everything that went into it
  <name>-<key>.partial a root being built (a killed build leaves one; the next build removes it safely)
  work/<name>-<pid>-N  a test's own copy, removed when the test ends

Two rules protect the machine (both were learned the hard way):
- a root holds device nodes in /dev: it is copied with `cp -a` only, never by reading its files;
- a root is never deleted while anything is mounted inside it: `remove()` unmounts first, refuses if a
  mount is left, and `rm --one-file-system` would not cross one anyway.
Commands run inside a root through `systemd-nspawn`, which mounts /proc, /sys and /dev in a mount
namespace of its own: nothing is mounted on the host, so nothing is left behind when a test is killed.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType


def cache_dir() -> Path:
    """The tests' cache in the user's cache directory (never the real state or config directories)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mqtt-speaker-tests"


MIRROR = "http://deb.debian.org/debian"
ROOTS = cache_dir() / "roots"
WORK = ROOTS / "work"
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}
# The archive here may be a fixed snapshot whose Release files have expired.
APT_CONF = 'Acquire::Check-Valid-Until "false";\n'
_copies = itertools.count()


def require() -> None:
    """Skip, saying why, where roots cannot be built (script/setup test installs the tools; root only)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("the platform tests build Debian roots and boot them: run as root")
    missing = [tool for tool in ("debootstrap", "systemd-nspawn", "nsenter") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (script/setup test installs them)")


@contextmanager
def sigterm_runs_cleanup() -> Iterator[None]:
    """Python skips `finally` on SIGTERM (a CI timeout, say): turn it into KeyboardInterrupt, on which
    pytest still tears its fixtures down, so that containers stop and copies are removed."""

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


@dataclass(frozen=True)
class RootSpec:
    """What a root is made of; its cache key is a hash of all of it."""

    name: str
    suite: str
    arch: str = "amd64"
    include: tuple[str, ...] = ()
    # Commands run inside the finished root (as root, through nspawn), in order, to complete it.
    steps: tuple[str, ...] = ()
    # The project's source tree: copied to /root/mqtt-speaker before the steps, and part of the key
    # (such a layer is rebuilt whenever a file of the project changes).
    tree: Path | None = None
    # A root built from a copy of another (suite, arch and include are then that one's).
    base: RootSpec | None = None
    # Environment of the steps.
    env: tuple[tuple[str, str], ...] = ()

    def key(self) -> str:
        digest = hashlib.sha256(repr((self.name, self.suite, self.arch, self.include, self.steps)).encode())
        if self.env:
            digest.update(repr(self.env).encode())
        if self.base is not None:
            digest.update(self.base.key().encode())
        digest.update(_extra_certificates_digest())
        if self.tree is not None:
            for path in source_files(self.tree):
                digest.update(str(path.relative_to(self.tree)).encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()[:12]

    @property
    def path(self) -> Path:
        return ROOTS / f"{self.name}-{self.key()}"


def _extra_certificates() -> list[Path]:
    return sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))


def _extra_certificates_digest() -> bytes:
    return b"".join(p.read_bytes() for p in _extra_certificates())


# --------------------------------------------------------------------------------------------- mounts


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (from the host's /proc/mounts)."""
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_all(path: Path) -> None:
    for point in mounts_under(path):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove(path: Path) -> None:
    """Delete a root: only with nothing mounted inside, and never across a file system boundary."""
    if not path.exists():
        return
    unmount_all(path)
    left = mounts_under(path)
    if left:
        raise RuntimeError(f"not removing {path}: still mounted inside it: {left}")
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def copy(source: Path, target: Path) -> None:
    """A copy of a root with its device nodes as nodes (`cp -a`, never a reading copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(target)], check=True)


# ----------------------------------------------------------------------------------------- commands


def nspawn_args(root: Path, binds: Iterable[tuple[Path, str]] = ()) -> list[str]:
    """systemd-nspawn on `root` without a host systemd (no machined, no scope unit of its own),
    sharing the host's network, with `binds` (host path, path inside)."""
    args = [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--directory",
        str(root),
        "--resolv-conf=copy-host",
        "--timezone=off",
    ]
    args += [f"--bind={host}:{inside}" for host, inside in binds]
    return args


def cgroup_hierarchies() -> list[Path]:
    """Where a process's cgroup is set: the unified hierarchy, or on a hybrid host the named systemd
    one and the unified one (nspawn uses both)."""
    top = Path("/sys/fs/cgroup")
    if (top / "cgroup.procs").exists():
        return [top]
    return [top / name for name in ("systemd", "unified") if (top / name / "cgroup.procs").exists()]


class Scope:
    """A cgroup of its own for one nspawn: nspawn (with --keep-unit and no systemd on the host) makes
    `payload` and `supervisor` groups beside itself, which two containers would otherwise share. When
    the scope closes, whatever is still in it is killed (host PIDs, read from the host's cgroup files)
    and its groups are removed."""

    _count = itertools.count()

    def __init__(self, adopted: str | None = None) -> None:
        name = adopted or f"mqtt-speaker-tests-{os.getpid()}-{next(self._count)}"
        self.dirs = [hierarchy / name for hierarchy in cgroup_hierarchies()]
        for directory in self.dirs:
            directory.mkdir(exist_ok=adopted is not None)

    @classmethod
    def adopt(cls, group: Path) -> Scope:
        """The scope of a run that is gone, found by its cgroup's name."""
        return cls(group.name)

    def enter(self) -> None:
        """Called in the child between fork and exec."""
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(str(os.getpid()))

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for directory in self.dirs:
            for procs in directory.rglob("cgroup.procs"):
                with suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        return pids

    def close(self) -> None:
        deadline = time.monotonic() + 30
        while (pids := self._pids()) and time.monotonic() < deadline:
            for pid in pids:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for directory in self.dirs:
            for group in sorted(
                (d for d in directory.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True
            ):
                with suppress(OSError):
                    group.rmdir()
            with suppress(OSError):
                directory.rmdir()


def run_in(
    root: Path,
    command: str,
    *,
    env: dict[str, str] | None = None,
    binds: Iterable[tuple[Path, str]] = (),
    timeout: float = 1800,
) -> subprocess.CompletedProcess[str]:
    """`sh -c command` inside the root, as root (its own PID and mount namespaces; the host's network);
    it must succeed."""
    args = nspawn_args(root, binds)
    args += [f"--setenv={k}={v}" for k, v in (env or {}).items()]
    args += ["--console=pipe", "/bin/sh", "-c", command]
    scope = Scope()
    try:
        result = subprocess.run(
            args,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            preexec_fn=scope.enter,
        )
    finally:
        scope.close()
        forget_machine(root)
    if result.returncode != 0:
        raise RuntimeError(
            f"in {root.name}: {command!r} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def forget_machine(root: Path) -> None:
    """nspawn leaves an empty directory per machine name in /run/systemd/nspawn/propagate."""
    with suppress(OSError):
        (Path("/run/systemd/nspawn/propagate") / root.name).rmdir()


class Contained:
    """A long-running command in a root (nspawn, not booted), in a cgroup scope of its own."""

    def __init__(self, args: list[str], log: Path) -> None:
        self._scope = Scope()
        self.log = log
        try:
            with log.open("ab") as out:
                self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=self._scope.enter,  # noqa: PLW1509 (only writes a file: no locks taken)
                )
        except BaseException:
            self._scope.close()
            raise

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, then SIGKILL; its exit code, None if killed. (nspawn hands SIGTERM on to the command
        as its --kill-signal, which is SIGKILL unless set, or the shutdown signal when it boots.)"""
        code: int | None = None
        try:
            if self._proc is not None:
                self._proc.terminate()
                try:
                    code = self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(10)
        finally:
            self._proc = None
            self._scope.close()
        return code


class Booted:
    """`systemd-nspawn -b`: the root's own systemd as PID 1 of a PID namespace, sharing the host's
    network. Commands are run inside with nsenter into the namespaces of that PID 1 (the leader)."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.leader = 0
        self._nspawn: Contained | None = None

    def start(self, timeout: float = 120) -> Booted:
        self._nspawn = Contained([*nspawn_args(self.root), "--boot", "--console=read-only"], self.log)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if not self._nspawn.running() or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            self.leader = self._find_leader(self._nspawn.pid)
            time.sleep(0.1)
        while True:
            state = self.run("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the container's systemd did not finish booting ({state}):\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.25)

    @staticmethod
    def _find_leader(nspawn: int) -> int:
        for children in Path(f"/proc/{nspawn}/task").glob("*/children"):
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return 0

    def run(self, command: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`sh -c command` inside the container (all of its namespaces, as root, a clean environment)."""
        args = ["nsenter", "-t", str(self.leader), "-a", "--", "/usr/bin/env", "-i", f"PATH={INNER_PATH}"]
        result = subprocess.run(
            [*args, "/bin/sh", "-c", command],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{command!r} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def stop(self) -> None:
        """An orderly shutdown (nspawn turns SIGTERM into one), then whatever is left is killed."""
        try:
            if self._nspawn is not None:
                self._nspawn.stop()
        finally:
            self._nspawn = None
            forget_machine(self.root)


INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --------------------------------------------------------------------------------------------- building


def ensure_binfmt(arch: str) -> None:
    """Foreign binaries run through qemu-user-static, whose binfmt entry registers itself once
    binfmt_misc is mounted (systemd does that at boot; without systemd as PID 1 nobody has). What is
    mounted here is unmounted when the test run ends."""
    if arch == host_arch():
        return
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], check=True)
        atexit.register(subprocess.run, ["umount", str(binfmt)], check=False)
    qemu = f"qemu-{ARCHES[arch]}"
    if not (binfmt / qemu).exists():
        subprocess.run(["update-binfmts", "--enable", qemu], check=True, capture_output=True)
    if not (binfmt / qemu).read_text().startswith("enabled"):
        raise RuntimeError(f"binfmt entry {qemu} is not enabled")


def bootstrap(spec: RootSpec, target: Path) -> None:
    ensure_binfmt(spec.arch)
    include = ["ca-certificates", *spec.include]
    args = ["debootstrap", "--variant=minbase", f"--arch={spec.arch}", f"--include={','.join(include)}"]
    try:
        subprocess.run([*args, spec.suite, str(target), MIRROR], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        log = target / "debootstrap" / "debootstrap.log"
        detail = log.read_text(errors="replace")[-4000:] if log.exists() else exc.stderr[-4000:]
        raise RuntimeError(f"debootstrap {spec.suite} {spec.arch} failed:\n{detail}") from exc
    finally:
        unmount_all(target)  # debootstrap mounts /proc and /sys inside while it works


def prepare(root: Path) -> None:
    """What a root needs to reach the package registries the way the host does."""
    certificates = _extra_certificates()
    for certificate in certificates:
        shutil.copy2(certificate, root / "usr/local/share/ca-certificates" / certificate.name)
    if certificates:
        run_in(root, "update-ca-certificates >/dev/null")
    (root / "etc/apt/apt.conf.d/99check-valid-until").write_text(APT_CONF)
    # pip must trust the same authorities (the host's pip.conf points it at the system store).
    pip_conf = Path("/etc/pip.conf")
    (root / "etc/pip.conf").write_text(
        pip_conf.read_text() if pip_conf.exists() else "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
    )


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def clean_stale() -> None:
    """What a run killed with SIGKILL left behind (its PID is gone): the processes in its cgroups (its
    containers) are killed and the groups removed, then its copies are removed."""
    for hierarchy in cgroup_hierarchies():
        for group in hierarchy.glob("mqtt-speaker-tests-*"):
            match = re.fullmatch(r"mqtt-speaker-tests-(\d+)-\d+", group.name)
            if match and not _alive(int(match[1])):
                Scope.adopt(group).close()
    if WORK.exists():
        for copied in WORK.iterdir():
            match = re.fullmatch(r".+-(\d+)-\d+", copied.name)
            if match and not _alive(int(match[1])):
                remove(copied)
                forget_machine(copied)


_cleaned = False


def ensure(spec: RootSpec) -> Path:
    """The finished root for `spec`: from the cache, or built now (debootstrap, or a copy of its base).
    One build at a time per root (a lock file), so that two runs never share a partial root."""
    global _cleaned  # noqa: PLW0603 - once per test run
    require()
    if not _cleaned:
        _cleaned = True
        clean_stale()
    ensure_binfmt(spec.arch)  # a cached foreign root still needs it to run anything
    final = spec.path
    if (final / ".complete").exists():
        return final
    base = ensure(spec.base) if spec.base is not None else None
    ROOTS.mkdir(parents=True, exist_ok=True)
    with (ROOTS / f"{spec.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / ".complete").exists():
            build(spec, base, final)
    return final


def build(spec: RootSpec, base: Path | None, final: Path) -> None:
    partial = final.with_name(final.name + ".partial")
    remove(partial)
    started = time.monotonic()
    try:
        if base is None:
            bootstrap(spec, partial)
            prepare(partial)
        else:
            copy(base, partial)
            (partial / ".complete").unlink()
        if spec.tree is not None:
            copy_source(spec.tree, partial / "root/mqtt-speaker", source_files(spec.tree))
        pip_cache = ROOTS / f"pip-{spec.arch}"
        pip_cache.mkdir(parents=True, exist_ok=True)
        for step in spec.steps:
            begun = time.monotonic()
            done = run_in(partial, step, env=dict(spec.env), binds=[(pip_cache, "/root/.cache/pip")])
            with (partial / "root/build.log").open("a") as log:
                log.write(f"$ {step}  ({time.monotonic() - begun:.0f} s)\n{done.stdout}{done.stderr}")
        seconds = time.monotonic() - started
        (partial / ".complete").write_text(f"built in {seconds:.0f} s\n")
        with (ROOTS / "build-times.log").open("a") as times:
            times.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {final.name} {seconds:.0f} s\n")
        partial.rename(final)
    finally:
        remove(partial)
    for stale in ROOTS.iterdir():  # older builds of the same root
        if re.fullmatch(re.escape(spec.name) + r"-[0-9a-f]{12}", stale.name) and stale != final:
            remove(stale)


@contextmanager
def working_copy(root: Path) -> Iterator[Path]:
    """A test's own copy of a cached root, removed afterwards (also when the test fails)."""
    target = WORK / f"{root.name}-{os.getpid()}-{next(_copies)}"
    remove(target)
    copy(root, target)
    try:
        yield target
    finally:
        remove(target)


# Parts of the tree that script/install does not use: a change there does not rebuild an installed root.
NOT_INSTALLED = ("tests/", "benchmarks/", "docs/", ".ci/")


def source_files(tree: Path) -> list[Path]:
    """The project's files as git sees them (tracked, and new ones not ignored), without the tests."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = [name for name in listed.split("\0") if name and not name.startswith(NOT_INSTALLED)]
    return sorted(tree / name for name in names if (tree / name).is_file())


def copy_source(tree: Path, target: Path, files: Sequence[Path]) -> None:
    for path in files:
        destination = target / path.relative_to(tree)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
