"""Online hierarchical clustering of RCL (Tang et al., ECCV 2022, §4.3).

A warm-up DBSCAN per level (`initialize`) followed by per-batch refinement (`update`): from the
bottom level up, every cluster the batch touches is split around the density peaks of its child
clusters, then merged with its siblings (same parent one level up) whose centres are close.
Splits and merges move whole child clusters between siblings of a `ClusterTree`, so the labels
stay nested. Every choice the paper leaves open is listed in docs/methods/online_hierarchy.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from relssl.cluster.density_peak import ASSIGN_MODES, assign_to_prototypes, connected_components
from relssl.cluster.offline import check_radii, dbscan_hierarchy, normalize_features
from relssl.cluster.tree import ClusterTree, positive_int

PAPER_RADII = (0.6, 0.7, 0.8)  # r = 0.8/0.7/0.6 in the paper, listed here finest level first


def default_radii(num_levels: int) -> tuple[float, ...]:
    """The paper's (0.6, 0.7, 0.8) for 4 levels; otherwise evenly spaced in [0.6, 0.8]."""
    k = num_levels - 1
    if k == len(PAPER_RADII):
        return PAPER_RADII
    if k <= 1:
        return (0.7,) * k
    return tuple(round(0.6 + 0.2 * i / (k - 1), 6) for i in range(k))


@dataclass(frozen=True)
class UpdateStats:
    """What one `update` did, per level 1..L-1."""

    touched: tuple[int, ...]  # clusters holding at least one batch sample
    processed: tuple[int, ...]  # of those, split/merge candidates after max_clusters_per_level
    checked: tuple[int, ...]  # of those, due for a split check (see recheck_fraction)
    created: tuple[int, ...]  # new clusters created by splits
    merged: tuple[int, ...]  # clusters merged away into a sibling


class OnlineHierarchy(ClusterTree):
    """RCL's online hierarchical clustering: (N, L) labels kept nested while features change.

    Level 0 is the instance level (labels[:, 0] == arange(N)); levels 1..L-1 are clusters from
    the DBSCAN radii, finest first. See docs/methods/online_hierarchy.md for every choice the
    paper leaves open.
    """

    def __init__(
        self,
        num_samples: int,
        num_levels: int,
        *,
        radii: Sequence[float] | None = None,
        min_samples: int = 4,
        merge_threshold: float | Sequence[float] | None = None,
        split_scale: float = 1.0,
        assign: str = "nearest",
        feature_momentum: float = 0.0,
        recheck_fraction: float = 0.25,
        max_clusters_per_level: int = 1024,
        max_units: int = 256,
        split_budget: int = 1024,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(num_samples, num_levels, device)
        k = self.num_levels - 1
        self.radii = default_radii(self.num_levels) if radii is None else check_radii(radii) if k else ()
        if len(self.radii) != k:
            raise ValueError(f"radii must have num_levels - 1 = {k} values (levels 1..{k}); got {self.radii}")
        self.min_samples = positive_int("min_samples", min_samples)
        # Default: centres closer than the level's DBSCAN radius, cos > 1 - r^2 / 2 (0.82 / 0.755 / 0.68).
        if merge_threshold is None:
            merge_threshold = tuple(1.0 - r * r / 2.0 for r in self.radii)
        self.merge_threshold = _per_level("merge_threshold", merge_threshold, k, -1.0, 1.0)
        if not (isinstance(split_scale, (int, float)) and math.isfinite(split_scale) and split_scale > 0):
            raise ValueError(f"split_scale must be a finite float > 0; got {split_scale!r}")
        self.split_scale = float(split_scale)
        if assign not in ASSIGN_MODES:
            raise ValueError(f"assign must be one of {ASSIGN_MODES}; got {assign!r}")
        self.assign = assign
        if not (isinstance(feature_momentum, (int, float)) and 0.0 <= feature_momentum < 1.0):
            raise ValueError(f"feature_momentum must be a float in [0, 1); got {feature_momentum!r}")
        self.feature_momentum = float(feature_momentum)
        if not (isinstance(recheck_fraction, (int, float)) and 0.0 <= recheck_fraction <= 1.0):
            raise ValueError(f"recheck_fraction must be a float in [0, 1]; got {recheck_fraction!r}")
        self.recheck_fraction = float(recheck_fraction)
        self.max_clusters_per_level = positive_int("max_clusters_per_level", max_clusters_per_level)
        self.max_units = positive_int("max_units", max_units)
        if self.max_units < 2:
            raise ValueError(f"max_units must be >= 2; got {max_units}")
        self.split_budget = positive_int("split_budget", split_budget)
        self.conformity: float | None = None
        self.conformity_per_level: tuple[float, ...] = ()

    # ------------------------------------------------------------------ warm-up

    def initialize(self, features: torch.Tensor | np.ndarray) -> None:
        """Warm-up stage: DBSCAN every level on all N features, then enforce the nesting.

        Features are L2-normalised; DBSCAN noise points become singleton clusters; each
        cluster joins the parent holding most of its members (see `offline.enforce_hierarchy`).
        Sets `conformity`, the share of samples that nested before that enforcement.
        """
        x = normalize_features(features).cpu()
        if x.shape[0] != self.num_samples:
            raise ValueError(f"features must have num_samples = {self.num_samples} rows; got {x.shape[0]}")
        if self.num_levels > 1:
            labels, self.conformity, self.conformity_per_level = dbscan_hierarchy(x, self.radii, self.min_samples)
        else:
            labels, self.conformity = torch.arange(self.num_samples).unsqueeze(1), 1.0
        self.reset(x.to(self.device), labels.to(self.device))

    # ------------------------------------------------------------------ online refinement

    def update(self, indices: torch.Tensor, features: torch.Tensor) -> UpdateStats:
        """Write a batch into the feature bank, then split and merge the clusters it touches.

        Bottom-up for levels 1..L-1: of the touched clusters (at most `max_clusters_per_level`,
        those holding the most batch samples), the ones due (`recheck_fraction`) are split
        around the density peaks of their child clusters; then all of them, and the new parts,
        merge with siblings whose centres have cosine > merge_threshold. Duplicate indices keep
        their first occurrence. Returns what was done per level.
        """
        bank = self._require_initialized()
        idx, feats = self._check_batch(indices, features)
        k = self.num_levels - 1
        if idx.numel() == 0:
            return UpdateStats(*([(0,) * k] * 5))
        m = self.feature_momentum
        new = feats if m == 0.0 else F.normalize(m * bank[idx] + (1.0 - m) * feats, dim=1, eps=1e-12)
        self.write_features(idx, new)
        stats: list[list[int]] = [[], [], [], [], []]
        below = idx
        for h in range(1, self.num_levels):
            ids, hits = torch.unique(self._parent[h - 1][below], return_counts=True)
            stats[0].append(ids.numel())
            if ids.numel() > self.max_clusters_per_level:
                keep = torch.sort(-hits, stable=True).indices[: self.max_clusters_per_level]
                ids = torch.sort(ids[keep]).values
            due = self._due_for_split(h, ids)
            new_ids = self._split_clusters(h, due)
            self._stale[h - 1][due] = 0
            merged = self._merge_siblings(h, torch.cat([ids, new_ids]))
            for i, v in enumerate((ids.numel(), due.numel(), new_ids.numel(), merged), start=1):
                stats[i].append(v)
            below = self._parent[h - 1][below]
        return UpdateStats(*(tuple(v) for v in stats))

    def _due_for_split(self, h: int, ids: torch.Tensor) -> torch.Tensor:
        """Clusters whose rewritten share reached recheck_fraction, most stale first, within
        split_budget units (at least one cluster), sorted by id."""
        stale, count = self._stale[h - 1][ids].double(), self._counts[h - 1][ids].double()
        ready = stale >= self.recheck_fraction * count
        due, ratio = ids[ready], (stale / count)[ready]
        if due.numel() == 0:
            return due
        if h == 1:
            units = self._counts[0][due]
        else:
            below = self._parent[h - 2]
            units = torch.bincount(below[below >= 0], minlength=self.num_samples)[due]
        order = torch.sort(-ratio, stable=True).indices
        cost = torch.cumsum(units[order].clamp_max(self.max_units), 0)
        take = order[(cost <= self.split_budget) | (torch.arange(order.numel(), device=self.device) == 0)]
        return torch.sort(due[take]).values

    def _split_clusters(self, h: int, ids: torch.Tensor) -> torch.Tensor:
        """Density-peak split of the level-h clusters `ids`; returns the ids it created.

        Parts of one cluster whose centres have cosine > merge_threshold are joined again
        before anything moves, so a split is never undone by the merge that follows it.
        """
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        if ids.numel() == 0:
            return empty
        units = torch.nonzero(self._children_mask(h, ids)).flatten()
        if units.numel() < 2:
            return empty
        groups = self._parent[h - 1][units]
        order = torch.sort(groups, stable=True).indices
        units, groups = units[order], groups[order]
        gids, sizes = torch.unique_consecutive(groups, return_counts=True)
        if int(sizes.max()) < 2:
            return empty
        weights = self._unit_counts(h, units)
        r = self.radii[h - 1]
        centres = self.centres(h - 1, units)
        owner = assign_to_prototypes(
            centres, weights.float(), sizes, cutoff=r, min_delta=self.split_scale * r,
            assign=self.assign, max_units=self.max_units,
        )
        rows = torch.arange(units.numel(), device=self.device)
        # Prototypes own themselves and every owner is one (owner[owner] == owner), so each unit's part gets an id.
        protos = torch.nonzero(owner == rows).flatten()
        if protos.numel() == gids.numel():
            return empty
        group_of_row = torch.repeat_interleave(torch.arange(gids.numel(), device=self.device), sizes)
        proto_group = group_of_row[protos]
        # Join parts of one cluster that the merge step would put back together.
        vectors = centres if h == 1 else self._sums[h - 2][units].float()
        members = (owner.unsqueeze(0) == protos.unsqueeze(1)).float()  # (P, U): a matmul is deterministic
        pc = F.normalize(members @ vectors, dim=1, eps=1e-30)
        close = (pc @ pc.T > self.merge_threshold[h - 1]) & (proto_group.unsqueeze(1) == proto_group.unsqueeze(0))
        close.fill_diagonal_(False)
        a, b = torch.nonzero(close, as_tuple=True)
        comp = connected_components(protos.numel(), a, b)
        remap = rows.clone()
        remap[protos] = protos[comp]
        owner = remap[owner]
        protos = torch.unique(protos[comp])
        if protos.numel() == gids.numel():
            return empty
        proto_group = group_of_row[protos]
        part_size = torch.zeros_like(weights).index_add_(0, owner, weights)[protos]
        # Per group: the largest part keeps the cluster's id (ties: the first prototype row).
        order = torch.sort(-part_size, stable=True).indices
        order = order[torch.sort(proto_group[order], stable=True).indices]
        protos, proto_group = protos[order], proto_group[order]
        keeper = torch.ones_like(protos, dtype=torch.bool)
        keeper[1:] = proto_group[1:] != proto_group[:-1]
        target = gids[proto_group]
        new_ids = self._fresh_ids(h, int((~keeper).sum()))
        target[~keeper] = new_ids
        if h < self.num_levels - 1:
            self._parent[h][new_ids] = self._parent[h][gids[proto_group[~keeper]]]
        id_of_row = torch.full_like(rows, -1)
        id_of_row[protos] = target
        self._move_units(h, units, id_of_row[owner])
        return new_ids

    def _merge_siblings(self, h: int, ids: torch.Tensor) -> int:
        """Merge clusters `ids` with same-parent siblings of cosine > threshold; returns #merged."""
        ids = torch.unique(ids)
        if h < self.num_levels - 1:
            parent = self._parent[h]
            flag = torch.zeros(self.num_samples, dtype=torch.bool, device=self.device)
            flag[parent[ids]] = True
            siblings = torch.nonzero(flag[parent.clamp_min(0)] & (parent >= 0)).flatten()
            sib_parent = parent[siblings]
        else:
            # Top level: the root is the whole data set. Candidates are the touched clusters and
            # every cluster of >= min_samples samples (dense enough to be a DBSCAN cluster);
            # smaller untouched ones (mostly DBSCAN noise singletons) wait until touched.
            big = self._counts[h - 1] >= self.min_samples
            big[ids] = True
            siblings = torch.nonzero(big).flatten()
            sib_parent = torch.zeros_like(siblings)
        if siblings.numel() < 2:
            return 0
        pos = torch.searchsorted(siblings, ids)
        centres = self.centres(h, siblings)
        sim = centres[pos] @ centres.T
        edge = (sim > self.merge_threshold[h - 1]) & (sib_parent[pos].unsqueeze(1) == sib_parent.unsqueeze(0))
        edge[torch.arange(pos.numel(), device=self.device), pos] = False
        a, b = torch.nonzero(edge, as_tuple=True)
        if a.numel() == 0:
            return 0
        comp = connected_components(siblings.numel(), pos[a], b)
        away = torch.nonzero(comp != torch.arange(comp.numel(), device=self.device)).flatten()
        self._merge_into(h, siblings[away], siblings[comp[away]])
        return away.numel()

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only: the tree's state (see `ClusterTree.state_dict`) and the conformity.

        Options are not stored: rebuild with the same options, then `load_state_dict`.
        """
        state = super().state_dict()
        state["conformity"] = torch.tensor(math.nan if self.conformity is None else self.conformity, dtype=torch.float64)
        state["conformity_per_level"] = torch.tensor(self.conformity_per_level, dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a `state_dict` exactly; refuses (ValueError) one that does not fit or nest."""
        state = dict(state)
        if "conformity" not in state or "conformity_per_level" not in state:
            raise ValueError("state_dict keys must include 'conformity' and 'conformity_per_level'")
        conformity, per_level = float(state.pop("conformity")), state.pop("conformity_per_level")
        super().load_state_dict(state)
        self.conformity = None if math.isnan(conformity) else conformity
        self.conformity_per_level = tuple(float(v) for v in per_level)

    def _check_batch(self, indices: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices)
        if idx.dim() != 1 or idx.is_floating_point() or idx.dtype == torch.bool:
            raise ValueError(f"indices must be a 1-D integer tensor; got shape {tuple(idx.shape)}, dtype {idx.dtype}")
        idx = idx.to(self.device).long()
        x = normalize_features(features).to(self.device)
        dim = self._require_initialized().shape[1]
        if x.shape != (idx.numel(), dim):
            raise ValueError(
                f"features must be ({idx.numel()}, {dim}) to match indices and the bank; got {tuple(x.shape)}"
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise ValueError(f"indices must lie in [0, {self.num_samples}); got range [{int(idx.min())}, {int(idx.max())}]")
        unique, inverse = torch.unique(idx, return_inverse=True)
        first = torch.full_like(unique, idx.numel()).scatter_reduce_(
            0, inverse, torch.arange(idx.numel(), device=self.device), reduce="amin"
        )
        return unique, x[first]


def _per_level(name: str, value: float | Sequence[float], k: int, lo: float, hi: float) -> tuple[float, ...]:
    values = (value,) * k if isinstance(value, (int, float)) else tuple(value)
    if len(values) != k or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi for v in values
    ):
        raise ValueError(f"{name} must be a float in ({lo}, {hi}] or {k} such floats (one per level 1..{k}); got {value!r}")
    return tuple(float(v) for v in values)
