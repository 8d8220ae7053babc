"""`relssl train`: pretrain a backbone with a registered method, export it and evaluate it."""

from __future__ import annotations

import argparse
import contextlib
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from relssl.cli.learned_vs_random import comparison_lines, has_comparison
from relssl.cli.options import RAW, parse_sets
from relssl.config import load_yaml
from relssl.data import DATASETS
from relssl.dicts import deep_merge
from relssl.distributed import launch_from_env
from relssl.errors import ConfigError
from relssl.methods import METHODS
from relssl.models import backbone_choices
from relssl.train.checkpoint import load_checkpoint
from relssl.train.config import DEFAULT_METHOD, RunConfig, build_config
from relssl.train.lock import RunDirLock
from relssl.train.resume import resume_config
from relssl.train.run import run_training

__all__ = ["TRAIN_OPTIONS", "add_parser", "base_config_tree", "run", "train_overrides"]

EPILOG = """\
examples:
  relssl train                                   # Relational Reasoning on the built-in digits set
  relssl train --config configs/relational_cifar10_conv4.yaml --dataset imagefolder --data-root DIR
  relssl train --resume runs/RUN_DIR             # continue a stopped run (Ctrl-C stops and checkpoints)
  relssl train --set relational.aggregation=max --set optim.lr=3e-4
  relssl train --config configs/relational_cifar10_conv4.yaml --config configs/eval/linear_paper2.yaml
  torchrun --standalone --nproc_per_node 8 -m relssl train --config FILE   # 8 GPUs (docs/DISTRIBUTED.md)

Config precedence: built-in defaults < --config FILE (repeatable; later files win, section by
section) < named options < --set key=value.
Every key and its default: relssl train --print-config (add --method NAME for that method's).
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


def _choices(names: tuple[str, ...], default: str) -> str:
    return ", ".join(f"{n} (default)" if n == default else n for n in names)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `train` to the `relssl` sub-commands; the lists of parts come from the registries."""
    p = sub.add_parser(
        "train", help="pretrain a backbone, then evaluate it",
        description="Pretrain a backbone with a self-supervised method, export it, and run linear\n"
        "evaluation (plus the random-init lower bound with --compare-random). With no arguments,\n"
        "trains Relational Reasoning on scikit-learn's 8x8 digits, which needs no download, and prints\n"
        "learned vs random-init accuracy on raw and standardised features: 54 s on 2 CPU cores (dev machine),\n"
        "measured as src/relssl/presets/digits_quick.yaml says.",
        epilog=EPILOG, formatter_class=RAW,
    )
    p.add_argument("--config", metavar="FILE", action="append",
                   help="YAML file with any config keys (see configs/); repeat to layer files, later ones win, "
                   "e.g. a run config then configs/eval/linear_paper2.yaml")
    p.add_argument("--method", help=_choices(METHODS.names(), DEFAULT_METHOD))
    p.add_argument("--backbone", help=_choices(backbone_choices(), "conv4"))
    p.add_argument("--dataset", help=_choices(DATASETS.names(), "digits"))
    p.add_argument("--data-root", metavar="DIR", help="dataset folder (default ./data/<dataset>)")
    p.add_argument("--epochs", type=int, help="pretraining epochs (paper: 200)")
    p.add_argument("--max-steps", type=int, help="fixed step budget; overrides --epochs")
    p.add_argument("--k", type=int, help="augmented views per image, K (relational; paper: 32)")
    p.add_argument("--batch-size", type=int, help="images per step over all processes, M: the global batch (paper: 64)")
    p.add_argument("--seed", type=int, help="seed for weights, batches and augmentation")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (under torchrun, auto/cuda: each process's GPU)")
    p.add_argument("--runs-dir", metavar="DIR", help="parent of run directories (default ./runs)")
    p.add_argument("--run-name", help="run directory name (default: time-method-dataset-backbone)")
    p.add_argument("--resume", metavar="PATH", help="run directory or checkpoint to continue")
    p.add_argument("--no-download", action="store_true", help="never download; fail if files are missing")
    p.add_argument("--verify-cache", action="store_true",
                   help="hash the whole decode cache and its source files before use (data.verify_cache)")
    p.add_argument("--compare-random", dest="compare_random", action="store_true", default=None,
                   help="also evaluate the random-init backbone (default: on for digits only)")
    p.add_argument("--no-compare-random", dest="compare_random", action="store_false")
    p.add_argument("--no-progress", action="store_true",
                   help="plain progress lines instead of bars (as when stderr is not a terminal)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key, e.g. --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run)
    return p


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides from the named options and --set, in precedence order."""
    overrides: dict[str, Any] = {}
    for option, key in TRAIN_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            overrides[key] = value
    if args.no_download:
        overrides["data.download"] = False
    if args.verify_cache:
        overrides["data.verify_cache"] = True
    if args.compare_random is not None:
        overrides["eval.compare_random"] = args.compare_random
    if args.no_progress:
        overrides["train.progress"] = False
    overrides.update(parse_sets(args.sets))
    return overrides


def base_config_tree(config_file: str | list[str] | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The YAML tree under the overrides: the --config file(s), else the quick preset for digits, else defaults.

    Several files are deep-merged in order (a later file's keys win, sections merge), so an
    `eval:`-only file such as configs/eval/linear_paper2.yaml layers onto a run config. Without
    --config on the built-in digits set, the packaged quick preset (K=4, 15 epochs) replaces the
    paper's schedule so the default run ends in minutes on a CPU.
    """
    if config_file:
        tree: dict[str, Any] = {}
        for path in [config_file] if isinstance(config_file, str) else config_file:
            tree = deep_merge(tree, load_yaml(path))
        return tree
    if overrides.get("data.dataset", "digits") == "digits":
        return load_yaml(str(files("relssl") / "presets" / "digits_quick.yaml"))
    return {}


def _print_config(config: RunConfig) -> int:
    """`--print-config`: the resolved config as YAML."""
    print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
    return 0


def _resume(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """`--resume PATH`: lock the run directory, read and check its checkpoint, continue the run.

    The lock comes before the read (rank 0 of a launch; the others do not write), so a process
    still writing the run cannot replace the checkpoint after it was read. Only a folder that
    looks like a run directory is locked: a stray .pt elsewhere fails its checks without a trace.
    """
    if args.config:
        raise ConfigError("--resume continues a run with its saved config; drop --config")
    target = Path(args.resume)
    run_dir = target if target.is_dir() else target.parent
    if args.print_config:
        return _print_config(resume_config(load_checkpoint(target), overrides))
    is_run = (run_dir / "config.yaml").is_file() or (run_dir / "last.pt").is_file()
    locked = RunDirLock(run_dir) if is_run and launch_from_env().rank == 0 else contextlib.nullcontext()
    with locked:
        checkpoint = load_checkpoint(target)
        config = resume_config(checkpoint, overrides)
        run_dir, metrics = run_training(config, checkpoint=checkpoint, run_dir=run_dir)
    return _report(run_dir, metrics)


def run(args: argparse.Namespace) -> int:
    """Execute parsed `relssl train` arguments; 130 when Ctrl-C stopped the run after a checkpoint."""
    overrides = train_overrides(args)
    if args.resume:
        return _resume(args, overrides)
    config = build_config(base_config_tree(args.config, overrides), overrides)
    if args.print_config:
        return _print_config(config)
    return _report(*run_training(config))


def _report(run_dir: Path, metrics: dict[str, Any]) -> int:
    """The closing lines of a run and its exit status (130: stopped by a signal after a checkpoint)."""
    if not metrics["finished"]:
        return 130  # stopped by Ctrl-C or SIGTERM after checkpointing; the message said how to resume
    if launch_from_env().rank != 0:
        return 0  # under torchrun, rank 0 reports for all
    print(f"run directory: {run_dir}")
    protocol = metrics.get("eval_protocol", "linear")
    if has_comparison(metrics):  # learned vs random init, raw vs standardised (the default digits run)
        print("\n".join(comparison_lines(metrics)))
    elif f"{protocol}_top1" in metrics:
        line = f"{protocol} top-1: learned {metrics[f'{protocol}_top1']:.2f}%"
        if f"random_init_{protocol}_top1" in metrics:
            line += f", random init {metrics[f'random_init_{protocol}_top1']:.2f}%"
        print(line)
    return 0
