"""ONNX export of a backbone (eval mode, any batch size), checked by onnxruntime against PyTorch.

Needs the optional extra `relssl[onnx]` (onnx, onnxruntime, onnxscript). The graph's input is
`images`, float (batch, 3, H, W) already normalised (see the file's metadata_props: mean, std,
image_size); its output `features`, (batch, feature_dim).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from relssl.errors import CheckpointError, ConfigError
from relssl.train.backbone_info import BackboneInfo

__all__ = ["ONNX_TOLERANCE", "export_onnx", "onnx_difference"]

#: Largest absolute difference between onnxruntime's and PyTorch's features that passes the check.
ONNX_TOLERANCE = 1e-4
_EXTRA = ("onnx", "onnxruntime", "onnxscript")


def _require_extra() -> None:
    """A one-line ConfigError with the install command when the onnx extra is missing."""
    missing = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"--format onnx needs {', '.join(missing)}: pip install 'relssl[onnx]'")


def export_onnx(backbone: nn.Module, info: BackboneInfo, path: Path) -> float:
    """Write `backbone` as ONNX to `path` (written beside it, renamed when checked); return the check's max |diff|.

    A difference above ONNX_TOLERANCE is a CheckpointError and leaves no file behind.
    """
    _require_extra()
    import onnx

    backbone = backbone.eval().cpu()
    height, width = info.image_size
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _export_quietly(backbone, example, tmp, info.architecture)
        model = onnx.load(str(tmp))
        for key, value in info.to_metadata().items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(tmp))
        diff = onnx_difference(backbone, tmp, (height, width))
        if diff > ONNX_TOLERANCE:
            raise CheckpointError(f"the ONNX export of {info.architecture} differs from PyTorch by {diff:.2e} "
                                  f"(> {ONNX_TOLERANCE:g}); nothing was written to {path}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def _export_quietly(backbone: nn.Module, example: torch.Tensor, tmp: Path, name: str) -> None:
    """torch.onnx.export with a dynamic batch axis, its step-by-step printing kept out of the user's output."""
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            warnings.simplefilter("ignore")  # the exporter's own deprecation and tracing notes
            torch.onnx.export(backbone, (example,), str(tmp), input_names=["images"], output_names=["features"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True, verbose=False,
                              external_data=False)
    except Exception as err:  # noqa: BLE001 - an operator the exporter cannot translate, reported in one line
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise CheckpointError(f"torch.onnx.export cannot export {name} ({detail}); use --format safetensors, or "
                              "RELSSL_DEBUG=1 for the traceback") from err


@torch.no_grad()
def onnx_difference(backbone: nn.Module, path: Path, image_size: tuple[int, int], batch: int = 3) -> float:
    """Max |onnxruntime - PyTorch| over the features of a seeded random batch (another size than the export's)."""
    import onnxruntime

    x = torch.randn(batch, 3, *image_size, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["features"], {"images": x.numpy()})[0])
    return float((got - backbone.eval().cpu()(x)).abs().max())
