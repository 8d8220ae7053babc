"""Self-supervised methods, one file each, built by `create_method`."""

from relssl.methods.base import EpochContext, Method, StepOutput
from relssl.methods.factory import create_method

__all__ = ["EpochContext", "Method", "StepOutput", "create_method"]
