"""Build the method named in a run configuration around a backbone."""

from __future__ import annotations

from torch import nn

from relssl.config import RunConfig
from relssl.methods.base import Method


def create_method(config: RunConfig, backbone: nn.Module, *, num_images: int, num_classes: int) -> Method:
    """Return the configured method for a training split of `num_images` images and `num_classes` labels."""
    name = config.method
    if name == "relational":
        from relssl.methods.relational import RelationalReasoning

        rel = config.relational
        return RelationalReasoning(
            backbone, k=rel.k, aggregation=rel.aggregation, gamma=rel.gamma, head=rel.head,
            head_hidden=rel.head_hidden, encoder_dim=rel.encoder_dim, use_labels=rel.labelled_fraction > 0,
        )
    if name == "simclr":
        from relssl.methods.simclr import SimCLR

        sim = config.simclr
        return SimCLR(backbone, temperature=sim.temperature, form=sim.form,
                      projector_hidden=sim.projector_hidden, projector_dim=sim.projector_dim)
    if name == "rotnet":
        from relssl.methods.rotnet import RotationNet

        return RotationNet(backbone)
    if name == "deepcluster":
        from relssl.methods.deepcluster import DeepCluster

        dc = config.deepcluster
        return DeepCluster(backbone, num_images=num_images, num_clusters=dc.num_clusters, pca_dim=dc.pca_dim,
                           kmeans_iters=dc.kmeans_iters)
    if name == "dim":
        from relssl.methods.dim import DeepInfoMax

        dim = config.dim
        return DeepInfoMax(backbone, local_weight=dim.local_weight, prior_weight=dim.prior_weight,
                           embed_dim=dim.embed_dim)
    if name in ("mocov2", "mocov3", "byol", "simsiam", "nnclr"):
        return _two_view_method(config, backbone)
    if name == "rcl":
        from relssl.methods.rcl import RCL

        return RCL.from_config(config.rcl, backbone, num_images=num_images, seed=config.seed)
    if name == "supervised":
        from relssl.methods.supervised import Supervised

        return Supervised(backbone, num_classes=num_classes)
    raise ValueError(f"unknown method {name!r}")


def _two_view_method(config: RunConfig, backbone: nn.Module) -> Method:
    """The momentum / siamese baselines: their config section's fields are their constructor's keywords."""
    from relssl.methods.byol import BYOL
    from relssl.methods.mocov2 import MoCoV2
    from relssl.methods.mocov3 import MoCoV3
    from relssl.methods.nnclr import NNCLR
    from relssl.methods.simsiam import SimSiam

    classes = {"mocov2": MoCoV2, "mocov3": MoCoV3, "byol": BYOL, "simsiam": SimSiam, "nnclr": NNCLR}
    options = getattr(config, config.method).model_dump()
    return classes[config.method](backbone, **options)
