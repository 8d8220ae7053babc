"""Nested cluster labels stored as parent pointers, with moves that keep them nested.

``parent[h][c]`` is the level-(h+1) cluster holding the level-h cluster ``c`` (-1 for an unused
id); level 0 is the instance level, so labels are read through the pointers and the *cluster
preserve property* of RCL (same cluster at level h => same cluster at every level above) holds
by construction. The only change is moving whole child clusters between siblings (same parent).

Per-cluster feature sums are kept exactly in 2^-30 fixed point (int64): they never drift, their
value does not depend on the order of additions (so they are deterministic on GPU, where float
scatter-adds are not) and a cluster centre costs one row read. Ids at every level lie in
[0, N): freed ids are reused, smallest first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

_SCALE = float(2**30)  # fixed-point scale of the per-cluster sums; |sum| <= N * 2^30 < 2^63


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Unit features to the int64 fixed point of the per-cluster sums."""
    return torch.round(x.double() * _SCALE).long()


class ClusterTree:
    """(N, L) nested cluster labels over a per-sample feature bank, with validated moves."""

    def __init__(self, num_samples: int, num_levels: int, device: str | torch.device = "cpu") -> None:
        self.num_samples = positive_int("num_samples", num_samples)
        self.num_levels = positive_int("num_levels", num_levels)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must name a torch device; got {device!r}") from None
        n, k = self.num_samples, self.num_levels - 1
        # Until `reset`, every sample is its own cluster at every level (a valid hierarchy).
        self._parent = [torch.arange(n, device=self.device) for _ in range(k)]
        self._counts: list[torch.Tensor] = [torch.ones(n, dtype=torch.long, device=self.device) for _ in range(k)]
        self._sums: list[torch.Tensor] = []
        self._centres: list[torch.Tensor] = []  # unit-norm float32 centres, recomputed when dirty
        self._dirty: list[torch.Tensor] = []
        self._stale: list[torch.Tensor] = [torch.zeros(n, dtype=torch.long, device=self.device) for _ in range(k)]
        self.bank: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    # ------------------------------------------------------------------ reading

    @property
    def labels(self) -> torch.Tensor:
        """(N, L) LongTensor of cluster ids; column 0 is arange(N). Cached: do not modify it."""
        if self._labels is None:
            self._labels = self.labels_of(torch.arange(self.num_samples, device=self.device))
        return self._labels

    def labels_of(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, L) labels of the given samples, read through the parent pointers (O(B L))."""
        idx = torch.as_tensor(indices, device=self.device).long()
        columns = [idx]
        for parent in self._parent:
            columns.append(parent[columns[-1]])
        return torch.stack(columns, dim=1)

    @property
    def num_clusters(self) -> tuple[int, ...]:
        """Number of non-empty clusters per level (level 0: N)."""
        return (self.num_samples,) + tuple(int((c > 0).sum()) for c in self._counts)

    def active_ids(self, level: int) -> torch.Tensor:
        """Sorted ids of the non-empty clusters at `level`."""
        self._check_level(level, allow_instance=True)
        if level == 0:
            return torch.arange(self.num_samples, device=self.device)
        return torch.nonzero(self._counts[level - 1] > 0).flatten()

    def children(self, level: int, cluster_id: int) -> torch.Tensor:
        """Sorted ids of the level-(level-1) clusters (samples for level 1) inside a cluster."""
        self._check_level(level)
        cid = self._check_active(level, cluster_id)
        return torch.nonzero(self._parent[level - 1] == cid).flatten()

    def centres(self, level: int, cluster_ids: torch.Tensor) -> torch.Tensor:
        """Unit-norm mean features (len(ids), d) of clusters at `level` (level 0: the bank rows)."""
        bank = self._require_initialized()
        ids = torch.as_tensor(cluster_ids, device=self.device).long()
        if level == 0:
            return bank[ids]
        dirty = self._dirty[level - 1]
        stale_rows = ids[dirty[ids]]
        if stale_rows.numel():
            # Row-wise, so a row's value does not depend on which other rows are recomputed.
            self._centres[level - 1][stale_rows] = F.normalize(self._sums[level - 1][stale_rows].float(), dim=1, eps=1e-30)
            dirty[stale_rows] = False
        return self._centres[level - 1][ids]

    def reset(self, bank: torch.Tensor, labels: torch.Tensor) -> None:
        """Start from unit features (N, d) and nested labels (N, L), ids in [0, N).

        Labels from `offline.dbscan_levels` or `offline.kmeans_levels` fit; labels that do not
        nest are refused with ValueError.
        """
        n = self.num_samples
        labels = torch.as_tensor(labels, device=self.device).long()
        if bank.dim() != 2 or bank.shape[0] != n or labels.shape != (n, self.num_levels):
            raise ValueError(f"need bank (N={n}, d) and labels ({n}, {self.num_levels}); got {tuple(bank.shape)}, {tuple(labels.shape)}")
        if not torch.equal(labels[:, 0], torch.arange(n, device=self.device)) or bool((labels < 0).any() | (labels >= n).any()):
            raise ValueError(f"labels[:, 0] must be arange(N) and every id must lie in [0, {n})")
        for h in range(1, self.num_levels - 1):
            pairs = torch.unique(labels[:, h] * n + labels[:, h + 1])
            if torch.unique(pairs // n).numel() != pairs.numel():
                raise ValueError(f"labels do not nest: a level-{h} cluster spans several level-{h + 1} clusters")
        self.bank = bank.contiguous()
        q = quantize(self.bank)
        self._parent, self._counts, self._sums = [], [], []
        self._init_centres(q.shape[1])
        self._stale = [torch.zeros(n, dtype=torch.long, device=self.device) for _ in range(1, self.num_levels)]
        for h in range(1, self.num_levels):
            parent = torch.full((n,), -1, dtype=torch.long, device=self.device)
            parent[labels[:, h - 1]] = labels[:, h]
            self._parent.append(parent)
            self._counts.append(torch.bincount(labels[:, h], minlength=n))
            self._sums.append(torch.zeros(n, q.shape[1], dtype=torch.long, device=self.device).index_add_(0, labels[:, h], q))
        self._labels = None

    def write_features(self, idx: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Replace bank rows `idx` (unique) by `new`, keep the sums exact, count the rewrites.

        Returns the (B, L) labels of the rows.
        """
        bank = self._require_initialized()
        delta = quantize(new) - quantize(bank[idx])
        bank[idx] = new
        batch = self.labels_of(idx)
        ones = torch.ones_like(idx)
        for h in range(1, self.num_levels):
            self._sums[h - 1].index_add_(0, batch[:, h], delta)
            self._dirty[h - 1][batch[:, h]] = True
            self._stale[h - 1].index_add_(0, batch[:, h], ones)
        self._labels = None
        return batch

    # ------------------------------------------------------------------ primitives

    def split(self, level: int, cluster_id: int, unit_groups: Sequence[Sequence[int] | torch.Tensor]) -> list[int]:
        """Split a cluster into groups of its child clusters (samples at level 1).

        `unit_groups` must partition the cluster's children (see `children`): whole child
        units only, each exactly once. The first group keeps `cluster_id`, the others get fresh
        ids (returned in group order). Anything else is refused with ValueError, since it
        would break the cluster preserve property or lose samples.
        """
        self._require_initialized()
        self._check_level(level)
        cid = self._check_active(level, cluster_id)
        groups = [torch.as_tensor(g, dtype=torch.long, device=self.device).flatten() for g in unit_groups]
        if not groups or any(g.numel() == 0 for g in groups):
            raise ValueError("unit_groups must be a non-empty list of non-empty groups of child cluster ids")
        units = torch.cat(groups)
        if torch.unique(units).numel() != units.numel():
            raise ValueError("unit_groups must not repeat a unit")
        inside = self.children(level, cid)
        if units.min() < 0 or units.max() >= self.num_samples:
            raise ValueError(f"unit ids must lie in [0, {self.num_samples}); got {units.tolist()}")
        foreign = units[~torch.isin(units, inside)]
        if foreign.numel():
            raise ValueError(
                f"units {foreign.tolist()} are not level-{level - 1} clusters inside cluster {cid} at level {level}: "
                "moving them would break the cluster preserve property"
            )
        if units.numel() != inside.numel():
            missing = inside[~torch.isin(inside, units)]
            raise ValueError(f"unit_groups must cover every unit of cluster {cid} (a partition); missing {missing.tolist()}")
        if len(groups) == 1:
            return [cid]
        new_ids = self._fresh_ids(level, len(groups) - 1)
        if level < self.num_levels - 1:
            self._parent[level][new_ids] = int(self._parent[level][cid])
        ids = torch.cat([torch.tensor([cid], device=self.device), new_ids])
        sizes = torch.tensor([g.numel() for g in groups], device=self.device)
        self._move_units(level, units, torch.repeat_interleave(ids, sizes))
        return ids.tolist()

    def merge(self, level: int, cluster_ids: Sequence[int] | torch.Tensor) -> int:
        """Merge clusters of one level into the smallest of their ids, which is returned.

        Refused with ValueError unless all are non-empty and share their parent at level + 1
        (at the top level any clusters may merge).
        """
        self._require_initialized()
        self._check_level(level)
        ids = torch.unique(torch.as_tensor(cluster_ids, dtype=torch.long, device=self.device).flatten())
        if ids.numel() == 0:
            raise ValueError("cluster_ids must not be empty")
        for cid in ids.tolist():
            self._check_active(level, cid)
        if level < self.num_levels - 1:
            parents = self._parent[level][ids]
            if bool((parents != parents[0]).any()):
                raise ValueError(
                    f"clusters {ids.tolist()} at level {level} have different parents {parents.tolist()} at level "
                    f"{level + 1}: merging them would break the cluster preserve property"
                )
        self._merge_into(level, ids[1:], ids[:1].expand(ids.numel() - 1))
        return int(ids[0])

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only: bank, parent pointers, fixed-point sums, counts and rewrite counters."""
        k, n = self.num_levels - 1, self.num_samples
        d = 0 if self.bank is None else self.bank.shape[1]
        return {
            "num_samples": torch.tensor(n),
            "num_levels": torch.tensor(self.num_levels),
            "bank": torch.empty(0, d) if self.bank is None else self.bank.detach().cpu().clone(),
            "parent": torch.stack(self._parent).cpu() if k else torch.empty(0, n, dtype=torch.long),
            "counts": torch.stack(self._counts).cpu() if k else torch.empty(0, n, dtype=torch.long),
            "stale": torch.stack(self._stale).cpu() if k else torch.empty(0, n, dtype=torch.long),
            "sums": torch.stack(self._sums).cpu() if self._sums else torch.empty(0, n, d, dtype=torch.long),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a `state_dict` exactly; refuses (ValueError) one that does not fit or nest."""
        expected = {"num_samples", "num_levels", "bank", "parent", "counts", "stale", "sums"}
        if set(state) != expected:
            raise ValueError(f"state_dict keys must be {sorted(expected)}; got {sorted(state)}")
        n, k = self.num_samples, self.num_levels - 1
        if int(state["num_samples"]) != n or int(state["num_levels"]) != self.num_levels:
            raise ValueError(
                f"state_dict is for num_samples={int(state['num_samples'])}, num_levels={int(state['num_levels'])}; "
                f"this hierarchy has {n}, {self.num_levels}"
            )
        bank, parent, counts, sums = state["bank"], state["parent"], state["counts"], state["sums"]
        initialized = bank.numel() > 0
        d = bank.shape[1] if bank.dim() == 2 else -1
        if initialized and (bank.shape[0] != n or not bank.is_floating_point()):
            raise ValueError(f"state_dict bank must be a float ({n}, d) tensor; got {tuple(bank.shape)} {bank.dtype}")
        stale = state["stale"]
        if any(t.shape != (k, n) or t.dtype != torch.long for t in (parent, counts, stale)):
            raise ValueError(f"state_dict parent, counts and stale must be ({k}, {n}) int64 tensors")
        if initialized and (sums.shape != (k, n, d) or sums.dtype != torch.long):
            raise ValueError(f"state_dict sums must be a ({k}, {n}, {d}) int64 tensor; got {tuple(sums.shape)}")
        below = torch.arange(n)
        for h in range(k):  # every sample must reach a cluster, and the counts must match
            ids = parent[h][below]
            if bool((ids < 0).any() or (ids >= n).any()) or not torch.equal(torch.bincount(ids, minlength=n), counts[h]):
                raise ValueError(f"state_dict parent pointers into level {h + 1} do not match its cluster counts")
            below = ids
        self.bank = bank.to(self.device, torch.float32).clone() if initialized else None
        self._parent = [p.to(self.device).clone() for p in parent]
        self._counts = [c.to(self.device).clone() for c in counts]
        self._stale = [c.to(self.device).clone() for c in stale]
        self._sums = [s.to(self.device).clone() for s in sums] if initialized else []
        self._init_centres(d if initialized else 0)
        self._labels = None

    # ------------------------------------------------------------------ internals

    def _init_centres(self, d: int) -> None:
        """Empty centre cache, every row dirty (centres are recomputed from the sums on use)."""
        n, k = self.num_samples, self.num_levels - 1
        self._centres = [torch.zeros(n, d, device=self.device) for _ in range(k)] if d else []
        self._dirty = [torch.ones(n, dtype=torch.bool, device=self.device) for _ in range(k)] if d else []

    def _children_mask(self, h: int, ids: torch.Tensor) -> torch.Tensor:
        """(N,) mask of the level-(h-1) clusters whose parent is in `ids`."""
        flag = torch.zeros(self.num_samples, dtype=torch.bool, device=self.device)
        flag[ids] = True
        parent = self._parent[h - 1]
        return flag[parent.clamp_min(0)] & (parent >= 0)

    def _unit_counts(self, h: int, units: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(units) if h == 1 else self._counts[h - 2][units]

    def _unit_sums(self, h: int, units: torch.Tensor) -> torch.Tensor:
        return quantize(self._require_initialized()[units]) if h == 1 else self._sums[h - 2][units]

    def _fresh_ids(self, h: int, k: int) -> torch.Tensor:
        """The k smallest free (empty) ids of level h; at most N clusters exist, so they exist."""
        free = torch.nonzero(self._counts[h - 1] == 0).flatten()[:k]
        if free.numel() < k:  # pragma: no cover - impossible while ids < N and clusters are non-empty
            raise RuntimeError(f"no free cluster id at level {h}")
        return free

    def _move_units(self, h: int, units: torch.Tensor, targets: torch.Tensor) -> None:
        """Move whole level-(h-1) clusters to level-h clusters (siblings: same parent above)."""
        source = self._parent[h - 1][units]
        moving = source != targets
        units, source, targets = units[moving], source[moving], targets[moving]
        if units.numel() == 0:
            return
        sums, counts = self._unit_sums(h, units), self._unit_counts(h, units)
        self._sums[h - 1].index_add_(0, targets, sums).index_add_(0, source, -sums)
        self._dirty[h - 1][targets] = True
        self._dirty[h - 1][source] = True
        self._counts[h - 1].index_add_(0, targets, counts).index_add_(0, source, -counts)
        self._parent[h - 1][units] = targets
        if h < self.num_levels - 1:
            freed = source[self._counts[h - 1][source] == 0]
            self._parent[h][freed] = -1
        self._labels = None

    def _merge_into(self, h: int, away: torch.Tensor, into: torch.Tensor) -> None:
        """Move every child of the clusters `away` into the matching cluster of `into`."""
        if away.numel() == 0:
            return
        target_of = torch.full((self.num_samples,), -1, dtype=torch.long, device=self.device)
        target_of[away] = into
        stale = self._stale[h - 1]
        stale.index_add_(0, into, stale[away])
        stale[away] = 0
        units = torch.nonzero(self._children_mask(h, away)).flatten()
        self._move_units(h, units, target_of[self._parent[h - 1][units]])

    def _check_level(self, level: int, allow_instance: bool = False) -> None:
        lo = 0 if allow_instance else 1
        if isinstance(level, bool) or not isinstance(level, int) or not lo <= level < self.num_levels:
            hint = "" if allow_instance else " (level 0, the instance level, never changes)"
            raise ValueError(f"level must be an int in [{lo}, {self.num_levels - 1}]{hint}; got {level!r}")

    def _check_active(self, level: int, cluster_id: int) -> int:
        cid = int(cluster_id)
        if not 0 <= cid < self.num_samples or int(self._counts[level - 1][cid]) == 0:
            raise ValueError(f"cluster {cid} does not exist at level {level}")
        return cid

    def _require_initialized(self) -> torch.Tensor:
        """The feature bank; a RuntimeError before `initialize` has filled it."""
        if self.bank is None:
            raise RuntimeError("the hierarchy has no features yet: call initialize(features) before update, split or merge")
        return self.bank


def positive_int(name: str, value: object) -> int:
    """Validate an int option >= 1, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1; got {value!r}")
    return int(value)


