"""Typed run configuration: YAML file + command-line overrides, validated once at start-up.

Every section is a pydantic model that forbids unknown keys, so a typo in a YAML file or a
`--set key=value` fails before any work starts, with a message naming the dotted key. The
methods' own sections live in `relssl.config.methods`; this module holds the run-level ones.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from relssl.augment import AugmentConfig
from relssl.config.methods import (
    BYOLConfig,
    DeepClusterConfig,
    DIMConfig,
    MoCoV2Config,
    MoCoV3Config,
    NNCLRConfig,
    RCLConfig,
    RelationalConfig,
    SimCLRConfig,
    SimSiamConfig,
)
from relssl.config.section import Section

METHOD_NAMES = (
    "relational", "simclr", "rotnet", "deepcluster", "dim", "supervised",
    "mocov2", "mocov3", "byol", "simsiam", "nnclr", "rcl",
)


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and what is allowed."""


class DataConfig(Section):
    """Which images to train and evaluate on."""

    dataset: str = "digits"
    root: str | None = None
    download: bool = True
    image_size: int | None = Field(default=None, ge=8)
    cache_dir: str | None = None
    train_split: str | None = None  # None: the dataset's natural pretraining split
    eval_train_split: str | None = None  # None: "train" ("train160" for slimagenet64)
    eval_test_split: str | None = None  # None: "test" ("test40" for slimagenet64)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from relssl.data import DATASET_NAMES

        if name not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
        return name


class BackboneConfig(Section):
    """Backbone name and constructor options (see relssl.models.create_backbone)."""

    name: str = "conv4"
    cifar_stem: bool | None = None  # only for resnet18/34/50; None leaves the model's default
    options: dict[str, Any] = {}  # any other create_backbone option, e.g. {pooling: max} for conv4

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        from relssl.models import BACKBONE_NAMES

        if name not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONE_NAMES)}")
        return name

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword options for create_backbone, leaving out unset ones."""
        opts = dict(self.options)
        if self.cifar_stem is not None:
            opts["cifar_stem"] = self.cifar_stem
        return opts

    @model_validator(mode="after")
    def _options_fit(self) -> "BackboneConfig":
        from relssl.models import create_backbone

        try:  # building a backbone is cheap next to training, and it is the only full check
            create_backbone(self.name, **self.create_kwargs())
        except (TypeError, ValueError) as err:
            raise ValueError(f"backbone options: {err}") from None
        return self


def _augment_section() -> type[Section]:
    """The `augment` section: AugmentConfig's fields, with mean/std optional (None = measured).

    Generated from the dataclass so the two never drift apart; AugmentConfig's own checks run
    at validation time, so a bad value fails at start-up naming `augment.<field>`.
    """
    hints = typing.get_type_hints(AugmentConfig)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(AugmentConfig):
        if f.name in ("mean", "std"):
            fields[f.name] = (hints[f.name] | None, None)
        else:
            fields[f.name] = (hints[f.name], f.default)

    def _check(self: Section) -> Section:
        values = {k: v for k, v in self.model_dump().items() if v is not None or k not in ("mean", "std")}
        AugmentConfig(**values)  # raises ValueError("augment.<field> ...") on a bad value
        return self

    return create_model(
        "AugmentSection", __base__=Section, __doc__="Augmentation parameters (relssl.augment.AugmentConfig).",
        __validators__={"_check": model_validator(mode="after")(_check)}, **fields,
    )


AugmentSection = _augment_section()


class FinetuneConfig(Section):
    """Finetune protocol: the whole network trained on the labelled split, scored on the test split.

    The paper's text gives only the epoch count (20 on STL-10's 5k labelled images); the
    optimiser, learning rate and augmentation are our choices.
    """

    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=2)
    augment: bool = True  # crop + flip (no colour distortion) on the labelled images


class OptimConfig(Section):
    """Optimizer and lr schedule of the pretraining stage (paper 1: Adam, lr 1e-3, constant).

    Paper 2 (RCL) uses LARS, base lr 0.3 at batch 4096, weight decay 1e-6, 10 warm-up epochs and
    a cosine schedule; `lr` here is the lr actually used (scale it yourself, e.g. 0.3 * M / 256).
    """

    name: Literal["adam", "sgd", "adamw", "lars"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["constant", "cosine"] = "constant"  # per step, after the warm-up
    warmup_epochs: float = Field(default=0.0, ge=0)  # linear warm-up from lr/warmup_steps to lr
    trust_coefficient: float = Field(default=0.001, gt=0)  # LARS eta
    exclude_bias_norm: bool | None = None  # no weight decay (and no LARS adaptation) on biases/BN; None: on for lars only

    def excludes_bias_norm(self) -> bool:
        """Whether biases and norm parameters skip weight decay (default: only under LARS)."""
        return self.name == "lars" if self.exclude_bias_norm is None else self.exclude_bias_norm


class TrainConfig(Section):
    """Schedule, checkpoints, logging and device settings."""

    epochs: int = Field(default=200, ge=1)
    max_steps: int | None = Field(default=None, ge=1)  # a fixed step budget overrides epochs
    batch_size: int = Field(default=64, ge=2)  # M, images per step (per process)
    checkpoint_every: int = Field(default=1, ge=1)  # epochs between periodic checkpoints
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    keep_periodic: bool = False  # also keep epoch-numbered checkpoints beside last.pt
    log_every: int = Field(default=20, ge=1)  # steps between CSV flushes / host syncs
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    runs_dir: str = "runs"
    run_name: str | None = None
    progress: bool = True


class EvalConfig(Section):
    """Evaluation after pretraining: `linear` (paper 1: 100 epochs, Adam 1e-3, batch 128), `finetune` or `semi`.

    The linear probe's optimizer, schedule and lr scaling give paper 2's recipe (RCL §5.2: 90 epochs,
    LARS, Nesterov momentum 0.9, cosine lr 1 at batch 4096; configs/eval/linear_paper2.yaml). `semi`
    finetunes the whole network on a class-balanced `label_fraction` of the labelled train split
    (paper 2, Table 2) with the `finetune.*` settings. See docs/protocols/paper2.md.
    """

    linear: bool = True
    compare_random: bool | None = None  # None: on for the built-in digits set only
    epochs: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=128, ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    standardize: bool = False  # the headline linear_top1 on standardised features instead of raw
    report_standardized: bool = True  # also report linear_std_top1 (features z-scored with train stats)
    feature_batch_size: int = Field(default=512, ge=1)
    dataset: str | None = None  # transfer: evaluate on another dataset than the pretraining one
    root: str | None = None  # data root of eval.dataset
    protocol: Literal["linear", "finetune", "semi"] = "linear"
    optimizer: Literal["adam", "sgd", "lars"] = "adam"  # linear probe; sgd and lars use Nesterov momentum
    schedule: Literal["constant", "cosine"] = "constant"  # linear probe lr; cosine: annealed to 0 per step
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd / lars only
    lr_reference_batch: int | None = Field(default=None, ge=1)  # set: eval.lr is the lr at this batch, scaled linearly
    top5: bool | None = None  # linear top-5: None above 10 classes (paper 1), true above 5, false never
    label_fraction: float = Field(default=0.01, gt=0, le=1)  # semi: labelled share of every class
    subset_seed: int = Field(default=0, ge=0)  # semi: seed of the labelled subset (fixed across runs by default)

    @field_validator("optimizer")
    @classmethod
    def _lars_available(cls, name: str) -> str:
        import importlib.util

        if name == "lars" and importlib.util.find_spec("timm") is None:
            raise ValueError("'lars' uses timm.optim.Lars; install timm (pip install timm) or choose sgd")
        return name

    @field_validator("momentum")
    @classmethod
    def _nesterov_needs_momentum(cls, value: float, info: Any) -> float:  # info: pydantic.ValidationInfo
        if value == 0 and info.data.get("optimizer") in ("sgd", "lars"):
            raise ValueError(f"must be > 0 for eval.optimizer={info.data['optimizer']} (Nesterov momentum)")
        return value


class RunConfig(Section):
    """A whole `relssl train` run."""

    method: str = "relational"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    relational: RelationalConfig = Field(default_factory=RelationalConfig)
    simclr: SimCLRConfig = Field(default_factory=SimCLRConfig)
    deepcluster: DeepClusterConfig = Field(default_factory=DeepClusterConfig)
    dim: DIMConfig = Field(default_factory=DIMConfig)
    mocov2: MoCoV2Config = Field(default_factory=MoCoV2Config)
    mocov3: MoCoV3Config = Field(default_factory=MoCoV3Config)
    byol: BYOLConfig = Field(default_factory=BYOLConfig)
    simsiam: SimSiamConfig = Field(default_factory=SimSiamConfig)
    nnclr: NNCLRConfig = Field(default_factory=NNCLRConfig)
    rcl: RCLConfig = Field(default_factory=RCLConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        if name not in METHOD_NAMES:
            raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
        return name

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.data.dataset == "imagefolder" and not self.data.root:
            raise ValueError("data.root: the imagefolder dataset needs --data-root DIR")
        if self.eval.dataset is not None:
            from relssl.data import DATASET_NAMES

            if self.eval.dataset not in DATASET_NAMES:
                raise ValueError(f"eval.dataset: unknown dataset {self.eval.dataset!r}; choose from {', '.join(DATASET_NAMES)}")
            if self.eval.dataset == "imagefolder" and not self.eval.root:
                raise ValueError("eval.root: evaluating on imagefolder needs eval.root DIR")
        if self.relational.head != "mlp" and self.relational.aggregation != "cat":
            raise ValueError("relational.head: 'dot' and 'encoder' score the two members of a pair and need aggregation 'cat'")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dictionary of every setting."""
        return self.model_dump(mode="json")


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        msg = "unknown key; check the spelling against `relssl train --print-config`"
    return f"config key '{key}': {msg}{more}"


def parse_value(text: str) -> Any:
    """Parse a command-line value with YAML rules (numbers, booleans, null, lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c = value` inside a nested dictionary, creating sections as needed."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dictionary (safe loader only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of keys")
    return data


def build_config(tree: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Validate a nested dictionary plus dotted overrides into a RunConfig."""
    merged: dict[str, Any] = _deep_copy(tree or {})
    for key, value in (overrides or {}).items():
        set_dotted(merged, key, value)
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def _deep_copy(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}
