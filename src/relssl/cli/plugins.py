"""Parts from outside relssl: modules that register methods, backbones or datasets when imported.

Two ways to name them, both read once when the `relssl` command starts (before its `--help`
lists the parts): the `relssl.plugins` entry-point group of installed packages, and the
`RELSSL_PLUGINS` environment variable (comma-separated module names, e.g. `my_lab.methods`).
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from relssl.errors import ConfigError

__all__ = ["ENTRY_POINT_GROUP", "ENV_VAR", "load_plugins"]

ENTRY_POINT_GROUP = "relssl.plugins"
ENV_VAR = "RELSSL_PLUGINS"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import every plugin module not imported yet; return their names.

    A name in RELSSL_PLUGINS that cannot be found is a ConfigError; an error raised while a
    plugin runs is the plugin's bug and propagates with its traceback.
    """
    names = [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    names += [n.strip() for n in os.environ.get(ENV_VAR, "").split(",") if n.strip()]
    loaded = []
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                raise ConfigError(f"{ENV_VAR} / entry point names module {name!r}, which cannot be found "
                                  "(is it installed or on PYTHONPATH?)") from None
            raise
        _loaded.add(name)
        loaded.append(name)
    return loaded
