"""The ESPHome native API's messages as aioesphomeapi ships them (its generated `api_pb2`, at the version
pinned in constraints.txt), by their wire type id and back.

aioesphomeapi's own `__init__` imports its whole client (connection, reconnect logic, zeroconf, the
models), 7 MB resident that a device never uses; only its two generated modules are loaded here, as a
package of their own name. If the real package is imported in the same process as well (the tests'
client), both share protobuf's one descriptor pool and so the same message classes.

Imported only when a client connects: a daemon that nobody has connected to pays nothing for protobuf.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

from google.protobuf.message import DecodeError, Message

_PACKAGE = "_mqtt_speaker_esphome_messages"


def _generated() -> tuple[Any, Any]:
    """aioesphomeapi's api_pb2 and api_options_pb2, loaded from its installed files without its __init__."""
    if _PACKAGE not in sys.modules:
        spec = importlib.util.find_spec("aioesphomeapi")
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError("aioesphomeapi is not installed (pip install -c constraints.txt mqtt-speaker)")
        package = types.ModuleType(_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[_PACKAGE] = package
    return importlib.import_module(f"{_PACKAGE}.api_pb2"), importlib.import_module(f"{_PACKAGE}.api_options_pb2")


api, _options = _generated()
BY_ID: dict[int, type[Message]] = {}
for _name in api.DESCRIPTOR.message_types_by_name:
    _cls = getattr(api, _name)
    _id = _cls.DESCRIPTOR.GetOptions().Extensions[_options.id]
    if _id:
        BY_ID[_id] = _cls


def type_id(message: Message) -> int:
    """The wire type id of a message (from its descriptor's `id` option)."""
    found: int = message.DESCRIPTOR.GetOptions().Extensions[_options.id]
    return found


def decode(message_type: int, payload: bytes) -> Message | None:
    """The message a frame carries; None for a type this API does not know. DecodeError when malformed."""
    cls = BY_ID.get(message_type)
    if cls is None:
        return None
    message = cls()
    message.ParseFromString(payload)
    return message


__all__ = ["BY_ID", "DecodeError", "Message", "api", "decode", "type_id"]
