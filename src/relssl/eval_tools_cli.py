"""`relssl eval retrieval | knn | tsne`: nearest-neighbour protocols and pictures of a trained backbone.

Each command loads the backbone the way `relssl eval linear` does (a run directory, last.pt or
backbone.safetensors, or a random init), extracts frozen features of the labelled train and test
splits once (cached beside the checkpoint, under the same keys as `eval linear`), and then works on
those features only. `load_eval_setup` is that shared first half.
"""

from __future__ import annotations

import argparse
import functools
import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["EvalSetup", "add_common_options", "add_parsers", "load_eval_setup", "run"]

EPILOG = """\
examples:
  relssl eval retrieval --checkpoint runs/RUN_DIR              # top-10 retrieval accuracy + RUN_DIR/retrieval.png
  relssl eval knn --checkpoint runs/RUN_DIR --k 200 --weighting majority
  relssl eval tsne --checkpoint runs/RUN_DIR --max-points 2000  # RUN_DIR/tsne.png
  relssl eval knn --random-init --backbone conv4 --dataset digits
"""


@dataclass
class EvalSetup:
    """A backbone ready to embed the labelled splits of a dataset, with where to cache and write results."""

    backbone: torch.nn.Module
    data: Any  # relssl.train.evaluation.EvalData
    dataset: str
    root: str | None
    train_split: str
    test_split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None
    device: torch.device
    cache: Any  # relssl.evaluate.FeatureCache | None
    cache_key: str  # per-split keys append "-train" / "-test", as evaluate_linear does
    which: str  # "learned" or "random-init"
    run_dir: Path | None
    progress: bool

    @property
    def description(self) -> str:
        """E.g. ``learned Conv4 on cifar10``, or ``... on imagefolder:cifar10`` naming the folder."""
        data = f"{self.dataset}:{Path(self.root).name}" if self.dataset == "imagefolder" and self.root else self.dataset
        return f"{self.which} {self.backbone.__class__.__name__} on {data}"

    def split(self, name: str):
        """The ``"train"`` or ``"test"`` ImageArrays."""
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return self.data.train if name == "train" else self.data.test

    def labels(self, name: str) -> torch.Tensor:
        """Int64 labels of the ``"train"`` or ``"test"`` split."""
        return torch.from_numpy(np.array(self.split(name).labels, dtype=np.int64))

    def features(self, name: str) -> torch.Tensor:
        """Float32 CPU features of the ``"train"`` or ``"test"`` split, from the cache when there."""
        from relssl.augment import to_normalized
        from relssl.evaluate import extract_features

        def compute() -> torch.Tensor:
            self.backbone.to(self.device)
            normalize = functools.partial(to_normalized, mean=self.mean, std=self.std, size=self.size)
            return extract_features(self.backbone, self.split(name).images, normalize=normalize, device=self.device,
                                    progress=self.progress, desc=f"features ({name})")

        if self.cache is None:
            return compute()
        return self.cache.get_or_compute(f"{self.cache_key}-{name}", compute)

    def default_output(self, stem: str, option: str = "--output") -> Path:
        """``<run dir>/<stem>.png`` (``<stem>-random-init.png`` for a random init); an error without a run dir."""
        if self.run_dir is None:
            raise ValueError(f"without --checkpoint there is no run directory to write into: give {option} FILE.png")
        suffix = "-random-init" if self.which == "random-init" else ""
        return self.run_dir / f"{stem}{suffix}.png"


def load_eval_setup(args: argparse.Namespace, command: str = "eval") -> EvalSetup:
    """Backbone, labelled splits, normalisation, device and feature cache for parsed `eval` arguments.

    Reads ``checkpoint, random_init, backbone, seed, dataset, data_root, train_split, test_split,
    no_download, no_progress, device`` from ``args`` (the options of `add_common_options`). The
    normalisation is the checkpoint's; without one, channel statistics of the train split.
    """
    from relssl.config import build_config
    from relssl.evaluate import FeatureCache
    from relssl.evaluate_cli import load_trained_backbone
    from relssl.models import create_backbone
    from relssl.train.evaluation import EvalData
    from relssl.train.run import default_eval_splits
    from relssl.train.setup import channel_stats, resolve_device

    if not args.checkpoint and not args.random_init:
        raise ValueError(f"{command} needs --checkpoint PATH, or --random-init with --backbone NAME")
    config: dict[str, Any] = {}
    run_dir: Path | None = None
    if args.checkpoint:
        backbone, config, tag = load_trained_backbone(args.checkpoint)
        ckpt = Path(args.checkpoint)
        run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    if args.random_init:
        name = args.backbone or config.get("backbone", {}).get("name")
        if not name:
            raise ValueError("--random-init needs --backbone NAME (or a --checkpoint to copy the architecture from)")
        options = {} if args.backbone else build_config(config).backbone.create_kwargs()
        torch.manual_seed(args.seed)
        backbone = create_backbone(name, **options)
        tag = f"random-init-seed{args.seed}"
    data_cfg = config.get("data", {})
    dataset = args.dataset or data_cfg.get("dataset") or "digits"
    root = args.data_root or (data_cfg.get("root") if dataset == data_cfg.get("dataset") else None)
    progress = not args.no_progress
    default_train, default_test = default_eval_splits(dataset)
    train_split, test_split = args.train_split or default_train, args.test_split or default_test
    data = EvalData.load(dataset, root, train_split=train_split, test_split=test_split,
                         download=not args.no_download, image_size=data_cfg.get("image_size"), progress=progress)
    aug = config.get("augment", {})
    mean, std = aug.get("mean"), aug.get("std")
    if mean is None or std is None:
        mean, std = channel_stats(data.train.images, seed=args.seed)
    return EvalSetup(
        backbone=backbone, data=data, dataset=dataset, root=root, train_split=train_split, test_split=test_split,
        mean=tuple(mean), std=tuple(std), size=aug.get("size"), device=resolve_device(args.device),
        cache=FeatureCache(run_dir / "features") if run_dir else None,
        cache_key=f"{tag}-{dataset}-{train_split}-{test_split}",
        which="random-init" if args.random_init else "learned", run_dir=run_dir, progress=progress,
    )


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The backbone, data and device options shared by the evaluation protocols (those of `eval linear`)."""
    p.add_argument("--checkpoint", metavar="PATH", help="run directory, last.pt, or backbone.safetensors in a run directory")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the checkpoint's)")
    p.add_argument("--data-root", metavar="DIR")
    p.add_argument("--random-init", action="store_true", help="evaluate the backbone at random initialisation")
    p.add_argument("--backbone", help="backbone for --random-init without a checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init, query sample and t-SNE")
    p.add_argument("--train-split", help="labelled reference split (default train; train160 for slimagenet64)")
    p.add_argument("--test-split", help="split to score on (default test; test40 for slimagenet64)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _wrap(text: str) -> str:
    """Wrap a description ourselves: the raw formatter (kept for the examples epilog) does not."""
    return textwrap.fill(text, width=88)


def add_parsers(protocols: argparse._SubParsersAction) -> None:
    """Add the `retrieval`, `knn` and `tsne` protocols to the `relssl eval` sub-parsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    ret = protocols.add_parser(
        "retrieval", help="top-k image retrieval accuracy and a grid of queries with their neighbours",
        description=_wrap("Cosine top-k retrieval on frozen features: every test image queries the train split "
        "(--gallery test: the rest of the test split); top-k retrieval accuracy is the share of retrieved "
        "images with the query's label, averaged over all queries. Also writes a PNG of --queries seeded "
        "random queries and their neighbours (green frame: same label, red: different)."),
        epilog=EPILOG, formatter_class=fmt,
    )
    add_common_options(ret)
    ret.add_argument("--k", type=_positive_int, default=10, help="neighbours per query (paper: 10)")
    ret.add_argument("--gallery", choices=("train", "test"), default="train",
                     help="split searched for neighbours: train (default), or test without the query itself")
    ret.add_argument("--queries", type=_positive_int, default=10, help="rows in the picture (random test queries)")
    ret.add_argument("--output", metavar="PNG", help="picture path (default: <run dir>/retrieval.png)")
    ret.add_argument("--json", metavar="FILE", help="also write the result as JSON here")

    knn = protocols.add_parser(
        "knn", help="k-nearest-neighbour classification accuracy",
        description=_wrap("kNN classifier on frozen features: each test image takes the vote of its k most "
        "cosine-similar train images, weighted by exp(similarity / temperature) (Wu et al. 2018) or "
        "one vote each (--weighting majority); top-1 accuracy on the test split."),
        epilog=EPILOG, formatter_class=fmt,
    )
    add_common_options(knn)
    knn.add_argument("--k", type=_positive_int, default=20, help="neighbours that vote")
    knn.add_argument("--temperature", type=_positive_float, default=0.07, help="tau of the exp weighting")
    knn.add_argument("--weighting", choices=("exp", "majority"), default="exp")
    knn.add_argument("--json", metavar="FILE", help="also write the result as JSON here")

    tsne = protocols.add_parser(
        "tsne", help="2-D t-SNE map of the test features, coloured by class",
        description=_wrap("t-SNE (scikit-learn, PCA init) of the L2-normalised features of a seeded random "
        "subset of the test split, drawn as a scatter coloured by class with a legend of class names."),
        epilog=EPILOG, formatter_class=fmt,
    )
    add_common_options(tsne)
    tsne.add_argument("--max-points", type=_positive_int, default=5000, help="test images in the map")
    tsne.add_argument("--perplexity", type=_positive_float, default=30.0)
    tsne.add_argument("--output", metavar="PNG", help="picture path (default: <run dir>/tsne.png)")


def _write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def run_retrieval(args: argparse.Namespace) -> int:
    """`relssl eval retrieval`: accuracy over all test queries, then the picture of a few."""
    from relssl.evaluate.plots import save_retrieval_grid
    from relssl.evaluate.retrieval import cosine_topk, retrieval_accuracy

    setup = load_eval_setup(args, "eval retrieval")
    output = Path(args.output) if args.output else setup.default_output("retrieval")
    queries = setup.features("test").to(setup.device)
    own = args.gallery == "test"
    gallery = queries if own else setup.features("train").to(setup.device)
    _, indices = cosine_topk(queries, gallery, args.k, exclude_self=own)
    indices = indices.cpu()
    query_labels, gallery_labels = setup.labels("test"), setup.labels(args.gallery)
    accuracy = retrieval_accuracy(query_labels, gallery_labels, indices)
    gallery_split = setup.test_split if own else setup.train_split
    print(f"top-{args.k} retrieval accuracy ({setup.description}, {len(query_labels)} {setup.test_split} queries "
          f"against {len(gallery_labels) - own} {gallery_split} images): {accuracy:.2f}%")

    test, reference = setup.split("test"), setup.split(args.gallery)
    rows = np.sort(np.random.default_rng(args.seed).choice(len(test), min(args.queries, len(test)), replace=False))
    neighbours = indices[rows].numpy()
    save_retrieval_grid(
        np.asarray(test.images[rows]), np.asarray(reference.images[neighbours]), output,  # (Q, k, H, W, 3)
        query_labels=query_labels[rows].numpy(), neighbour_labels=gallery_labels[neighbours].numpy(),
        class_names=test.classes,
    )
    print(f"retrieval grid: {output}")
    _write_json(args.json, {"protocol": "retrieval", "dataset": setup.dataset, "backbone": setup.which,
                            "k": args.k, "gallery": args.gallery, "queries": len(query_labels),
                            "retrieval_accuracy": accuracy, "grid": str(output)})
    return 0


def run_knn(args: argparse.Namespace) -> int:
    """`relssl eval knn`: kNN top-1 accuracy on the test split."""
    from relssl.evaluate.knn import knn_accuracy

    setup = load_eval_setup(args, "eval knn")
    accuracy = knn_accuracy(
        setup.features("train").to(setup.device), setup.labels("train"), setup.features("test").to(setup.device),
        setup.labels("test"), k=args.k, temperature=args.temperature, weighting=args.weighting,
        num_classes=setup.data.train.num_classes,
    )
    vote = f"exp weighting, T={args.temperature:g}" if args.weighting == "exp" else "majority vote"
    print(f"kNN accuracy (k={args.k}, {vote}; {setup.description}): top-1 {accuracy:.2f}%")
    _write_json(args.json, {"protocol": "knn", "dataset": setup.dataset, "backbone": setup.which, "k": args.k,
                            "weighting": args.weighting, "temperature": args.temperature, "top1": accuracy})
    return 0


def run_tsne(args: argparse.Namespace) -> int:
    """`relssl eval tsne`: the t-SNE picture of the test features."""
    from relssl.evaluate.plots import save_tsne_plot

    setup = load_eval_setup(args, "eval tsne")
    output = Path(args.output) if args.output else setup.default_output("tsne")
    features = setup.features("test")
    n = min(args.max_points, len(features))
    title = (f"t-SNE of {n} {setup.test_split} images, {setup.description} "
             f"(perplexity {min(args.perplexity, n - 1):g}, seed {args.seed})")
    save_tsne_plot(features, setup.labels("test"), setup.split("test").classes, output,
                   max_points=args.max_points, seed=args.seed, perplexity=args.perplexity, title=title)
    print(f"t-SNE plot: {output}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed `relssl eval retrieval | knn | tsne` command."""
    commands = {"retrieval": run_retrieval, "knn": run_knn, "tsne": run_tsne}
    if args.protocol not in commands:
        raise ValueError(f"unknown evaluation protocol {args.protocol!r}; choose from {sorted(commands)}")
    return commands[args.protocol](args)
