"""Load the pickled CIFAR batches without letting a pickle run code.

`pickle.load` calls whatever callable a file names, so a tampered download could run
`os.system`. This unpickler resolves only the NumPy globals that the official (Python 2,
protocol 2) CIFAR pickles use to rebuild arrays; anything else is refused.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from relssl.errors import DataError

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),  # NumPy 1.x name, as written in the CIFAR files
        ("numpy._core.multiarray", "_reconstruct"),  # NumPy 2.x name
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a callable outside ALLOWED_GLOBALS."""


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only ALLOWED_GLOBALS."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise ForbiddenGlobal(f"it asks for {module}.{name}, which is not allowed")
        if module.endswith(".multiarray"):  # resolve both spellings without NumPy 2's deprecation warning
            try:
                return getattr(importlib.import_module("numpy._core.multiarray"), name)
            except ImportError:  # pragma: no cover - NumPy < 1.26
                return getattr(importlib.import_module("numpy.core.multiarray"), name)
        return super().find_class(module, name)


def load_pickle(path: Path) -> Any:
    """Unpickle `path` with RestrictedUnpickler (Python 2 strings decoded as latin-1)."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, encoding="latin1").load()
    except ForbiddenGlobal as exc:
        raise DataError(
            f"refusing to load {path}: {exc}. A genuine CIFAR file holds only NumPy arrays, lists and "
            "strings; delete it and download the dataset again."
        ) from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise DataError(f"cannot read {path}: {exc!r}. The file is corrupt; delete it and download again.") from exc
