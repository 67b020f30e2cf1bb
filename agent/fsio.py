"""Crash-safe file writes shared by the normal world's stores (chain file, blockstore, manifests).

``write_atomic`` is write-fsync-rename-fsync(dir): after a power loss the file is either the old
one or the whole new one, never a torn mix.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | memoryview, tmp_suffix: str = ".tmp") -> None:
    """Replace ``path`` with ``data`` durably (mode 0600)."""
    tmp = path.with_name(path.name + tmp_suffix)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
