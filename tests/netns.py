"""A network of the test's own, for mDNS between Home Assistant and the daemon: the calling thread (and every
thread and process it starts from then on) moves into a new network namespace with loopback and a veth
pair whose one end has ADDRESS and the default route. Multicast sent there reaches every socket in the
namespace and nothing else: nothing goes out on the machine's network, and no other test sees it. Needs
root (CAP_SYS_ADMIN) and `ip` (iproute2)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
ADDRESS = "10.77.0.1"


def available() -> str | None:
    """Why a private network cannot be had here; None when it can."""
    if os.geteuid() != 0:
        return "not root: a network namespace needs CAP_SYS_ADMIN"
    if shutil.which("ip") is None:
        return "no `ip` (iproute2)"
    return None


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


@contextlib.contextmanager
def private_network() -> Iterator[str]:
    """This thread in a network namespace of its own while the block runs (its address yielded); back in
    the one it was in afterwards. What was started inside keeps the namespace alive until it ends."""
    original = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        _libc_call("unshare", CLONE_NEWNET)
        try:
            for command in (
                "ip link set lo up",
                "ip link add mdns0 type veth peer name mdns1",
                f"ip addr add {ADDRESS}/24 dev mdns0",
                "ip link set mdns0 up",
                "ip link set mdns1 up",
                "ip route add default dev mdns0",
            ):
                subprocess.run(command.split(), check=True, capture_output=True)
            yield ADDRESS
        finally:
            _libc_call("setns", original, CLONE_NEWNET)
    finally:
        os.close(original)
