"""Who the device is to Home Assistant: its node name, its friendly name and its MAC address.

Home Assistant keys the device, its config entry and every entity on the MAC, and stops reconnecting to a
device whose MAC changed; so the MAC never changes while the machine and the site stay the same. It is
derived, not stored: a locally administered address made of a hash of the machine's id (/etc/machine-id,
hashed for this use only, as systemd advises) and the site, so it survives a reinstall or a wiped state
directory, and the daemon and `mqtt-speaker discovery` agree on it without a file. The MQTT device names
the same MAC, so Home Assistant shows the two as one device.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path

from mqtt_speaker.settings import Settings

MACHINE_ID = Path("/etc/machine-id")
SALT = b"mqtt-speaker esphome device\0"


@dataclass(frozen=True)
class Identity:
    name: str  # the node name: a host name (<site>-speaker)
    friendly_name: str  # what Home Assistant calls the device ("Kitchen speaker")
    mac: str  # aa:bb:cc:dd:ee:ff, as Home Assistant writes it

    @property
    def mac_hex(self) -> str:
        """aabbccddeeff: the Noise hello's and the mDNS record's form."""
        return self.mac.replace(":", "")

    @property
    def mac_pretty(self) -> str:
        """AA:BB:CC:DD:EE:FF: the device info's form (ESPHome's own)."""
        return self.mac.upper()


def device_mac(site: str, machine_id: Path = MACHINE_ID) -> str:
    """A locally administered unicast MAC from the machine's id (the host name where there is none) and the site."""
    try:
        seed = machine_id.read_bytes().strip()
    except OSError:
        seed = b""
    seed = seed or socket.gethostname().encode()
    digest = hashlib.sha256(SALT + seed + b"\0" + site.encode()).digest()
    octets = bytes([(digest[0] | 0x02) & 0xFE]) + digest[1:6]
    return ":".join(f"{octet:02x}" for octet in octets)


def identity(settings: Settings) -> Identity:
    return Identity(name=settings.esphome_name, friendly_name=settings.device_name, mac=device_mac(settings.site))
