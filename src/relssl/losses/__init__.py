"""Losses: Relational Reasoning pairs and focal BCE, NT-Xent / InfoNCE, Deep InfoMax, Relative Contrastive Loss."""

from relssl.losses.contrastive import NT_XENT_FORMS, cross_view_nce, info_nce, negative_cosine, nt_xent
from relssl.losses.infomax import DIMHeads, jsd_mi, jsd_mi_local
from relssl.losses.relational import (
    AGGREGATIONS,
    aggregate,
    check_aggregation,
    focal_bce,
    negative_shifts,
    relational_pairs,
)
from relssl.losses.relative import relative_contrastive_loss

__all__ = ["relative_contrastive_loss", "NT_XENT_FORMS", "cross_view_nce", "negative_cosine", "info_nce", "nt_xent", "DIMHeads", "jsd_mi", "jsd_mi_local", "AGGREGATIONS", "aggregate", "check_aggregation", "focal_bce", "negative_shifts", "relational_pairs"]
