"""Evaluation protocols on frozen features (linear, kNN, retrieval, t-SNE) and finetuning.

They need backbones and data only, never methods or the trainer: features with a cache, the
linear probe and its config, the protocols a run ends with (`evaluate_backbones`), metrics.
"""

from relssl.evaluate.cache import FeatureCache
from relssl.evaluate.config import EvalConfig, FinetuneConfig, LinearEvalConfig
from relssl.evaluate.data import EvalData, StreamedEvalData, eval_splits, open_eval_data
from relssl.evaluate.features import extract_features
from relssl.evaluate.finetune import finetune
from relssl.evaluate.linear import LinearEvalResult, linear_evaluation
from relssl.evaluate.metrics import topk_accuracy, topk_correct
from relssl.evaluate.protocols import PROTOCOLS, EvalContext, ScoredBackbone, evaluate_backbones, evaluate_linear

__all__ = [
    "PROTOCOLS",
    "EvalConfig",
    "EvalContext",
    "EvalData",
    "StreamedEvalData",
    "FeatureCache",
    "FinetuneConfig",
    "LinearEvalConfig",
    "LinearEvalResult",
    "ScoredBackbone",
    "eval_splits",
    "evaluate_backbones",
    "evaluate_linear",
    "extract_features",
    "finetune",
    "linear_evaluation",
    "open_eval_data",
    "topk_accuracy",
    "topk_correct",
]
