"""The exceptions relssl raises for problems the user can fix.

Every one of them derives from `RelsslError`: the command line prints its message as one line
and exits with status 2. Any other exception is a bug in relssl (or in a plugin) and keeps its
traceback (exit status 1). Messages name the key, file or folder at fault and the fix.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "RelsslError", "RelsslWarning"]


class RelsslError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class ConfigError(RelsslError, ValueError):
    """A bad configuration value or option; the message names the key and what is allowed."""


class DataError(RelsslError, ValueError):
    """Bad or missing input data; the message names the file, folder or key at fault and the fix."""


class CheckpointError(RelsslError, RuntimeError):
    """A checkpoint that is missing, unreadable or from an incompatible run."""


class NonFiniteLossError(RelsslError, RuntimeError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class RelsslWarning(UserWarning):
    """Something the user should know that does not stop the run (an unreadable image skipped, ...)."""
