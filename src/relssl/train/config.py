"""A run's typed configuration, assembled from the registry: run-level sections plus the method's own.

    config = build_config(yaml_tree, {"optim.lr": 3e-4})

`RunConfig` holds `method`, `seed`, the `data`, `backbone`, `finetune`, `augment`, `optim`,
`train`, `eval` and `log` sections, and one section named after the method (e.g. `relational`) whose
model the method registered. Sections of other registered methods may appear in a tree (a grid's
base, an older checkpoint that carried every method's section): they are validated when given
by the user and then left out, so a run's config holds only what it runs.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from relssl.augment import AugmentConfig
from relssl.config import Section, describe_validation_error, validate_section
from relssl.data import DataConfig
from relssl.dicts import deep_copy, set_dotted
from relssl.errors import ConfigError
from relssl.evaluate import EvalConfig, FinetuneConfig
from relssl.methods import METHODS
from relssl.models import BackboneConfig
from relssl.optim import OptimConfig
from relssl.train.backbone_fit import fitted_image_size
from relssl.train.tracking import LogConfig

__all__ = ["DEFAULT_METHOD", "RunConfig", "TrainConfig", "build_config", "run_config_class", "run_sections"]

DEFAULT_METHOD = "relational"
#: Sections every run has, in the order a config file lists them; the method's own follows `backbone`.
RUN_SECTIONS = ("method", "seed", "data", "backbone", "finetune", "augment", "optim", "train", "eval", "log")


class TrainConfig(Section):
    """Schedule, checkpoints, logging and device settings."""

    epochs: int = Field(default=200, ge=1)
    max_steps: int | None = Field(default=None, ge=1)  # a fixed step budget overrides epochs
    batch_size: int = Field(default=64, ge=2)  # M, images per step over all processes (the global batch)
    checkpoint_every: int = Field(default=1, ge=1)  # epochs between periodic checkpoints
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    keep_periodic: bool = False  # also keep epoch-numbered checkpoints beside last.pt
    log_every: int = Field(default=20, ge=1)  # steps between CSV flushes / host syncs
    device: str = "auto"  # with several processes, auto/cuda mean each process's GPU (its local rank)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # process-group backend under torchrun; auto: nccl on GPUs
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"

    @field_validator("amp", "channels_last", mode="before")
    @classmethod
    def _yaml_switch(cls, value: object) -> object:
        """YAML reads a bare on / off (from a file or --set) as true / false: take them as the words."""
        if isinstance(value, bool):
            return "on" if value else "off"
        return value
    runs_dir: str = "runs"
    run_name: str | None = None
    progress: bool = True  # false (--no-progress): plain progress lines instead of bars, even on a terminal


class RunConfig(Section):
    """A whole `relssl train` run; `run_config_class(method)` adds the method's own section."""

    method: str = DEFAULT_METHOD
    seed: int = Field(default=0, ge=0, le=2**32 - 1)  # numpy's seeding takes 0 .. 2**32 - 1
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)  # optional trackers; a saved config without it gets the defaults

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS.names())}")
        if self.data.dataset == "imagefolder" and not self.data.root:
            raise ValueError("data.root: the imagefolder dataset needs --data-root DIR")
        if self.eval.dataset == "imagefolder" and not self.eval.root:
            raise ValueError("eval.root: evaluating on imagefolder needs eval.root DIR")
        image_size = fitted_image_size(self.method, self.backbone, self.data, self.augment)
        if image_size != self.data.image_size:  # a timm backbone's own size (relssl.train.backbone_fit)
            self.data.image_size = image_size
        return self

    @property
    def method_config(self) -> Section | None:
        """The running method's own section (None for a method without settings)."""
        value = getattr(self, self.method, None)
        return value if isinstance(value, Section) else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dictionary of every setting, the method's section after `backbone`."""
        tree = self.model_dump(mode="json")
        order = [*RUN_SECTIONS[:4], self.method, *RUN_SECTIONS[4:]]
        return {key: tree[key] for key in order if key in tree}


@cache
def _run_config_class(method: str, section: type[Section] | None) -> type[RunConfig]:
    if section is None:
        return RunConfig
    fields: dict[str, Any] = {method: (section, Field(default_factory=section))}
    model: type[RunConfig] = create_model(f"RunConfig_{method}", __base__=RunConfig, **fields)
    return model


def run_config_class(method: str) -> type[RunConfig]:
    """The RunConfig model of a run of `method`: the run-level sections and that method's section."""
    return _run_config_class(method, METHODS.get(method).config)


def run_sections(tree: dict[str, Any], method: str) -> dict[str, Any]:
    """`tree` without the sections of other registered methods (they configure runs of those methods)."""
    return {k: v for k, v in tree.items() if k == method or k not in METHODS}


def _check_other_sections(tree: dict[str, Any], method: str) -> None:
    """Validate the sections of methods this run does not use, so a typo in them still fails here."""
    for key, value in tree.items():
        if key == method or key in RUN_SECTIONS or key not in METHODS:
            continue
        section = METHODS.get(key).config
        if section is None:
            raise ConfigError(f"config key '{key}': method {key} has no settings")
        validate_section(section, value, prefix=key)


# Options whose default changed the computation (issue 12), with the value that reproduces a run
# saved before they existed. A saved config holds every field of its method's section, so one that
# lacks such a key was written earlier and meant the earlier behaviour.
EARLIER_BEHAVIOUR: dict[str, dict[str, Any]] = {
    "nnclr": {"softmax_over": "neighbours"},
    "simsiam": {"last_bn_affine": True},
    "mocov3": {"predictor_last_bn": False, "last_bn_affine": True},
    "dim": {"local_layer": "last", "discriminator": "dot", "negatives": "all", "global_weight": 0.0},
    "relational": {"label_positives": "flip", "label_balance": "weight", "labelled_batch_share": 0.0,
                   "labelled_batch_rest": "unlabelled"},
}


def _fill_earlier_behaviour(tree: dict[str, Any]) -> None:
    """Give a saved config's method section the earlier value of every option it predates."""
    method = tree.get("method", DEFAULT_METHOD)
    section = tree.get(method)
    if isinstance(method, str) and isinstance(section, dict):
        for key, value in EARLIER_BEHAVIOUR.get(method, {}).items():
            section.setdefault(key, value)


def build_config(tree: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None, *,
                 check_other_methods: bool = True) -> RunConfig:
    """Validate a nested dictionary plus dotted overrides into the RunConfig of the method they name.

    `check_other_methods=False` reads a saved config: other methods' sections are dropped
    unchecked (they may predate today's fields), and options its own section predates take their
    earlier behaviour (`EARLIER_BEHAVIOUR`), so an older checkpoint resumes as it was trained.
    """
    merged: dict[str, Any] = deep_copy(tree or {})
    if not check_other_methods:
        _fill_earlier_behaviour(merged)
    for key, value in (overrides or {}).items():
        set_dotted(merged, key, value)
    method = merged.get("method", DEFAULT_METHOD)
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"config key 'method': unknown method {method!r}; choose from {', '.join(METHODS.names())}")
    if check_other_methods:
        _check_other_sections(merged, method)
    try:
        return run_config_class(method).model_validate(run_sections(merged, method))
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err)) from None
