"""`relssl export`: a trained backbone as safetensors with metadata, a torchvision/timm state dict, or ONNX."""

from __future__ import annotations

import argparse

from relssl.cli.options import RAW, wrap
from relssl.export import FORMATS, export_backbone

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  relssl export --checkpoint runs/RUN_DIR --format safetensors --output backbone.safetensors
  relssl export --checkpoint runs/RUN_DIR --format torchvision --output resnet18.pth
  relssl export --checkpoint runs/RUN_DIR --format timm --output resnet18_timm.pth
  relssl export --checkpoint runs/RUN_DIR --format onnx --output backbone.onnx    # needs relssl[onnx]

Each export prints the Python that loads it (docs/EXPORT.md has them all, with the CIFAR-stem notes).
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `export` to the `relssl` sub-commands."""
    p = sub.add_parser(
        "export", help="write a trained backbone for use outside relssl",
        description=wrap(
            "Write a trained backbone in a format other tools read, and check it right after writing. "
            "safetensors: the weights plus metadata (architecture and options, feature size, normalisation, "
            "image size, method, relssl version), enough for relssl.load_backbone(FILE). torchvision / timm: "
            "a state dict that loads with strict=True into torchvision.models.resnetXX() (fc set to Identity) "
            "or timm.create_model(NAME, num_classes=0); only ResNet-18/34/50 and timm: backbones have one. "
            "onnx: the backbone with a dynamic batch axis, compared with PyTorch by onnxruntime."),
        epilog=EPILOG, formatter_class=RAW,
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="run directory, last.pt, backbone.safetensors, or an exported .safetensors")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--output", required=True, metavar="FILE")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """`relssl export`: prints the file, the check it passed and the recipe that loads it."""
    result = export_backbone(args.checkpoint, args.format, args.output)
    info = result.info
    height, width = info.image_size
    print(f"exported {info.architecture} ({info.feature_dim}-d features) as {result.format}: {result.path}")
    print(f"check: {result.check}")
    print(f"inputs: RGB {height}x{width}, pixels in [0, 1] normalised with mean {_floats(info.mean)} and std "
          f"{_floats(info.std)} ({info.preprocess.mode} preprocessing, see docs/EXPORT.md)")
    print("load it with:\n" + "\n".join(f"    {line}" if line else "" for line in result.recipe.splitlines()))
    return 0


def _floats(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
