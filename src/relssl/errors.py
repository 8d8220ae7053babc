"""Which exceptions are the user's to fix (shown as one line) rather than bugs (shown as a traceback)."""

from __future__ import annotations

import os

from relssl.config import ConfigError
from relssl.data import DataError
from relssl.train.checkpoint import CheckpointError
from relssl.train.logger import NonFiniteLossError

# ValueError covers option validation in the library's constructors. Set RELSSL_DEBUG=1 to
# see the traceback of any of these instead of the one-line message.
USER_ERRORS: tuple[type[BaseException], ...] = (
    () if os.environ.get("RELSSL_DEBUG") else
    (ConfigError, DataError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError)
)
