"""`relssl eval linear | retrieval | knn | tsne`: evaluation protocols on a trained (or random) backbone.

Each protocol loads the backbone the same way (`relssl.cli.eval_setup`): a run directory,
last.pt or backbone.safetensors, or a random init; the features of the labelled train and test
splits are extracted once and cached beside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from relssl.cli.eval_setup import add_common_options, load_eval_setup
from relssl.cli.options import RAW, positive_float, positive_int, wrap
from relssl.config import load_yaml, validate_section
from relssl.errors import ConfigError
from relssl.evaluate import EvalConfig, evaluate_linear
from relssl.evaluate.knn import knn_accuracy
from relssl.evaluate.plots import save_retrieval_grid, save_tsne_plot
from relssl.evaluate.retrieval import cosine_topk, retrieval_accuracy

__all__ = ["add_parser", "eval_section"]

LINEAR_EPILOG = """\
examples:
  relssl eval linear --checkpoint runs/RUN_DIR --dataset cifar10
  relssl eval linear --checkpoint runs/RUN_DIR/last.pt --dataset imagefolder --data-root DIR
  relssl eval linear --random-init --backbone conv4 --dataset digits
  relssl eval linear --checkpoint runs/RUN_DIR --eval-config configs/eval/linear_paper2.yaml
"""

TOOLS_EPILOG = """\
examples:
  relssl eval retrieval --checkpoint runs/RUN_DIR              # top-10 retrieval accuracy + RUN_DIR/retrieval.png
  relssl eval knn --checkpoint runs/RUN_DIR --k 200 --weighting majority
  relssl eval tsne --checkpoint runs/RUN_DIR --max-points 2000  # RUN_DIR/tsne.png
  relssl eval knn --random-init --backbone conv4 --dataset digits
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `eval` and its protocols to the `relssl` sub-commands."""
    p = sub.add_parser("eval", help="evaluate a trained backbone", description="Evaluation protocols.")
    protocols = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    lin = protocols.add_parser(
        "linear", help="linear evaluation on frozen features",
        description=wrap("The paper's linear evaluation: frozen backbone in eval mode, features of the train and "
                         "test splits extracted once (cached beside the checkpoint), a linear layer trained 100 epochs "
                         "with Adam lr 1e-3, batch 128, no augmentation; top-1 (and top-5 with more than 10 classes) "
                         "on the test split."),
        epilog=LINEAR_EPILOG, formatter_class=RAW,
    )
    add_common_options(lin)
    lin.add_argument("--eval-config", metavar="FILE",
                     help="YAML file whose eval: section sets the probe (optimizer, schedule, lr, ...), e.g. "
                     "configs/eval/linear_paper2.yaml; the options below override it")
    lin.add_argument("--epochs", type=int, help="default 100 (or the --eval-config file's)")
    lin.add_argument("--lr", type=float, help="default 1e-3 (or the --eval-config file's)")
    lin.add_argument("--batch-size", type=int, help="default 128 (or the --eval-config file's)")
    lin.add_argument("--standardize", action="store_true", help="z-score features with train statistics first")
    lin.add_argument("--output", metavar="FILE", help="also write the result as JSON here")
    lin.set_defaults(run=run_linear)

    ret = protocols.add_parser(
        "retrieval", help="top-k image retrieval accuracy and a grid of queries with their neighbours",
        description=wrap("Cosine top-k retrieval on frozen features: every test image queries the train split "
                         "(--gallery test: the rest of the test split); top-k retrieval accuracy is the share of "
                         "retrieved images with the query's label, averaged over all queries. Also writes a PNG of "
                         "--queries seeded random queries and their neighbours (green frame: same label, red: "
                         "different)."),
        epilog=TOOLS_EPILOG, formatter_class=RAW,
    )
    add_common_options(ret)
    ret.add_argument("--k", type=positive_int, default=10, help="neighbours per query (paper: 10)")
    ret.add_argument("--gallery", choices=("train", "test"), default="train",
                     help="split searched for neighbours: train (default), or test without the query itself")
    ret.add_argument("--queries", type=positive_int, default=10, help="rows in the picture (random test queries)")
    ret.add_argument("--output", metavar="PNG", help="picture path (default: <run dir>/retrieval.png)")
    ret.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    ret.set_defaults(run=run_retrieval)

    knn = protocols.add_parser(
        "knn", help="k-nearest-neighbour classification accuracy",
        description=wrap("kNN classifier on frozen features: each test image takes the vote of its k most "
                         "cosine-similar train images, weighted by exp(similarity / temperature) (Wu et al. 2018) "
                         "or one vote each (--weighting majority); top-1 accuracy on the test split."),
        epilog=TOOLS_EPILOG, formatter_class=RAW,
    )
    add_common_options(knn)
    knn.add_argument("--k", type=positive_int, default=20, help="neighbours that vote")
    knn.add_argument("--temperature", type=positive_float, default=0.07, help="tau of the exp weighting")
    knn.add_argument("--weighting", choices=("exp", "majority"), default="exp")
    knn.add_argument("--json", metavar="FILE", help="also write the result as JSON here")
    knn.set_defaults(run=run_knn)

    tsne = protocols.add_parser(
        "tsne", help="2-D t-SNE map of the test features, coloured by class",
        description=wrap("t-SNE (scikit-learn, PCA init) of the L2-normalised features of a seeded random subset "
                         "of the test split, drawn as a scatter coloured by class with a legend of class names."),
        epilog=TOOLS_EPILOG, formatter_class=RAW,
    )
    add_common_options(tsne)
    tsne.add_argument("--max-points", type=positive_int, default=5000, help="test images in the map")
    tsne.add_argument("--perplexity", type=positive_float, default=30.0)
    tsne.add_argument("--output", metavar="PNG", help="picture path (default: <run dir>/tsne.png)")
    tsne.set_defaults(run=run_tsne)
    return p


def _write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def eval_section(eval_config: str | Path | None, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """The validated `eval` section of a YAML file (defaults without one), plus overrides of its keys.

    Only the file's `eval:` section is read, so a whole run config works too; a bad key or value
    fails naming it (`config key 'eval.optimizer': ...`).
    """
    section: dict[str, Any] = {}
    if eval_config is not None:
        found = load_yaml(eval_config).get("eval")
        if not isinstance(found, dict):
            raise ConfigError(f"config file {eval_config}: needs an 'eval:' section (see configs/eval/)")
        section = found
    return validate_section(EvalConfig, {**section, **(overrides or {})}, prefix="eval")


def run_linear(args: argparse.Namespace) -> int:
    """`relssl eval linear`: the linear probe; prints the result and optionally writes JSON."""
    options = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
               "standardize": True if args.standardize else None}
    ev = eval_section(args.eval_config, {k: v for k, v in options.items() if v is not None})
    setup = load_eval_setup(args, "eval linear")
    result = evaluate_linear(
        setup.backbone, setup.data, mean=setup.mean, std=setup.std, config=ev, device=setup.device,
        cache=setup.cache, cache_key=setup.cache_key, size=setup.size, progress=setup.progress, seed=args.seed,
    )
    line = (f"linear evaluation ({setup.which} {setup.backbone.__class__.__name__} on {setup.dataset}): "
            f"top-1 {result.top1:.2f}%")
    if result.top5 is not None:
        line += f", top-5 {result.top5:.2f}%"
    print(line)
    _write_json(args.output, {"dataset": setup.dataset, "backbone": setup.which, **result.to_dict(),
                              "optimizer": ev.optimizer, "schedule": ev.schedule, "effective_lr": ev.effective_lr})
    return 0


def run_retrieval(args: argparse.Namespace) -> int:
    """`relssl eval retrieval`: accuracy over all test queries, then the picture of a few."""
    setup = load_eval_setup(args, "eval retrieval")
    output = Path(args.output) if args.output else setup.default_output("retrieval")
    queries = setup.features("test").to(setup.device)
    own = args.gallery == "test"
    gallery = queries if own else setup.features("train").to(setup.device)
    if args.k > len(gallery) - own:
        raise ConfigError(f"--k {args.k} asks for more neighbours than the {len(gallery) - own} images the "
                          f"{args.gallery} gallery offers each query")
    _, indices = cosine_topk(queries, gallery, args.k, exclude_self=own)
    indices = indices.cpu()
    query_labels, gallery_labels = setup.labels("test"), setup.labels(args.gallery)
    accuracy = retrieval_accuracy(query_labels, gallery_labels, indices)
    gallery_split = setup.test_split if own else setup.train_split
    print(f"top-{args.k} retrieval accuracy ({setup.description}, {len(query_labels)} {setup.test_split} queries "
          f"against {len(gallery_labels) - own} {gallery_split} images): {accuracy:.2f}%")

    count = setup.data.size("test")
    rows = np.sort(np.random.default_rng(args.seed).choice(count, min(args.queries, count), replace=False))
    neighbours = indices[rows].numpy()
    save_retrieval_grid(
        setup.data.images("test", rows), setup.data.images(args.gallery, neighbours), output,  # (Q, k, H, W, 3)
        query_labels=query_labels[rows].numpy(), neighbour_labels=gallery_labels[neighbours].numpy(),
        class_names=setup.data.classes,
    )
    print(f"retrieval grid: {output}")
    _write_json(args.json, {"protocol": "retrieval", "dataset": setup.dataset, "backbone": setup.which,
                            "k": args.k, "gallery": args.gallery, "queries": len(query_labels),
                            "retrieval_accuracy": accuracy, "grid": str(output)})
    return 0


def run_knn(args: argparse.Namespace) -> int:
    """`relssl eval knn`: kNN top-1 accuracy on the test split."""
    setup = load_eval_setup(args, "eval knn")
    accuracy = knn_accuracy(
        setup.features("train").to(setup.device), setup.labels("train"), setup.features("test").to(setup.device),
        setup.labels("test"), k=args.k, temperature=args.temperature, weighting=args.weighting,
        num_classes=setup.data.num_classes,
    )
    vote = f"exp weighting, T={args.temperature:g}" if args.weighting == "exp" else "majority vote"
    print(f"kNN accuracy (k={args.k}, {vote}; {setup.description}): top-1 {accuracy:.2f}%")
    _write_json(args.json, {"protocol": "knn", "dataset": setup.dataset, "backbone": setup.which, "k": args.k,
                            "weighting": args.weighting, "temperature": args.temperature, "top1": accuracy})
    return 0


def run_tsne(args: argparse.Namespace) -> int:
    """`relssl eval tsne`: the t-SNE picture of the test features."""
    setup = load_eval_setup(args, "eval tsne")
    output = Path(args.output) if args.output else setup.default_output("tsne")
    features = setup.features("test")
    n = min(args.max_points, len(features))
    title = (f"t-SNE of {n} {setup.test_split} images, {setup.description} "
             f"(perplexity {min(args.perplexity, n - 1):g}, seed {args.seed})")
    save_tsne_plot(features, setup.labels("test"), setup.data.classes, output,
                   max_points=args.max_points, seed=args.seed, perplexity=args.perplexity, title=title)
    print(f"t-SNE plot: {output}")
    return 0
