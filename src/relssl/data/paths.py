"""Where data lives by default, and whether we may write there."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def is_writable_dir(path: Path) -> bool:
    """True if `path` is a folder we may create files in.

    Checks the permission bits as well as access(2): a process running as root passes access()
    everywhere, but a folder without any write bit (such as a shared read-only data folder) is
    still not ours to write into.
    """
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and bool(info.st_mode & 0o222) and os.access(path, os.W_OK | os.X_OK)


def can_create_in(path: Path) -> bool:
    """True if `path` is a writable folder, or does not exist and its nearest existing parent is one."""
    path = path.absolute()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return is_writable_dir(path)
