"""Files written whole or not at all (the audio cache, the runtime state file)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, prefix: str) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`. On a failure (a full
    disk) the temporary file is removed and the OSError raised: nothing is left behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
