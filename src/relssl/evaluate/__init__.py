"""Evaluation protocols on frozen features: extraction with a cache, linear evaluation, metrics."""

from relssl.evaluate.cache import FeatureCache
from relssl.evaluate.features import extract_features
from relssl.evaluate.linear import LinearEvalConfig, LinearEvalResult, linear_evaluation
from relssl.evaluate.metrics import topk_accuracy, topk_correct

__all__ = [
    "FeatureCache",
    "LinearEvalConfig",
    "LinearEvalResult",
    "extract_features",
    "linear_evaluation",
    "topk_accuracy",
    "topk_correct",
]
