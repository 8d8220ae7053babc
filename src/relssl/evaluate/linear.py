"""Linear evaluation (paper §4, after Kolesnikov et al. 2019): a linear layer on frozen, cached features.

Protocol: features of the labelled train and test splits are extracted once without augmentation;
a linear layer is trained for 100 epochs with Adam (lr 1e-3, batch 128) and cross-entropy; top-1
(and top-5 for more than 10 classes) on the test split is the score. Paper 2's recipe (RCL §5.2:
90 epochs, LARS with Nesterov momentum 0.9, cosine-annealed lr 1 at batch 4096) is the same probe
with ``optimizer="lars"``, ``schedule="cosine"`` and ``lr_reference_batch=4096``; see
docs/protocols/paper2.md.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from relssl.evaluate.config import LinearEvalConfig
from relssl.evaluate.metrics import topk_correct
from relssl.optim import lars, lr_factor
from relssl.progress import Progress

__all__ = ["LinearEvalConfig", "LinearEvalResult", "cosine_lr", "linear_evaluation"]

_EVAL_CHUNK = 8192  # rows per forward pass when scoring a split; bounds the (rows, classes) logits
LARS_TRUST_COEFF = 1e-3  # timm's default eta, as in SimCLR / BYOL / NNCLR's LARS


@dataclass
class LinearEvalResult:
    """Accuracies in percent; ``top5`` is ``None`` when not reported (see ``LinearEvalConfig.top5``)."""

    top1: float
    top5: float | None
    train_top1: float
    epochs: int
    num_classes: int
    feature_dim: int
    unreadable: int = 0  # images left out because their files could not be read (streamed data)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict, ready for JSON or YAML."""
        return asdict(self)


def _check_split(name: str, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    features, labels = torch.as_tensor(features), torch.as_tensor(labels)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{name}_features must have shape (N, feature_dim) with N >= 1, got {tuple(features.shape)}")
    if not (features.is_floating_point() and torch.isfinite(features).all()):
        raise ValueError(f"{name}_features must be finite floating-point values (found {features.dtype} or NaN/inf)")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"{name}_labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}_labels must be integer class indices, got {labels.dtype}")
    if (labels < 0).any():
        count = int((labels < 0).sum())
        raise ValueError(
            f"{name}_labels has {count} negative label(s) (-1 marks unlabeled samples); "
            "linear evaluation needs a fully labelled split"
        )
    return features, labels


def _standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-score both splits with the train split's per-feature mean and std (constant features keep scale 1)."""
    mean = train.mean(dim=0, dtype=torch.float64)
    std = train.double().std(dim=0, correction=0)
    std = torch.where(std > 1e-12 * mean.abs().clamp_min(1.0), std, torch.ones_like(std))
    mean, std = mean.float(), std.float()
    return (train - mean) / std, (test - mean) / std


def _adam(params: list[torch.Tensor], config: LinearEvalConfig) -> torch.optim.Adam:
    try:  # the fused kernel had the cheapest step in our CPU timing; torch < 2.4 has it on CUDA only
        return torch.optim.Adam(params, lr=config.effective_lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=config.effective_lr, weight_decay=config.weight_decay, foreach=False)


def _optimizer(weight: torch.Tensor, bias: torch.Tensor, config: LinearEvalConfig) -> torch.optim.Optimizer:
    """Paper 1's Adam unchanged; SGD / LARS with Nesterov momentum, the bias out of decay and adaptation.

    timm's Lars adapts a parameter group only when it has weight decay or ``always_adapt``; the
    weight group sets ``always_adapt`` so LARS stays LARS with no weight decay (paper 2's probe).
    """
    if config.optimizer == "adam":
        return _adam([weight, bias], config)
    lr = config.effective_lr
    groups = [{"params": [weight], "weight_decay": config.weight_decay},
              {"params": [bias], "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=True)
    if importlib.util.find_spec("timm") is None:  # config validation checks this at start-up; here for direct callers
        raise ImportError("the linear probe's optimizer 'lars' needs timm (pip install timm)")
    return lars(groups, lr=lr, momentum=config.momentum, nesterov=True, trust_coeff=LARS_TRUST_COEFF)


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine annealing without warm-up: the lr of update ``step`` (0-based) out of ``total_steps``.

    ``base_lr * (1 + cos(pi * step / total_steps)) / 2``: ``base_lr`` at the first step, decaying
    towards 0 at the end (torch's ``CosineAnnealingLR`` with ``T_max=total_steps``, ``eta_min=0``).
    """
    return base_lr * lr_factor(step, total_steps, warmup_steps=0, schedule="cosine")


@torch.no_grad()
def _set_cross_entropy_grad(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Set ``.grad`` of the linear layer to that of the mean cross-entropy on ``(x, y)``; return the logits.

    The gradient with respect to the logits is ``(softmax(logits) - onehot(y)) / B``; writing it out
    skips autograd's bookkeeping, which is about half the cost of a step this small on CPU.
    """
    logits = torch.addmm(bias, x, weight.t())
    grad = logits.softmax(dim=1)
    grad[torch.arange(y.shape[0], device=y.device), y] -= 1.0
    grad /= y.shape[0]
    weight.grad = grad.t() @ x
    bias.grad = grad.sum(dim=0)
    return logits


def _count_correct(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                   ks: tuple[int, ...]) -> dict[int, int]:
    counts = dict.fromkeys(ks, 0)
    for start in range(0, features.shape[0], _EVAL_CHUNK):
        logits = torch.addmm(bias, features[start : start + _EVAL_CHUNK], weight.t())
        for k, c in topk_correct(logits, labels[start : start + _EVAL_CHUNK], ks).items():
            counts[k] += c
    return counts


@torch.no_grad()
def linear_evaluation(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    config: LinearEvalConfig | None = None,
    *,
    num_classes: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    seed: int = 0,
) -> LinearEvalResult:
    """Train a linear classifier on frozen train features and score it on the test features.

    Both splits live on ``device`` for the whole run; each epoch visits the train split in a fresh
    permutation drawn from a generator seeded with ``seed``, so a run is reproducible. ``config``
    defaults to paper 1's probe; a run's ``EvalConfig`` (a subclass) works as it is.
    ``num_classes`` defaults to the largest label in either split plus one. The steps are tiny at
    CIFAR sizes, so on a CPU shared with other jobs ``torch.set_num_threads(1)`` avoids the heavy
    slowdown of oversubscribed intra-op threads (4-8x measured on a busy 2-core machine).
    """
    config = config if config is not None else LinearEvalConfig()
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    train_x, train_y = _check_split("train", train_features, train_labels)
    test_x, test_y = _check_split("test", test_features, test_labels)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train and test features differ in dimension: {train_x.shape[1]} vs {test_x.shape[1]}")
    largest = int(max(train_y.max(), test_y.max()))
    if num_classes is None:
        num_classes = largest + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise ValueError(f"num_classes must be an integer or None, got {num_classes!r}")
    elif num_classes <= largest:
        raise ValueError(f"num_classes={num_classes!r} but the labels go up to {largest}")
    if num_classes < 2:
        raise ValueError(f"linear evaluation needs at least 2 classes, got {num_classes}")

    device = torch.device(device)
    train_x, test_x = train_x.to(device, torch.float32), test_x.to(device, torch.float32)
    train_y, test_y = train_y.to(device, torch.long), test_y.to(device, torch.long)
    if config.standardize:
        train_x, test_x = _standardize(train_x, test_x)
    n, dim = train_x.shape

    # nn.Linear's default initialisation, drawn from our own generator instead of the global one.
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(dim)
    weight = (torch.rand(num_classes, dim, generator=generator) * 2 - 1).mul_(bound).to(device).requires_grad_()
    bias = (torch.rand(num_classes, generator=generator) * 2 - 1).mul_(bound).to(device).requires_grad_()
    optimizer = _optimizer(weight, bias, config)
    total_steps = config.epochs * math.ceil(n / config.batch_size)
    step = 0

    shown = Progress(config.epochs, "linear eval", "epoch", show=progress)
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(device)
        loss_sum = torch.zeros((), device=device) if progress else None
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            x, y = train_x.index_select(0, index), train_y.index_select(0, index)
            logits = _set_cross_entropy_grad(weight, bias, x, y)
            if config.schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(config.effective_lr, step, total_steps)
            optimizer.step()
            step += 1
            if loss_sum is not None:
                loss_sum += (logits.logsumexp(dim=1) - logits.gather(1, y[:, None]).squeeze(1)).sum()
        if loss_sum is not None:
            shown.set_postfix({"loss": f"{loss_sum.item() / n:.4f}"})
        shown.update()
    shown.close()

    ks = (1, 5) if config.top5_reported(num_classes) else (1,)
    test_correct = _count_correct(weight, bias, test_x, test_y, ks)
    train_correct = _count_correct(weight, bias, train_x, train_y, (1,))
    m = test_x.shape[0]
    return LinearEvalResult(
        top1=100.0 * test_correct[1] / m,
        top5=100.0 * test_correct[5] / m if 5 in test_correct else None,
        train_top1=100.0 * train_correct[1] / n,
        epochs=config.epochs,
        num_classes=num_classes,
        feature_dim=dim,
    )
