"""Self-supervised methods, one file each; each registers itself with `@register_method`.

The imports below make the built-in methods known, in the order `relssl train --help` lists
them: paper 1's (Relational Reasoning and its Table 1 baselines), then paper 2's (RCL and its).
"""

# isort: off
from relssl.methods import relational, simclr, rotnet, deepcluster, dim, supervised  # noqa: F401  (they register)
from relssl.methods import rcl, mocov2, mocov3, byol, simsiam, nnclr  # noqa: F401
# isort: on
from relssl.methods.base import EpochContext, Method, StepOutput, TrainingSet
from relssl.methods.registry import METHODS, MethodSpec, create_method, register_method

__all__ = ["METHODS", "EpochContext", "Method", "MethodSpec", "StepOutput", "TrainingSet", "create_method",
           "register_method"]
