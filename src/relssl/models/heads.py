"""Heads that sit on top of a backbone: the Relational Reasoning relation module and an MLP projector."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class RelationHead(nn.Module):
    """Relation module r_phi of Relational Reasoning (Patacchiola & Storkey 2020, §3 and §4).

    Linear(in_dim -> hidden) - BatchNorm1d - LeakyReLU - Linear(hidden -> 1), as in the reference
    code's ``relation_module`` (``nn.LeakyReLU()``, i.e. slope 0.01; submodule names ``linear1``,
    ``bn1``, ``linear2`` match its checkpoints). ``in_dim`` is 2d for ``cat`` aggregation of
    d-dimensional features and d for sum/mean/max. ``forward`` returns one LOGIT per pair, shape
    (P,): the sigmoid belongs to the (focal) BCE loss, which is numerically stabler on logits.
    The BatchNorm normalises over the P pairs, so in training mode a score depends on the other
    pairs of the batch (and P must be > 1).
    """

    def __init__(self, in_dim: int, hidden: int = 256, negative_slope: float = 0.01) -> None:
        super().__init__()
        if in_dim < 1 or hidden < 1:
            raise ValueError(f"RelationHead needs in_dim >= 1 and hidden >= 1, got {in_dim}, {hidden}")
        self.in_dim = in_dim
        self.linear1 = nn.Linear(in_dim, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.act = nn.LeakyReLU(negative_slope)
        self.linear2 = nn.Linear(hidden, 1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Score aggregated pairs (P, in_dim) -> logits (P,)."""
        if pairs.dim() != 2 or pairs.shape[1] != self.in_dim:
            raise ValueError(f"RelationHead expects pairs of shape (P, {self.in_dim}), got {tuple(pairs.shape)}")
        return self.linear2(self.act(self.bn1(self.linear1(pairs)))).squeeze(-1)


class ProjectionMLP(nn.Sequential):
    """MLP projector/predictor: (Linear-BN-ReLU) per hidden width, then Linear to ``out_dim`` [+ BN].

    Covers SimCLR's projector (Chen et al. 2020), MoCo v3 / RCL's [2048, 2048, 256] projector
    (fc-BN-ReLU, fc-BN-ReLU, fc-BN, Tang et al. 2022) and their predictors. Linears followed by BN
    have no bias (BN's shift makes it redundant); ``last_bn_affine=False`` gives the final BN of MoCo v3's
    and SimSiam's official heads (no learnable scale or shift; the hidden BNs keep theirs).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        last_bn: bool = False,
        last_bn_affine: bool = True,
    ) -> None:
        dims = [in_dim, *hidden_dims, out_dim]
        if any(d < 1 for d in dims):
            raise ValueError(f"ProjectionMLP widths must be >= 1, got {dims}")
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(d_in, d_out, bias=False), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(dims[-2], out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim
