"""Finetune protocol: train backbone + linear classifier end to end on labelled images, score the test split."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relssl.augment import AugmentConfig, ViewAugment, to_normalized
from relssl.errors import ConfigError
from relssl.evaluate.config import FinetuneConfig
from relssl.evaluate.metrics import topk_accuracy
from relssl.models.backbone import feature_dim
from relssl.progress import track


def finetune(
    backbone: nn.Module,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    config: FinetuneConfig | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    top5: bool | None = None,
) -> dict[str, float]:
    """Finetune a copy of `backbone` with a new linear classifier (Adam) and return test top-1 (and top-5).

    `config` holds the schedule (defaults: `FinetuneConfig()`); `seed` draws the batches and views.

    The caller's backbone is left untouched. Labels must all be known (no -1). `top5`: None reports
    top-5 with more than 10 classes, True with more than 5 (the semi-supervised protocol), False never.
    """
    settings = config if config is not None else FinetuneConfig()
    device = torch.device(device)
    train_labels = np.array(train_labels, dtype=np.int64)  # an owned, writable copy
    if (train_labels < 0).any():
        raise ValueError("finetuning needs a fully labelled train split (labels of -1 found)")
    if len(train_images) < settings.batch_size:
        raise ConfigError(f"finetune.batch_size={settings.batch_size} exceeds the {len(train_images)} labelled images")
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(backbone).to(device)
    classifier = nn.Linear(feature_dim(model), num_classes).to(device)
    params = list(model.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    augment = ViewAugment(AugmentConfig.model_validate(
        {"scale": (0.25, 1.0), "jitter_p": 0.0, "gray_p": 0.0, "mean": mean, "std": std}))
    aug_gen = torch.Generator(device=device).manual_seed(seed)
    images = torch.from_numpy(np.array(train_images, copy=True))
    labels = torch.from_numpy(train_labels)
    steps = len(images) // settings.batch_size
    for _ in track(range(settings.epochs), desc="finetune", unit="epoch", show=progress):
        model.train()
        classifier.train()
        order = torch.randperm(len(images), generator=gen)[: steps * settings.batch_size].view(steps, -1)
        for idx in order:
            batch = images[idx].to(device)
            x = (augment(batch, 1, generator=aug_gen) if settings.augment
                 else to_normalized(batch, mean, std))
            loss = F.cross_entropy(classifier(model(x)).float(), labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return _score(model, classifier, test_images, test_labels, num_classes, mean, std, device, top5=top5)


@torch.no_grad()
def _score(model: nn.Module, classifier: nn.Module, images: np.ndarray, labels: np.ndarray, num_classes: int,
           mean, std, device: torch.device, batch_size: int = 512, top5: bool | None = None) -> dict[str, float]:
    """Top-1 (and top-5, see `finetune`) of the finetuned model on a labelled split, in percent."""
    model.eval()
    classifier.eval()
    logits = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[start:start + batch_size], copy=True)).to(device)
        logits.append(classifier(model(to_normalized(batch, mean, std))).float().cpu())
    ks = (1, 5) if (num_classes > 10 if top5 is None else top5 and num_classes > 5) else (1,)
    acc = topk_accuracy(torch.cat(logits), torch.from_numpy(np.array(labels, dtype=np.int64)), ks=ks)
    out = {"top1": acc[1]}
    if 5 in acc:
        out["top5"] = acc[5]
    return out
