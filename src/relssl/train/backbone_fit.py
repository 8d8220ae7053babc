"""Start-up checks that a run's backbone fits its method and its images, and the image size it implies.

A backbone may declare the image side it is made for (a timm model: its pretrained config's
`input_size`, or its `img_size` option). That side is the run's default `data.image_size`; a
backbone with a fixed input size (a ViT's patch grid) accepts no other view size. A method that
needs intermediate feature maps (Deep InfoMax) refuses a backbone that gives pooled features only.
"""

from __future__ import annotations

from relssl.augment import AugmentConfig
from relssl.data import DataConfig
from relssl.methods import METHODS
from relssl.models import BACKBONES, BackboneConfig

__all__ = ["fitted_image_size"]


def fitted_image_size(method: str, backbone: BackboneConfig, data: DataConfig, augment: AugmentConfig) -> int | None:
    """The run's `data.image_size`: as set, else the backbone's own side (None: the dataset's native size).

    Raises ValueError naming the config key when the method needs more than pooled features from
    a backbone that gives only those, or when the views would not be the size a fixed-size backbone takes.
    """
    spec = backbone.spec()
    if METHODS.get(method).cls.needs_feature_maps and spec.pooled_only:
        maps = [entry.name for entry in BACKBONES if not entry.pooled_only]
        raise ValueError(f"backbone.name: method {method} needs the backbone's intermediate feature maps "
                         f"(forward_with_local); {backbone.name} gives pooled features only; choose one of "
                         f"{', '.join(maps)}")
    size = backbone.input_size()
    if size is None:
        return data.image_size
    image_size = data.image_size or size.side
    views = augment.size or image_size
    if size.fixed and views != size.side:
        key = "augment.size" if augment.size else "data.image_size"
        raise ValueError(f"{key}: {backbone.name} takes {size.side}x{size.side} images only, not {views}x{views}; "
                         f"set backbone.options.img_size={views} (with a patch_size that divides it) or "
                         f"{key}={size.side}")
    return image_size
