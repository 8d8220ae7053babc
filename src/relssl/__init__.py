"""relssl: self-supervised representation learning by relations between samples.

`relssl.load_backbone(path)` and `relssl.load_backbone_info(path)` (from `relssl.export`) are
loaded on first use: `import relssl` stays light, and this bottom-layer package imports nothing
above it at import time.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_backbone", "load_backbone_info"]

_LAZY = {"load_backbone": "relssl.export.loading", "load_backbone_info": "relssl.export.loading"}


def __getattr__(name: str) -> Any:
    """`relssl.load_backbone` and `relssl.load_backbone_info`, imported when first asked for."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'relssl' has no attribute {name!r}")
