"""Taking a trained backbone away: embeddings of a folder, exported files, and loading them back.

    relssl.load_backbone("backbone.safetensors")                     # rebuilt from the file alone
    export_backbone("runs/RUN_DIR", "torchvision", "resnet18.pth")    # strict-loadable state dict
    embed_folder("runs/RUN_DIR", "photos/", "emb/")                   # emb/embeddings.npy + files.txt

See docs/EXPORT.md for the formats and the exact loading recipes.
"""

from relssl.export.embed import EmbedResult, embed_folder, list_folder
from relssl.export.exporter import FORMATS, ExportResult, export_backbone
from relssl.export.loading import load_backbone, load_backbone_info
from relssl.train.backbone_info import EXPORT_FORMAT, BackboneInfo, run_preprocess
from relssl.train.preprocess import Preprocess

__all__ = ["EXPORT_FORMAT", "FORMATS", "BackboneInfo", "EmbedResult", "ExportResult", "Preprocess", "embed_folder",
           "export_backbone", "list_folder", "load_backbone", "load_backbone_info", "run_preprocess"]
