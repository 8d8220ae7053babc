"""`relssl embed`: every image of a folder through a trained backbone, into embeddings.npy + files.txt."""

from __future__ import annotations

import argparse

from relssl.cli.options import RAW, positive_int, wrap
from relssl.distributed import resolve_device
from relssl.errors import ConfigError
from relssl.export import embed_folder

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  relssl embed --checkpoint runs/RUN_DIR --images photos/ --output emb/
  relssl embed --checkpoint resnet18.safetensors --images photos/ --output emb/ --normalize --device cuda
  relssl embed --checkpoint runs/RUN_DIR --images photos/ --output emb/     # again: continues or says it is done

  python -c "import numpy as np; x = np.load('emb/embeddings.npy'); print(x.shape)"
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `embed` to the `relssl` sub-commands."""
    p = sub.add_parser(
        "embed", help="embed every image of a folder with a trained backbone",
        description=wrap(
            "Embed every image under --images (recursively, in sorted order) with a trained backbone: "
            "OUTPUT/embeddings.npy (float32, one row per image) and OUTPUT/files.txt (the image paths relative to "
            "--images, in the same order). Images get the backbone's evaluation preprocessing (its image size, "
            "resize rule and normalisation). Unreadable files are skipped and listed in OUTPUT/unreadable.txt. "
            "An interrupted run continues where it stopped when run again with the same inputs; a finished one "
            "is not redone."),
        epilog=EPILOG, formatter_class=RAW,
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="run directory, last.pt, backbone.safetensors, or a file from relssl export --format safetensors")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images (sub-folders included)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write the embeddings into")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=False,
                   help="L2-normalise each embedding (default: raw features)")
    p.add_argument("--workers", type=positive_int, help="decoding threads (default: the CPUs available)")
    p.add_argument("--restart", action="store_true",
                   help="discard what OUTPUT holds from other inputs (another checkpoint, a changed folder) and start over")
    p.add_argument("--no-progress", action="store_true", help="show no progress bar or progress lines")
    p.set_defaults(run=run, interrupt_hint="run the same command again to continue where it stopped")
    return p


def run(args: argparse.Namespace) -> int:
    """`relssl embed`: prints where the embeddings went."""
    try:
        device = resolve_device(args.device)
    except ConfigError:
        raise ConfigError(f"--device {args.device}: not a device here; use auto, cpu, cuda or cuda:N (CUDA only "
                          "where it is available)") from None
    result = embed_folder(args.checkpoint, args.images, args.output, batch_size=args.batch_size,
                          device=device, normalize=args.normalize,
                          progress=not args.no_progress, restart=args.restart, workers=args.workers)
    if result.already_done:
        print(f"{result.output} already holds these embeddings ({result.embedded} images); nothing to do "
              "(--restart recomputes them)")
        return 0
    resumed = f", continued from image {result.resumed_at}" if result.resumed_at else ""
    print(f"embedded {result.embedded} of {result.images} images{resumed}: {result.output / 'embeddings.npy'}, "
          f"{result.output / 'files.txt'}")
    return 0
