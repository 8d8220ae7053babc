"""Build the method named in a run configuration around a backbone."""

from __future__ import annotations

from torch import nn

from relssl.config import RunConfig
from relssl.methods.base import Method
from relssl.methods.relational import RelationalReasoning


def create_method(config: RunConfig, backbone: nn.Module) -> Method:
    """Return the configured method; the config has already validated the name."""
    if config.method == "relational":
        rel = config.relational
        return RelationalReasoning(
            backbone,
            aggregation=rel.aggregation,
            gamma=rel.gamma,
            head_hidden=rel.head_hidden,
            use_labels=rel.labelled_fraction > 0,
        )
    raise ValueError(f"unknown method {config.method!r}")
