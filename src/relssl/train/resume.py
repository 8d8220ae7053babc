"""What a resumed run may change: its saved config plus overrides that leave the model as it was."""

from __future__ import annotations

from typing import Any

from relssl.dicts import flatten
from relssl.errors import ConfigError
from relssl.methods import METHODS
from relssl.train.config import RunConfig, build_config

__all__ = ["MODEL_SECTIONS", "model_change", "resume_config"]

#: Override keys that may change the trained model: refused on resume unless they keep the saved value.
MODEL_SECTIONS = ("method", "backbone")


def _touches_model(key: str) -> bool:
    """Whether the dotted override `key` sets part of the model: the method, backbone, a method's section, the optimizer."""
    head = key.split(".", 1)[0]
    return head in MODEL_SECTIONS or head in METHODS or key in ("optim", "optim.name")


def model_change(saved: RunConfig, resumed: RunConfig) -> tuple[str, Any, Any] | None:
    """The first (key, saved value, new value) where `resumed` trains another model than `saved`, else None.

    The model is the method, every `backbone.*` key, every key of the method's own section, and
    `optim.name` (another optimizer cannot continue from the saved optimizer state).
    """
    if saved.method != resumed.method:
        return "method", saved.method, resumed.method
    old, new = saved.to_dict(), resumed.to_dict()
    for section in ("backbone", saved.method):
        before, after = flatten(old.get(section) or {}, f"{section}."), flatten(new.get(section) or {}, f"{section}.")
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                return key, before.get(key), after.get(key)
    if saved.optim.name != resumed.optim.name:
        return "optim.name", saved.optim.name, resumed.optim.name
    return None


def resume_config(checkpoint: dict[str, Any], overrides: dict[str, Any]) -> RunConfig:
    """The config a resumed run continues with: its saved settings plus explicit overrides.

    Overrides may change the schedule (train.*), evaluation (eval.*), data and device settings;
    one that changes the model (see `model_change`) is a ConfigError naming the key. Older
    checkpoints carry every method's section; the ones this run does not use are dropped.
    """
    config = build_config(checkpoint["config"], overrides, check_other_methods=False)
    kept = {key: value for key, value in overrides.items() if not _touches_model(key)}
    saved = build_config(checkpoint["config"], kept, check_other_methods=False)
    change = model_change(saved, config)
    if change is not None:
        key, before, after = change
        raise ConfigError(f"config key '{key}': the run was trained with {before!r}, not {after!r}; a resumed run keeps "
                          "its model (method, backbone, the method's section, optim.name): drop the option, or start "
                          "a new run")
    return config


