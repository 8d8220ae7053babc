"""`export_backbone`: a trained backbone written in a format other tools read, each one checked on write.

* ``safetensors``: the weights plus `BackboneInfo` metadata, enough for `relssl.load_backbone`;
* ``torchvision`` / ``timm``: a `torch.save`d dict of plain tensors that loads with strict=True
  into the library's model once the recipe has set the classifier aside (`relssl.export.state_dicts`);
* ``onnx``: the graph, compared with PyTorch by onnxruntime (`relssl.export.onnx_export`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from relssl.errors import CheckpointError, ConfigError
from relssl.export.loading import load_backbone_info
from relssl.export.onnx_export import export_onnx
from relssl.export.state_dicts import state_dict_export
from relssl.files import atomic_write
from relssl.train.backbone_info import BackboneInfo

__all__ = ["FORMATS", "ExportResult", "export_backbone"]

FORMATS = ("safetensors", "torchvision", "timm", "onnx")
STATE_DICT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ExportResult:
    """What was written and how to use it."""

    path: Path
    format: str
    info: BackboneInfo
    recipe: str  # Python that loads the file
    check: str  # what was verified after writing, e.g. "onnxruntime vs PyTorch: max |diff| 3.1e-07"


def export_backbone(checkpoint: str | Path, format: str, output: str | Path) -> ExportResult:
    """Export the backbone at `checkpoint` (run directory, .pt or .safetensors) as `format` to `output`."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")
    backbone, info = load_backbone_info(checkpoint)
    path = Path(output)
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give the file to write, e.g. {path / f'backbone.{format}'}")
    if format == "safetensors":
        return _safetensors(backbone, info, path)
    if format == "onnx":
        diff = export_onnx(backbone, info, path)
        recipe = "\n".join(["import onnxruntime", "", f'session = onnxruntime.InferenceSession("{path}")',
                            'features = session.run(["features"], {"images": images})[0]  # images: normalised '
                            "float32 (B, 3, H, W)"])
        return ExportResult(path, format, info, recipe, f"onnxruntime vs PyTorch: max |diff| {diff:.2e}")
    return _state_dict(backbone, info, format, path)


def _safetensors(backbone: nn.Module, info: BackboneInfo, path: Path) -> ExportResult:
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=info.to_metadata()))
    recipe = "\n".join(["import relssl", "", f'backbone = relssl.load_backbone("{path}")  # nn.Module, eval mode',
                        "info = backbone.relssl_info  # mean, std, image_size, feature_dim, preprocess"])
    return ExportResult(path, "safetensors", info, recipe, "written with its metadata")


def _state_dict(backbone: nn.Module, info: BackboneInfo, library: str, path: Path) -> ExportResult:
    export = state_dict_export(backbone, info, library)
    diff = _check_state_dict(backbone, export.state, export.build_target, info)
    _atomic(path, lambda tmp: torch.save(export.state, tmp))
    return ExportResult(path, library, info, export.recipe.replace("FILE", str(path)),
                        f"loaded with strict=True into the {library} model: max |diff| {diff:.2e}")


@torch.no_grad()
def _check_state_dict(backbone: nn.Module, state: dict[str, torch.Tensor], build: Callable[[], nn.Module],
                      info: BackboneInfo) -> float:
    """Load `state` strictly into the library's model and compare its features with the backbone's."""
    target = build()
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"the {info.architecture} weights do not load into the library's model ({detail}); "
                              "use --format safetensors or onnx") from None
    x = torch.randn(2, 3, *info.image_size, generator=torch.Generator().manual_seed(0))
    diff = float((target.eval()(x) - backbone.eval().cpu()(x)).abs().max())
    if diff > STATE_DICT_TOLERANCE * max(1.0, float(backbone(x).abs().max())):
        raise CheckpointError(f"the {info.architecture} weights load into the library's model but its features "
                              f"differ by {diff:.2e}; use --format safetensors or onnx")
    return diff


def _export_error(path: Path, err: BaseException) -> CheckpointError:
    """The one-line error of a refused export write."""
    detail = err.strerror if isinstance(err, OSError) and err.strerror else err
    return CheckpointError(f"cannot write {path} ({detail}); free space or choose another --output")


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write `path` through a temporary file beside it, readable by all, renamed when complete."""
    atomic_write(path, write, _export_error, mode=0o644)
