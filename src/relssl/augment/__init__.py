"""Batched per-sample augmentation producing K views of each image (see ``views.ViewAugment``).

``config.py`` holds the validated ``AugmentConfig``, ``params.py`` draws every view's random
parameters at once, ``ops.py`` has the batched functional ops, ``views.py`` puts them together.
``augment.recipe`` names the view distribution: ``paper1`` (Relational Reasoning's CIFAR pipeline,
the default) or ``byol`` (BYOL's, with per-view Gaussian blur and solarisation; paper 2's), see
docs/protocols/paper2.md.
"""

# Library or own code? Measured on the 2-core "Intel(R) Xeon(R) Processor" dev box (torch 2.15,
# torchvision 0.29, kornia 0.9, 2 intra-op threads), K=32 views of M=64 real CIFAR-10 32x32
# images, full pipeline (crop, flip, jitter p=0.8, gray p=0.2, normalise), ranges over three
# runs of `benchmarks/augment_throughput.py --libraries` (the box is shared, so they vary):
#
#   relssl ViewAugment (uint8 in)           36,000-44,000 views/s   per-sample parameters
#   kornia.augmentation (float in)           5,100-10,200 views/s   per-sample parameters
#   torchvision.transforms.v2 on the batch  10,700-36,000 views/s   ONE parameter set per call:
#                                                                   all views of a batch share
#                                                                   crop/flip/jitter (verified)
#   torchvision v2, Python loop per image    2,000- 2,200 views/s   per-sample
#   reference: PIL per image, DataLoader(2 workers) 4,900-5,100 views/s
#
# So: own code. It is 4-7x faster than kornia (which also draws its ColorJitter op order once
# per batch, not per view), and v2 is not per-sample on batches. kornia is not a dependency.
# Crop+resize+flip: one grid_sample per chunk of views, 2.1 ms per 340 views on 1 thread,
# ~13 ms per 2048; torchvision.ops.roi_align (a flip = the box's x-ends swapped; same pixels
# to 2e-7) took 5.7 ms per chunk and 35 ms on the whole batch. Hue (the HSV round trip) is the
# most expensive op, hence its folded closed form in ops.py.
# Chunking the views (CPU only, 4 MB per thread) so each chunk's ~60 elementwise passes stay
# in L2 made the whole pipeline 1.7x faster than one 25 MB batch. The per-view random jitter
# order costs within ~5% of a fixed order at these chunk sizes on an idle machine (the views
# are produced pre-grouped by their first op and regrouped 3 times, see ops.py).
# Caveat: like any multi-threaded torch CPU code, this slows down sharply when other
# processes oversubscribe the cores (OpenMP barriers); with 1 thread it still does ~24,000
# views/s. Use OMP_WAIT_POLICY=PASSIVE or fewer torch threads on a shared machine. The random
# jitter order runs each op on quarter-size slices (~4x more kernel calls), so it suffers
# more there than AugmentConfig(jitter_order="fixed").

from relssl.augment.config import CIFAR10_MEAN, CIFAR10_STD, RECIPES, AugmentConfig
from relssl.augment.views import ViewAugment, to_normalized

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "RECIPES", "AugmentConfig", "ViewAugment", "to_normalized"]
