"""The `relssl` command: `train` pretrains and evaluates, `eval linear` evaluates a checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

TRAIN_EPILOG = """\
examples:
  relssl train                                   # Relational Reasoning on the built-in digits set (~2 min on CPU)
  relssl train --config configs/relational_cifar10_conv4.yaml --dataset imagefolder --data-root DIR
  relssl train --resume runs/RUN_DIR             # continue a stopped run (Ctrl-C stops and checkpoints)
  relssl train --set relational.aggregation=max --set optim.lr=3e-4
  relssl train --config configs/relational_cifar10_conv4.yaml --config configs/eval/linear_paper2.yaml

Config precedence: built-in defaults < --config FILE (repeatable; later files win, section by
section) < named options < --set key=value.
Every key and its default: relssl train --print-config.
"""

EVAL_EPILOG = """\
examples:
  relssl eval linear --checkpoint runs/RUN_DIR --dataset cifar10
  relssl eval linear --checkpoint runs/RUN_DIR/last.pt --dataset imagefolder --data-root DIR
  relssl eval linear --random-init --backbone conv4 --dataset digits
  relssl eval linear --checkpoint runs/RUN_DIR --eval-config configs/eval/linear_paper2.yaml
"""

# Named train options and the config key each one sets.
TRAIN_OPTIONS: dict[str, str] = {
    "method": "method",
    "backbone": "backbone.name",
    "dataset": "data.dataset",
    "data_root": "data.root",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "k": "relational.k",
    "batch_size": "train.batch_size",
    "seed": "seed",
    "device": "train.device",
    "runs_dir": "train.runs_dir",
    "run_name": "train.run_name",
}


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="pretrain a backbone, then linear-evaluate it",
        description="Pretrain a backbone with a self-supervised method, export it, and run linear\n"
        "evaluation (plus the random-init lower bound with --compare-random). With no arguments,\n"
        "trains Relational Reasoning on scikit-learn's 8x8 digits, which needs no download.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", action="append",
                   help="YAML file with any config keys (see configs/); repeat to layer files, later ones win, "
                   "e.g. a run config then configs/eval/linear_paper2.yaml")
    p.add_argument("--method", help="relational (default), simclr, rotnet, deepcluster, dim, supervised "
                   "(paper 1); rcl, mocov2, mocov3, byol, simsiam, nnclr (paper 2)")
    p.add_argument("--backbone", help="conv4, resnet8, resnet32, resnet56, resnet18, resnet34, resnet50")
    p.add_argument("--dataset", help="digits, cifar10, cifar100, cifar100-20, stl10, tiny-imagenet, slimagenet64, imagefolder")
    p.add_argument("--data-root", metavar="DIR", help="dataset folder (default ./data/<dataset>)")
    p.add_argument("--epochs", type=int, help="pretraining epochs (paper: 200)")
    p.add_argument("--max-steps", type=int, help="fixed step budget; overrides --epochs")
    p.add_argument("--k", type=int, help="augmented views per image, K (paper: 32)")
    p.add_argument("--batch-size", type=int, help="images per step, M (paper: 64)")
    p.add_argument("--seed", type=int, help="seed for weights, batches and augmentation")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--runs-dir", metavar="DIR", help="parent of run directories (default ./runs)")
    p.add_argument("--run-name", help="run directory name (default: time-method-dataset-backbone)")
    p.add_argument("--resume", metavar="PATH", help="run directory or checkpoint to continue")
    p.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    p.add_argument("--compare-random", dest="compare_random", action="store_true", default=None,
                   help="also evaluate the random-init backbone (default: on for digits only)")
    p.add_argument("--no-compare-random", dest="compare_random", action="store_false")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    from relssl.eval_tools_cli import add_common_options
    from relssl.eval_tools_cli import add_parsers as add_tool_parsers

    p = sub.add_parser("eval", help="evaluate a trained backbone", description="Evaluation protocols.")
    protocols = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    lin = protocols.add_parser(
        "linear", help="linear evaluation on frozen features",
        description="The paper's linear evaluation: frozen backbone in eval mode, features of the "
        "train and test splits extracted once (cached beside the checkpoint), a linear layer trained "
        "100 epochs with Adam lr 1e-3, batch 128, no augmentation; top-1 (and top-5 with more than "
        "10 classes) on the test split.",
        epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
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
    add_tool_parsers(protocols)


def build_parser() -> argparse.ArgumentParser:
    """The full `relssl` argument parser."""
    parser = argparse.ArgumentParser(
        prog="relssl",
        description="Self-supervised visual representation learning: Relational Reasoning "
        "(Patacchiola & Storkey, 2020) and friends. Pretrain a backbone on unlabelled images, "
        "then evaluate it with the papers' protocols.",
        epilog="Run `relssl COMMAND --help` for each command's options.",
    )
    from relssl import __version__

    parser.add_argument("--version", action="version", version=f"relssl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _train_parser(sub)
    _eval_parser(sub)
    from relssl.benchmark_cli import add_parser as add_benchmark_parser

    add_benchmark_parser(sub)
    return parser


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides from the named options and --set, in precedence order."""
    from relssl.config import ConfigError, parse_value

    overrides: dict[str, Any] = {}
    for option, key in TRAIN_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            overrides[key] = value
    if args.no_download:
        overrides["data.download"] = False
    if args.compare_random is not None:
        overrides["eval.compare_random"] = args.compare_random
    if args.no_progress:
        overrides["train.progress"] = False
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    return overrides


def base_config_tree(config_file: str | list[str] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The YAML tree under the overrides: the --config file(s), else the quick preset for digits, else defaults.

    Several files are deep-merged in order (a later file's keys win, sections merge), so an
    `eval:`-only file such as configs/eval/linear_paper2.yaml layers onto a run config. Without
    --config on the built-in digits set, the packaged quick preset (K=4, 15 epochs) replaces the
    paper's schedule so the default run ends in minutes on a CPU.
    """
    from importlib.resources import files

    from relssl.benchmark.grid import deep_merge
    from relssl.config import load_yaml

    if config_file:
        tree: dict[str, Any] = {}
        for path in [config_file] if isinstance(config_file, str) else config_file:
            tree = deep_merge(tree, load_yaml(path))
        return tree
    if overrides.get("data.dataset", "digits") == "digits":
        return load_yaml(str(files("relssl") / "presets" / "digits_quick.yaml"))
    return {}


def cmd_train(args: argparse.Namespace) -> int:
    """`relssl train`."""
    import yaml

    from relssl.config import build_config
    from relssl.train.checkpoint import load_checkpoint
    from relssl.train.run import resume_config, run_training

    overrides = train_overrides(args)
    if args.resume:
        if args.config:
            raise SystemExit("relssl train: --resume continues a run with its saved config; drop --config")
        checkpoint = load_checkpoint(args.resume)
        config = resume_config(checkpoint, overrides)
        run_dir = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
    else:
        checkpoint, run_dir = None, None
        config = build_config(base_config_tree(args.config, overrides), overrides)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    run_dir, metrics = run_training(config, checkpoint=checkpoint, run_dir=run_dir)
    if not metrics["finished"]:
        return 130  # stopped by Ctrl-C after checkpointing; the message said how to resume
    print(f"run directory: {run_dir}")
    protocol = metrics.get("eval_protocol", "linear")
    if f"{protocol}_top1" in metrics:
        line = f"{protocol} top-1: learned {metrics[f'{protocol}_top1']:.2f}%"
        if f"random_init_{protocol}_top1" in metrics:
            line += f", random init {metrics[f'random_init_{protocol}_top1']:.2f}%"
        print(line)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """`relssl eval linear|retrieval|knn|tsne`."""
    if args.protocol == "linear":
        from relssl.evaluate_cli import run_linear_eval

        return run_linear_eval(args)
    from relssl.eval_tools_cli import run as run_tool

    return run_tool(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors end with one clear line and exit status 2."""
    from relssl.errors import USER_ERRORS

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "benchmark":
            from relssl.benchmark_cli import run as run_benchmark

            return run_benchmark(args)
        return cmd_eval(args)
    except USER_ERRORS as err:
        print(f"relssl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relssl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
