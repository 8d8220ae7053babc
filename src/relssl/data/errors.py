"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing input data; the message names the file, folder or key at fault and the fix."""
