"""Open any trained backbone relssl knows: a run directory, last.pt, backbone.safetensors or an exported file.

    backbone = relssl.load_backbone("exported.safetensors")            # nn.Module in eval mode
    backbone, info = relssl.load_backbone_info("runs/RUN_DIR")        # plus its BackboneInfo

A safetensors file with relssl metadata (`relssl export --format safetensors`, or the
backbone.safetensors of a run trained since the metadata was added) carries its own description
and needs nothing beside it; the other kinds (run directories, checkpoints, and older
backbone.safetensors files with config.yaml beside them) are read through the run's config
(`relssl.train.artifacts.load_trained_backbone`), and their preprocessing is worked out from that
config the way training and evaluation did (`run_preprocess`).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from relssl.errors import CheckpointError
from relssl.models import BackboneConfig
from relssl.train.artifacts import load_trained_backbone
from relssl.train.backbone_info import EXPORT_FORMAT, BackboneInfo, run_backbone_info, run_preprocess
from relssl.train.checkpoint import WEIGHT_KEYS, load_checkpoint
from relssl.train.config import build_config

__all__ = ["load_backbone", "load_backbone_info"]


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
    return backbone, run_backbone_info(cfg, backbone, run_preprocess(cfg, run_dir), run_dir)
