"""The evaluation a run ends with: each protocol scores a backbone and names its metrics.

`evaluate_backbones` runs the configured protocol (`eval.protocol`: linear, finetune or semi) on
every given backbone (the learned one, and its random initialisation when asked) and returns the
metrics `relssl train` writes: `<protocol>_top1`, `random_init_<protocol>_top1`, ... Adding a
protocol is one function in `PROTOCOLS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from relssl.errors import ConfigError
from relssl.evaluate.cache import FeatureCache
from relssl.evaluate.config import EvalConfig, FinetuneConfig, LinearEvalConfig
from relssl.evaluate.data import EvalData, StreamedEvalData
from relssl.evaluate.finetune import finetune
from relssl.evaluate.keys import feature_identity, feature_key
from relssl.evaluate.linear import LinearEvalResult, linear_evaluation
from relssl.evaluate.subset import balanced_subset

__all__ = ["PROTOCOLS", "EvalContext", "ScoredBackbone", "evaluate_backbones", "evaluate_linear", "readable_rows"]

Log = Callable[[str], None]


def evaluate_linear(
    backbone: nn.Module,
    data: EvalData | StreamedEvalData,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    config: LinearEvalConfig,
    device: torch.device,
    cache: FeatureCache | None = None,
    cache_key: str | None = None,  # a readable prefix of the cache keys
    size: int | None = None,
    feature_batch_size: int = 512,
    progress: bool = True,
    seed: int = 0,
) -> LinearEvalResult:
    """Extract (or reuse cached) frozen features of both splits, then fit and score a linear layer."""
    feats = {}
    for split_name in ("train", "test"):
        def compute(name: str = split_name) -> torch.Tensor:
            return data.features(backbone, name, mean=mean, std=std, size=size, batch_size=feature_batch_size,
                                 device=device, progress=progress)

        if cache is None:
            feats[split_name] = compute()
        else:  # keyed by the weights, the images and the transform (relssl.evaluate.keys)
            identity = feature_identity(backbone, data, split_name, mean=mean, std=std, size=size)
            key = feature_key(cache_key or "features", split_name, identity)
            feats[split_name] = cache.get_or_compute(key, compute, identity)
    (train_x, train_y, lost_train), (test_x, test_y, lost_test) = (
        readable_rows(feats[name], data.labels(name)) for name in ("train", "test"))
    result = linear_evaluation(train_x, train_y, test_x, test_y, config, num_classes=data.num_classes, device=device,
                               progress=progress, seed=seed)
    result.unreadable = lost_train + lost_test
    return result


def readable_rows(features: torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The rows of images that could be read (streamed features of unreadable files are NaN), and how many were not."""
    keep = torch.isfinite(features).all(dim=1)
    return features[keep], torch.from_numpy(np.array(labels, dtype=np.int64))[keep], int((~keep).sum())


@dataclass(frozen=True)
class ScoredBackbone:
    """A backbone to evaluate: its metrics prefix ("" or "random_init_") and a feature-cache tag."""

    backbone: nn.Module
    prefix: str
    cache_tag: str

    @property
    def who(self) -> str:
        return "random-init backbone" if self.prefix else "learned backbone"


@dataclass(frozen=True)
class EvalContext:
    """Everything a protocol needs besides the backbone: settings, data, normalisation, device."""

    config: EvalConfig
    finetune: FinetuneConfig
    data: EvalData | StreamedEvalData
    dataset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None
    device: torch.device
    cache: FeatureCache | None
    seed: int
    progress: bool
    log: Log


def _linear(item: ScoredBackbone, ctx: EvalContext) -> dict[str, float]:
    """Linear probe on raw features (the paper's protocol) and, with eval.report_standardized, z-scored ones."""
    ev = ctx.config
    variants = [("", ev.standardize)]
    if ev.report_standardized and not ev.standardize:
        variants.append(("std_", True))
    out: dict[str, float] = {}
    for suffix, standardize in variants:
        result = evaluate_linear(
            item.backbone, ctx.data, mean=ctx.mean, std=ctx.std, config=ev.model_copy(update={"standardize": standardize}),
            device=ctx.device, cache=ctx.cache, cache_key=f"{item.cache_tag}-{ctx.dataset}", size=ctx.size,
            feature_batch_size=ev.feature_batch_size, progress=ctx.progress, seed=ctx.seed,
        )
        out[f"{suffix}top1"] = result.top1
        if result.top5 is not None:
            out[f"{suffix}top5"] = result.top5
        if result.unreadable:
            out["unreadable_images"] = result.unreadable
        kind = "standardised" if standardize else "raw"
        ctx.log(f"linear evaluation ({kind} features), {item.who}: top-1 {result.top1:.2f}%")
    return out


def _arrays(ctx: EvalContext) -> EvalData:
    """The decoded splits the finetuning protocols train on (they augment whole images in memory)."""
    if not isinstance(ctx.data, EvalData):
        raise ConfigError(f"eval.protocol={ctx.config.protocol} finetunes on decoded images; it does not run on "
                          "streamed data (data.stream): use eval.protocol=linear, or set data.stream=false")
    return ctx.data


def _semi_subset(ctx: EvalContext) -> tuple[np.ndarray, np.ndarray]:
    """The class-balanced labelled subset of the semi-supervised protocol (paper 2, Table 2)."""
    ev, train = ctx.config, _arrays(ctx).train
    index = balanced_subset(np.asarray(train.labels), ev.label_fraction, ev.subset_seed)
    return np.asarray(train.images[index]), np.asarray(train.labels)[index]


def _finetune_config(ctx: EvalContext) -> FinetuneConfig:
    """The finetune settings; semi shrinks the batch when its subset is smaller than one."""
    if ctx.config.protocol != "semi":
        return ctx.finetune
    labelled = len(balanced_subset(ctx.data.labels("train"), ctx.config.label_fraction, ctx.config.subset_seed))
    return ctx.finetune.model_copy(update={"batch_size": min(ctx.finetune.batch_size, labelled)})


def _finetune(item: ScoredBackbone, ctx: EvalContext) -> dict[str, float]:
    """The whole network trained on the labelled split (`semi`: on its balanced subset)."""
    protocol = ctx.config.protocol
    data = _arrays(ctx)
    images, labels = data.train.images, data.train.labels
    if protocol == "semi":
        images, labels = _semi_subset(ctx)
    result = finetune(
        item.backbone, images, labels, data.test.images, data.test.labels,
        num_classes=data.num_classes, mean=ctx.mean, std=ctx.std, device=ctx.device,
        config=_finetune_config(ctx), seed=ctx.seed, progress=ctx.progress, top5=True if protocol == "semi" else None,
    )
    ctx.log(f"{protocol} evaluation, {item.who}: top-1 {result['top1']:.2f}%")
    return result


#: protocol name -> function scoring one backbone; its keys are prefixed with "<protocol>_".
PROTOCOLS: dict[str, Callable[[ScoredBackbone, EvalContext], Mapping[str, float]]] = {
    "linear": _linear, "finetune": _finetune, "semi": _finetune,
}


def evaluate_backbones(backbones: list[ScoredBackbone], ctx: EvalContext) -> dict[str, Any]:
    """Run `eval.protocol` on every backbone; the metrics and a record of the protocol's settings."""
    ev = ctx.config
    out: dict[str, Any] = {"eval_dataset": ctx.dataset, "eval_protocol": ev.protocol}
    if ev.protocol == "semi":
        n = len(_semi_subset(ctx)[1])
        out.update(semi_label_fraction=ev.label_fraction, semi_labelled_images=n, semi_subset_seed=ev.subset_seed)
        ctx.log(f"semi-supervised subset: {n} of {ctx.data.size('train')} labelled images "
                f"({ev.label_fraction:g} of every class, subset seed {ev.subset_seed})")
    score = PROTOCOLS[ev.protocol]
    for item in backbones:
        out.update({f"{item.prefix}{ev.protocol}_{k}": v for k, v in score(item, ctx).items()})
    if ev.protocol == "linear":
        out["linear_protocol"] = ev.protocol_summary()
    else:
        out["finetune_protocol"] = _finetune_config(ctx).model_dump()
    return out
