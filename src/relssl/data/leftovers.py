"""Remove what a killed process left behind: temporary files of an interrupted download or cache write.

A file is stale when its name matches the temporary-name pattern of the writer that made it and it
has not been modified for STALE_AFTER_S (one hour). A live writer touches its file far more often
(a download writes a block at least every minute or times out; a cache write streams its chunks),
so a file that is still being written is never removed, and two downloads or cache writes may run
at once. The price: a leftover may stay for up to an hour after the process that made it died.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

__all__ = ["STALE_AFTER_S", "mkstemp_pattern", "remove_stale"]

#: Seconds without a write after which a temporary file of a known pattern counts as abandoned.
STALE_AFTER_S = 3600.0


def mkstemp_pattern(prefixes: list[str], suffix: str) -> re.Pattern[str]:
    """The names `tempfile.mkstemp(prefix=p, suffix=suffix)` makes for any p of `prefixes` (8 random characters)."""
    choices = "|".join(re.escape(p) for p in prefixes)
    return re.compile(f"(?:{choices})[a-z0-9_]{{8}}{re.escape(suffix)}")


def remove_stale(folder: Path, pattern: re.Pattern[str], *, older_than: float = STALE_AFTER_S) -> list[Path]:
    """Delete the files in `folder` whose whole name matches `pattern` and that were last modified over
    `older_than` seconds ago; return them. Errors (a missing folder, a file already gone) are ignored."""
    removed: list[Path] = []
    cutoff = time.time() - older_than
    try:
        with os.scandir(folder) as entries:
            candidates = [e for e in entries if pattern.fullmatch(e.name)]
    except OSError:
        return removed
    for entry in candidates:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed
