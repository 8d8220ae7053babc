"""Deep InfoMax, local variant with prior matching: DIM(L) of Hjelm et al. (2019).

The Relational Reasoning paper's baseline runs DIM with alpha = 0 (no global MI term),
beta = 1 (local MI) and gamma = 0.1 (prior matching). The local MI is estimated with the
Jensen-Shannon bound of DIM Eq. 4 over scores from the "encoder-and-dot-product"
architecture: a 1x1-conv local encoder and an MLP global encoder map feature-map positions
and the global vector into a shared space, and a score is their dot product.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def jsd_mi(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon MI estimate of DIM Eq. 4: E_P[-sp(-T)] - E_N[sp(T)], sp = softplus.

    Means over all positive and all negative scores. This is the paper's form; the DIM code
    (cortex_DIM `gan_losses`) adds log 2 to each expectation, a constant 2 log 2 that changes
    no gradient. Computed in float32.
    """
    positive_scores, negative_scores = positive_scores.float(), negative_scores.float()
    return -F.softplus(-positive_scores).mean() - F.softplus(negative_scores).mean()


def local_global_scores(global_emb: torch.Tensor, local_emb: torch.Tensor) -> torch.Tensor:
    """Scores T[i, j, l] = <g_i, m_{j,l}> between global embedding i and position l of image j.

    `global_emb` is (B, e); `local_emb` is (B, e, h, w) or (B, e, L). Returns (B, B, L) float32.
    """
    if global_emb.dim() != 2:
        raise ValueError(f"global_emb must be (B, e); got {tuple(global_emb.shape)}")
    if local_emb.dim() == 4:
        local_emb = local_emb.flatten(2)
    if local_emb.dim() != 3 or local_emb.shape[:2] != global_emb.shape:
        raise ValueError(
            f"local_emb must be (B, e, h, w) or (B, e, L) matching global_emb {tuple(global_emb.shape)}; "
            f"got {tuple(local_emb.shape)}"
        )
    with torch.autocast(device_type=global_emb.device.type, enabled=False):
        return torch.einsum("ie,jel->ijl", global_emb.float(), local_emb.float())


def jsd_mi_local(global_emb: torch.Tensor, local_emb: torch.Tensor) -> torch.Tensor:
    """Local JSD MI of DIM Eq. 6 with the estimator of Eq. 4, averaged over positions.

    Positives pair each image's global embedding with its own B*L positions; negatives pair
    it with the positions of the B - 1 other images in the batch (B(B-1)L scores). Returns
    E_P[-sp(-T)] - E_N[sp(T)], which is at most 0 and grows as the pairs become separable.
    """
    scores = local_global_scores(global_emb, local_emb)
    b = scores.shape[0]
    if b < 2:
        raise ValueError("jsd_mi_local needs at least 2 images in the batch to form negatives")
    same = torch.eye(b, dtype=torch.bool, device=scores.device)
    return jsd_mi(scores[same], scores[~same])


class _GradReverse(torch.autograd.Function):
    """Identity forward, negated gradient backward (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return -grad


def grad_reverse(x: torch.Tensor) -> torch.Tensor:
    """Return `x` unchanged; gradients flowing back through it change sign."""
    return _GradReverse.apply(x)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class LocalEncoder(nn.Module):
    """1x1-conv encoder of DIM's encoder-and-dot architecture: two convs with ReLU plus a linear 1x1 shortcut."""

    def __init__(self, in_channels: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, hidden_dim, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, embed_dim, 1),
        )
        self.shortcut = nn.Conv2d(in_channels, embed_dim, 1)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.block(m) + self.shortcut(m)


class GlobalEncoder(nn.Module):
    """Fully connected counterpart of LocalEncoder for the (B, d) global feature vector."""

    def __init__(self, in_features: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.block = _mlp([in_features, hidden_dim, embed_dim])
        self.shortcut = nn.Linear(in_features, embed_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.block(y) + self.shortcut(y)


class DIMOutput(NamedTuple):
    """Total loss to minimise and its parts (local MI estimate and prior discriminator loss)."""

    loss: torch.Tensor
    local_mi: torch.Tensor
    prior: torch.Tensor


class DIMHeads(nn.Module):
    """DIM(L) heads and loss: loss = -beta * I_JSD(local) + gamma * prior (Hjelm et al., 2019, Eq. 8).

    Holds the local and global encoders of the local MI estimator and the prior discriminator D
    (an MLP, hidden sizes `prior_hidden`, giving a logit). The prior term is D's binary cross-entropy
    for telling samples v ~ U[0,1]^d (label 1) from the global features y (label 0),
    prior = E_v[-log D(v)] + E_y[-log(1 - D(y))], i.e. minus the objective of Eq. 7.

    Sign handling with ONE optimizer over all parameters: Eq. 7 is a minimax -- D maximises
    log D(v) + log(1 - D(y)) while the encoder minimises it. Minimising `loss` over D's weights
    does the former (gamma * prior is D's cross-entropy); y reaches D through a gradient-reversal
    layer, so the encoder receives the negated gradient and pushes y towards what D calls prior
    (the saturating minimax generator update of Eq. 7). The reported `loss` therefore contains
    D's cross-entropy, not the encoder's objective, and need not fall as training progresses.
    (The Relational Reasoning reference code adds the same term without reversal, so its
    encoder helps D and moves y away from the prior.) The global MI term (alpha) is not
    implemented; the paper's baseline uses alpha = 0.
    """

    def __init__(
        self,
        global_dim: int,
        local_channels: int,
        embed_dim: int = 512,
        hidden_dim: int = 512,
        beta: float = 1.0,
        gamma: float = 0.1,
        prior_hidden: tuple[int, ...] = (1000, 200),
    ) -> None:
        super().__init__()
        for name, value in (("global_dim", global_dim), ("local_channels", local_channels),
                            ("embed_dim", embed_dim), ("hidden_dim", hidden_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if beta < 0 or gamma < 0:
            raise ValueError(f"beta and gamma must be >= 0; got beta={beta}, gamma={gamma}")
        self.beta = beta
        self.gamma = gamma
        self.local_encoder = LocalEncoder(local_channels, embed_dim, hidden_dim)
        self.global_encoder = GlobalEncoder(global_dim, embed_dim, hidden_dim)
        self.prior_discriminator = _mlp([global_dim, *prior_hidden, 1])

    def local_mi(self, global_features: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
        """JSD estimate of the local MI between y (B, d) and feature map M (B, c, h, w)."""
        return jsd_mi_local(self.global_encoder(global_features), self.local_encoder(local_features))

    def prior_loss(self, global_features: torch.Tensor, prior_samples: torch.Tensor | None = None) -> torch.Tensor:
        """D's cross-entropy E_v[sp(-D(v))] + E_y[sp(D(y))] (logit form), y through gradient reversal.

        `prior_samples` defaults to fresh draws from U[0,1]^d shaped like `global_features`.
        """
        if prior_samples is None:
            prior_samples = torch.rand_like(global_features, dtype=torch.float32)
        elif prior_samples.shape != global_features.shape:
            raise ValueError(
                f"prior_samples must match global_features {tuple(global_features.shape)}; "
                f"got {tuple(prior_samples.shape)}"
            )
        with torch.autocast(device_type=global_features.device.type, enabled=False):
            real = self.prior_discriminator(prior_samples.float())
            fake = self.prior_discriminator(grad_reverse(global_features.float()))
            return F.softplus(-real).mean() + F.softplus(fake).mean()

    def forward(
        self,
        global_features: torch.Tensor,
        local_features: torch.Tensor,
        prior_samples: torch.Tensor | None = None,
    ) -> DIMOutput:
        """Return DIMOutput(loss = -beta * local_mi + gamma * prior, local_mi, prior)."""
        mi = self.local_mi(global_features, local_features)
        if self.gamma > 0:
            prior = self.prior_loss(global_features, prior_samples)
        else:
            prior = mi.new_zeros(())
        loss = -self.beta * mi + self.gamma * prior
        return DIMOutput(loss, mi, prior)
