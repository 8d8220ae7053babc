"""Momentum (EMA) target networks for MoCo / BYOL / NNCLR / RCL key encoders."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_at(base: float, progress: float, schedule: str = "cosine") -> float:
    """EMA coefficient at training progress in [0, 1].

    `cosine` is BYOL's schedule, m = 1 - (1 - base) (cos(pi p) + 1) / 2, rising from `base` to 1;
    `constant` keeps `base` (MoCo v2).
    """
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown momentum schedule {schedule!r}; choose 'cosine' or 'constant'")
    p = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * p) + 1.0) / 2.0


class MomentumCopy(nn.Module):
    """A frozen copy of a module whose parameters follow theta_t <- m theta_t + (1 - m) theta_online.

    Only parameters are averaged. Buffers (BatchNorm running statistics, num_batches_tracked) are
    the copy's own: they start as the online module's at construction and then move only with the
    copy's own forward passes in train mode, as in MoCo's official code (the EMA loops over
    `parameters()`) and BYOL's (a separate `target_state`). The copy is a submodule of the method,
    so checkpoints carry its parameters and buffers and resume continues both.
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.target = copy.deepcopy(online)
        for param in self.target.parameters():
            param.requires_grad_(False)

    def forward(self, *args, **kwargs):
        return self.target(*args, **kwargs)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """One EMA step of the parameters towards `online` (same architecture); buffers are left as they are."""
        target_params: list[torch.Tensor] = list(self.target.parameters())
        online_params: list[torch.Tensor] = list(online.parameters())
        if len(target_params) != len(online_params):
            raise ValueError("MomentumCopy.update: online module does not match the target's architecture")
        torch._foreach_lerp_(target_params, [p.detach() for p in online_params], 1.0 - momentum)
