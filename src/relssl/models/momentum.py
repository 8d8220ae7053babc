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
    """A frozen copy of a module, updated as theta_t <- m theta_t + (1 - m) theta_online.

    Buffers (BatchNorm running statistics) are copied, not averaged, as MoCo and BYOL do.
    The copy is a submodule of the method, so checkpoints carry it and resume continues it.
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
        """One EMA step towards `online` (same architecture)."""
        target_params: list[torch.Tensor] = list(self.target.parameters())
        online_params: list[torch.Tensor] = list(online.parameters())
        if len(target_params) != len(online_params):
            raise ValueError("MomentumCopy.update: online module does not match the target's architecture")
        torch._foreach_lerp_(target_params, [p.detach() for p in online_params], 1.0 - momentum)
        torch._foreach_copy_(list(self.target.buffers()), list(online.buffers()))
