"""Deep InfoMax (Hjelm et al., 2019): local and global JSD mutual-information terms plus prior matching.

Two discriminator architectures score a pair (global vector y, local feature map M):
"concat" -- the Relational Reasoning reference code's: y is tiled over M's positions,
concatenated with M along channels and scored by a 1x1-conv MLP (local term), and a second
discriminator scores y against a convolved, pooled summary of M (global term); "dot" -- DIM's
"encoder-and-dot-product": a 1x1-conv local encoder and an MLP global encoder map positions and
y into a shared space, a score is their dot product. Negatives pair y_i with the map of another
image: "roll" (M_{i+1 mod B}, the reference code's rolled batch) or "all" (every j != i).
The MI is estimated with the Jensen-Shannon bound of DIM Eq. 4.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import nn

Negatives = Literal["roll", "all"]
NEGATIVES: tuple[str, ...] = get_args(Negatives)
Discriminator = Literal["concat", "dot"]
DISCRIMINATORS: tuple[str, ...] = get_args(Discriminator)


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


def negative_pairs(b: int, negatives: str, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index vectors (i, j): negative k pairs global vector i with local map j.

    "roll": j = i + 1 mod B, the reference code's M' = cat(M[1:], M[:1]) (B pairs); "all": every
    j != i in row-major order (B(B-1) pairs).
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}; got {negatives!r}")
    if b < 2:
        raise ValueError("Deep InfoMax needs at least 2 images in the batch to form negatives")
    i = torch.arange(b, device=device)
    if negatives == "roll":
        return i, (i + 1) % b
    i, j = i.repeat_interleave(b), i.repeat(b)
    keep = i != j
    return i[keep], j[keep]


def jsd_mi_local(global_emb: torch.Tensor, local_emb: torch.Tensor, negatives: str = "all") -> torch.Tensor:
    """Local JSD MI of DIM Eq. 6 with the estimator of Eq. 4, dot-product scores, averaged over positions.

    Positives pair each image's global embedding with its own L positions; negatives pair it with
    the positions of the images `negative_pairs` names ("all": the B - 1 others, B(B-1)L scores).
    Returns E_P[-sp(-T)] - E_N[sp(T)], which is at most 0 and grows as the pairs become separable.
    """
    scores = local_global_scores(global_emb, local_emb)
    i, j = negative_pairs(scores.shape[0], negatives, scores.device)
    return jsd_mi(scores.diagonal().T, scores[i, j])


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


def _split_first_layer(first: nn.Linear, sizes: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight columns acting on each part of a concatenated input [a; b] of sizes (|a|, |b|)."""
    wa, wb = first.weight.split(list(sizes), dim=1)
    return wa, wb


def _score_head(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class ConcatLocalDiscriminator(nn.Module):
    """Scores T(y, m_l) = MLP([m_l; y]) at every position l: a 1x1-conv net (c+d -> h -> h -> 1), ReLUs.

    The first layer acts on the concatenation, computed as W_m m_l + W_y y + b, which is exactly the
    same number without tiling y over the map; a negative reuses W_m m_l of another image.
    """

    def __init__(self, global_dim: int, local_channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.sizes = (local_channels, global_dim)
        self.first = nn.Linear(local_channels + global_dim, hidden)  # a 1x1 conv over [M; y tiled]
        self.head = _score_head(hidden)

    def forward(self, y: torch.Tensor, m: torch.Tensor, negatives: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive scores (B, L), negative scores (N, L)) for y (B, d) and M (B, c, h, w)."""
        w_m, w_y = _split_first_layer(self.first, self.sizes)
        a_y = F.linear(y, w_y, self.first.bias)[:, None]  # (B, 1, hidden)
        a_m = F.linear(m.flatten(2).transpose(1, 2), w_m)  # (B, L, hidden)
        i, j = negative_pairs(y.shape[0], negatives, y.device)
        return self.head(a_y + a_m).squeeze(-1), self.head(a_y[i] + a_m[j]).squeeze(-1)


class ConcatGlobalDiscriminator(nn.Module):
    """Scores T(y, M) for the global MI term: two unpadded 3x3 convs on M (`channels`, reference
    (64, 32), ReLU between), adaptive average pooling to `pooled` x `pooled`, then an MLP
    (h, h, 1) on [y; summary]. Needs a map of at least 5x5. The first linear layer is split as in
    ConcatLocalDiscriminator.
    """

    def __init__(
        self, global_dim: int, local_channels: int, hidden: int = 256, pooled: int = 16,
        channels: tuple[int, int] = (64, 32),
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.summary = nn.Sequential(
            nn.Conv2d(local_channels, c1, kernel_size=3), nn.ReLU(), nn.Conv2d(c1, c2, kernel_size=3),
            nn.AdaptiveAvgPool2d(pooled), nn.Flatten(),
        )
        self.sizes = (global_dim, c2 * pooled * pooled)
        self.first = nn.Linear(sum(self.sizes), hidden)
        self.head = _score_head(hidden)

    def forward(self, y: torch.Tensor, m: torch.Tensor, negatives: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive scores (B,), negative scores (N,)) for y (B, d) and M (B, c, h, w)."""
        if min(m.shape[-2:]) < 5:
            raise ValueError(f"the global discriminator needs a local map of at least 5x5; got {tuple(m.shape[-2:])}")
        w_y, w_h = _split_first_layer(self.first, self.sizes)
        a_y = F.linear(y, w_y, self.first.bias)
        a_h = F.linear(self.summary(m), w_h)  # a rolled map's summary is the rolled summary
        i, j = negative_pairs(y.shape[0], negatives, y.device)
        return self.head(a_y + a_h).squeeze(-1), self.head(a_y[i] + a_h[j]).squeeze(-1)


class DIMOutput(NamedTuple):
    """Total loss to minimise and its parts (local and global MI estimates, prior discriminator loss)."""

    loss: torch.Tensor
    local_mi: torch.Tensor
    prior: torch.Tensor
    global_mi: torch.Tensor


class DIMHeads(nn.Module):
    """DIM heads and loss: loss = -beta * I_local - alpha * I_global + gamma * prior (Hjelm et al., 2019, Eq. 8).

    `discriminator` picks the local MI scorer ("dot": LocalEncoder/GlobalEncoder and dot products,
    `embed_dim`/`hidden_dim`; "concat": ConcatLocalDiscriminator of width `concat_hidden`) and
    `negatives` the negative pairs ("all" or "roll", see `negative_pairs`). alpha > 0 adds the
    global term scored by ConcatGlobalDiscriminator (width `concat_hidden`, convs `global_channels`). The defaults (dot, all, alpha = 0) are DIM(L);
    the Relational Reasoning reference code uses concat, roll, alpha = 0.5.

    The prior discriminator D (an MLP, hidden sizes `prior_hidden`, giving a logit) is trained by
    its binary cross-entropy for telling samples v ~ U[0,1]^d (label 1) from the global features y
    (label 0), prior = E_v[-log D(v)] + E_y[-log(1 - D(y))], i.e. minus the objective of Eq. 7.
    Sign handling with ONE optimizer: y reaches D through a gradient-reversal layer, so minimising
    `loss` trains D while the encoder receives the negated gradient and pushes y towards what D
    calls prior (the minimax of Eq. 7). The reported `loss` therefore contains D's cross-entropy
    and need not fall. (The Relational Reasoning reference code adds the same term without
    reversal, so its encoder helps D and moves y away from the prior.)
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
        *,
        alpha: float = 0.0,
        discriminator: str = "dot",
        negatives: str = "all",
        concat_hidden: int = 256,
        global_channels: tuple[int, int] = (64, 32),
    ) -> None:
        super().__init__()
        for name, value in (("global_dim", global_dim), ("local_channels", local_channels),
                            ("embed_dim", embed_dim), ("hidden_dim", hidden_dim), ("concat_hidden", concat_hidden),
                            *zip(("global_channels[0]", "global_channels[1]"), global_channels)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        if alpha < 0 or beta < 0 or gamma < 0:
            raise ValueError(f"alpha, beta and gamma must be >= 0; got alpha={alpha}, beta={beta}, gamma={gamma}")
        if discriminator not in DISCRIMINATORS or negatives not in NEGATIVES:
            raise ValueError(f"discriminator must be one of {DISCRIMINATORS} and negatives one of {NEGATIVES}; "
                             f"got {discriminator!r}, {negatives!r}")
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.discriminator, self.negatives = discriminator, negatives
        if discriminator == "dot":
            self.local_encoder = LocalEncoder(local_channels, embed_dim, hidden_dim)
            self.global_encoder = GlobalEncoder(global_dim, embed_dim, hidden_dim)
        else:
            self.local_discriminator = ConcatLocalDiscriminator(global_dim, local_channels, concat_hidden)
        if alpha > 0:
            self.global_discriminator = ConcatGlobalDiscriminator(global_dim, local_channels, concat_hidden,
                                                                  channels=global_channels)
        self.prior_discriminator = _mlp([global_dim, *prior_hidden, 1])

    def local_mi(self, global_features: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
        """JSD estimate of the local MI between y (B, d) and feature map M (B, c, h, w)."""
        if self.discriminator == "dot":
            return jsd_mi_local(self.global_encoder(global_features), self.local_encoder(local_features),
                                self.negatives)
        return jsd_mi(*self.local_discriminator(global_features, local_features, self.negatives))

    def global_mi(self, global_features: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
        """JSD estimate of the global MI between y (B, d) and the whole map M (needs alpha > 0)."""
        return jsd_mi(*self.global_discriminator(global_features, local_features, self.negatives))

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
        """Return DIMOutput(loss = -beta * local_mi - alpha * global_mi + gamma * prior, parts...)."""
        zero = global_features.new_zeros((), dtype=torch.float32)
        mi = self.local_mi(global_features, local_features) if self.beta > 0 else zero
        gmi = self.global_mi(global_features, local_features) if self.alpha > 0 else zero
        prior = self.prior_loss(global_features, prior_samples) if self.gamma > 0 else zero
        loss = -self.beta * mi - self.alpha * gmi + self.gamma * prior
        return DIMOutput(loss, mi, prior, gmi)
