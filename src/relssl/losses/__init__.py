"""Losses: Relational Reasoning pairs and focal BCE."""

from relssl.losses.relational import (
    AGGREGATIONS,
    aggregate,
    check_aggregation,
    focal_bce,
    negative_shifts,
    relational_pairs,
)

__all__ = ["AGGREGATIONS", "aggregate", "check_aggregation", "focal_bce", "negative_shifts", "relational_pairs"]
