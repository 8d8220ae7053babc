"""Pretraining optimizers (Adam, AdamW, SGD-Nesterov, LARS), their config section and the per-step lr schedule.

A bottom helper: the linear probe (relssl.evaluate) uses `lars` and `lr_factor` too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from relssl.config import Section

__all__ = ["OptimConfig", "build_optimizer", "build_scheduler", "lars", "lr_factor"]


class OptimConfig(Section):
    """Optimizer and lr schedule of the pretraining stage (paper 1: Adam, lr 1e-3, constant).

    Paper 2 (RCL) uses LARS, base lr 0.3 at batch 4096, weight decay 1e-6, 10 warm-up epochs and
    a cosine schedule; `lr` here is the lr actually used (scale it yourself, e.g. 0.3 * M / 256).
    """

    name: Literal["adam", "sgd", "adamw", "lars"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["constant", "cosine"] = "constant"  # per step, after the warm-up
    warmup_epochs: float = Field(default=0.0, ge=0)  # linear warm-up from lr/warmup_steps to lr
    trust_coefficient: float = Field(default=0.001, gt=0)  # LARS eta
    exclude_bias_norm: bool | None = None  # no weight decay (and no LARS adaptation) on biases/BN; None: on for lars only

    def excludes_bias_norm(self) -> bool:
        """Whether biases and norm parameters skip weight decay (default: only under LARS)."""
        return self.name == "lars" if self.exclude_bias_norm is None else self.exclude_bias_norm


def _param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                  exclude_1d: bool) -> list[dict[str, Any]]:
    """Split parameters into decayed and not-decayed groups (biases and norm scales when `exclude_1d`)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in named:
        if not param.requires_grad:
            continue
        (no_decay if exclude_1d and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(opt: OptimConfig, module: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named in `optim` over the module's trainable parameters.

    LARS is timm's implementation (a well-kept one). As in BYOL / MoCo v3 / RCL, biases and
    BatchNorm parameters get no weight decay and, because timm only adapts parameters with
    weight decay, no layer-wise adaptation either (`optim.exclude_bias_norm`, on by default
    for LARS). The decayed group sets timm's `always_adapt`, so LARS still adapts the weights when
    `optim.weight_decay` is 0 (otherwise timm would silently run plain SGD with momentum).
    """
    groups = _param_groups(module.named_parameters(), opt.weight_decay, opt.excludes_bias_norm())
    if opt.name == "lars":
        return lars(groups, lr=opt.lr, momentum=opt.momentum, trust_coeff=opt.trust_coefficient)
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=opt.lr)
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr)
    return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, nesterov=True)


def lars(groups: list[dict[str, Any]], *, lr: float, momentum: float, trust_coeff: float,
         nesterov: bool = False) -> torch.optim.Optimizer:
    """timm's LARS in which the first group (the weights) is always adapted, the others (biases, norms) never.

    timm adapts a group only when it has weight decay or `always_adapt`; without the flag a run
    with weight decay 0 would silently be SGD with momentum.
    """
    from timm.optim import Lars

    groups = [dict(g, always_adapt=(i == 0)) for i, g in enumerate(groups)]
    return Lars(groups, lr=lr, momentum=momentum, nesterov=nesterov, trust_coeff=trust_coeff)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at `step` (0-based): linear warm-up, then constant or cosine to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(opt: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule from `optim.schedule` and `optim.warmup_epochs` (paper 2: 10 warm-up epochs, cosine)."""
    warmup = min(total_steps, round(opt.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, opt.schedule)
    )
