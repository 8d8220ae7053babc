"""Open any trained backbone relssl knows: a run directory, last.pt, backbone.safetensors or an exported file.

    backbone = relssl.load_backbone("exported.safetensors")            # nn.Module in eval mode
    backbone, info = relssl.load_backbone_info("runs/RUN_DIR")        # plus its BackboneInfo

An exported safetensors file (`relssl export --format safetensors`) carries its own description
and needs nothing beside it; the other kinds are read through the run's config
(`relssl.train.artifacts.load_trained_backbone`), and their preprocessing is worked out from that
config the way training and evaluation did (`run_preprocess`).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from relssl.errors import CheckpointError, DataError
from relssl.export.info import EXPORT_FORMAT, BackboneInfo
from relssl.export.preprocess import Preprocess
from relssl.models import BackboneConfig
from relssl.models.backbone import feature_dim
from relssl.train.artifacts import load_trained_backbone
from relssl.train.checkpoint import WEIGHT_KEYS, load_checkpoint
from relssl.train.config import RunConfig, build_config
from relssl.train.inputs import TrainingInputs, eval_resize, open_training_inputs

__all__ = ["load_backbone", "load_backbone_info", "run_preprocess"]


def load_backbone(path: str | Path) -> nn.Module:
    """The trained backbone stored at `path`, in eval mode on the CPU (see `load_backbone_info`).

    The module's `feature_dim` is its feature size; `relssl_info` holds its `BackboneInfo`
    (architecture, normalisation mean/std, image size, preprocessing).
    """
    return load_backbone_info(path)[0]


def load_backbone_info(path: str | Path) -> tuple[nn.Module, BackboneInfo]:
    """(backbone in eval mode on the CPU, its BackboneInfo) from a run directory, .pt or .safetensors file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory, last.pt, backbone.safetensors or a "
                              "file written by relssl export --format safetensors")
    meta = _safetensors_metadata(path) if path.suffix == ".safetensors" else {}
    if meta.get("format") == EXPORT_FORMAT:
        backbone, info = _from_export(path, meta)
    else:
        backbone, info = _from_run(path)
    backbone.eval()
    backbone.relssl_info = info  # type: ignore[assignment]  # a plain attribute, not a submodule
    return backbone, info


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (empty when it has none)."""
    try:
        with safe_open(path, framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as err:
        detail = " ".join(str(err).split())[:200]
        raise CheckpointError(f"cannot read {path} ({type(err).__name__}: {detail}); the file is cut short or "
                              "not safetensors") from None


def _from_export(path: Path, meta: dict[str, str]) -> tuple[nn.Module, BackboneInfo]:
    """Rebuild the backbone an exported file describes and load its weights (strict)."""
    info = BackboneInfo.from_metadata(meta, str(path))
    try:
        config = BackboneConfig.model_validate(info.backbone)
    except ValueError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: cannot rebuild backbone {info.architecture!r} ({detail}); a backbone "
                              "from a plugin or a newer relssl needs that plugin or version installed") from None
    backbone = config.build()
    try:
        backbone.load_state_dict(load_file(path), strict=True)
    except (RuntimeError, SafetensorError) as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: weights do not fit {info.architecture} ({detail})") from None
    return backbone, info


def _from_run(path: Path) -> tuple[nn.Module, BackboneInfo]:
    """A run's backbone, described from its config and (when there) its checkpoint's normalisation."""
    backbone, config, _ = load_trained_backbone(path)
    normalization = None
    if path.suffix == ".safetensors" and (path.parent / "last.pt").is_file():  # a run's bare weights file
        normalization = load_checkpoint(path.parent / "last.pt", require=WEIGHT_KEYS).get("normalization")
    if normalization:
        config["augment"]["mean"], config["augment"]["std"] = normalization["mean"], normalization["std"]
    cfg = build_config(config, check_other_methods=False)
    run_dir = path if path.is_dir() else path.parent
    info = BackboneInfo(architecture=cfg.backbone.name, backbone=cfg.backbone.model_dump(mode="json"),
                        feature_dim=feature_dim(backbone), preprocess=run_preprocess(cfg, run_dir),
                        method=cfg.method, source=str(run_dir.resolve()))
    return backbone, info


def run_preprocess(cfg: RunConfig, where: Path | str = "the run") -> Preprocess:
    """The evaluation preprocessing of a run, as its training and `relssl eval` applied it.

    The streaming path centre-crops `augment.size` (else `data.image_size`, else 224) after
    resizing the shorter side to `data.eval_resize`; the decoded path fits images to the size the
    training split was decoded at (`data.image_size`, else its native size) and resizes that to
    `augment.size` when set. Native sizes and measured mean/std come from the training split, as
    training took them (read without downloading).
    """
    aug, data = cfg.augment, cfg.data
    known_size = data.stream is True or data.image_size is not None
    needs_data = aug.mean is None or aug.std is None or not known_size
    inputs = _training_inputs(cfg, where) if needs_data else None
    streamed = data.stream is True if inputs is None else inputs.listing is not None
    if inputs is not None:
        aug = inputs.augment_config(cfg)
    mean, std = aug.normalization()
    if streamed:
        crop = aug.size or data.image_size or 224
        return Preprocess("crop", (crop, crop), mean, std, resize=eval_resize(cfg, crop))
    if data.image_size is not None:
        size = (data.image_size, data.image_size)
    else:
        assert inputs is not None and inputs.arrays is not None
        size = (int(inputs.arrays.images.shape[1]), int(inputs.arrays.images.shape[2]))
    return Preprocess("fit", size, mean, std, input_size=aug.size)


def _training_inputs(cfg: RunConfig, where: Path | str) -> TrainingInputs:
    """The run's training split (never downloaded); a CheckpointError saying why it is needed when unreadable."""
    offline = cfg.model_copy(update={"data": cfg.data.model_copy(update={"download": False})})
    try:
        return open_training_inputs(offline, progress=False)
    except DataError as err:
        raise CheckpointError(
            f"{where}: the image size or normalisation the backbone was trained with is not recorded, and its "
            f"training data ({cfg.data.dataset}) cannot be read to measure it ({err}). Make the data available, "
            "or export the backbone where it is (relssl export --format safetensors records both)") from None
