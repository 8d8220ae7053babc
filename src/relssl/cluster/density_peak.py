"""Density-peak prototype selection (Rodriguez & Laio, Science 2014) for RCL's cluster split.

Units (child clusters) are grouped by the cluster they belong to; every group is handled on
its own, but all groups are computed together: groups are padded to the next power of four
and each size bucket is one batched matrix product, so the Python loop runs over a handful of
buckets, not over clusters or samples.

For a group with unit centres c_i (unit vectors), weights w_i (samples per unit), cutoff r:
    d_ij  = |c_i - c_j|                                  (d^2 = 2 - 2 cos)
    rho_i = sum_j w_j exp(-(d_ij / r)^2)                  local density, Gaussian kernel
    delta_i = min { d_ij : j denser than i }              (+inf for the densest unit)
"Denser" orders by rho, ties by position, so the order is total and deterministic. A unit is
a prototype when delta_i > min_delta: no denser unit lies within min_delta (the densest unit
is always one). That includes an outlier far from the rest of its group: it becomes a
cluster of its own, as DBSCAN makes a noise point a singleton. The other units go to the
nearest prototype ("nearest") or follow their nearest denser unit up to a prototype ("peak",
the original assignment of Rodriguez & Laio).
"""

from __future__ import annotations

import math

import torch

ASSIGN_MODES = ("nearest", "peak")


def _peaks_padded(
    x: torch.Tensor,
    w: torch.Tensor,
    valid: torch.Tensor,
    cutoff: float,
    min_delta: float,
    assign: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density peaks on padded groups x (G, S, d), w (G, S) (0 on padding), valid (G, S).

    Works on cosine similarities (d^2 = 2 - 2 cos), so the (G, S, S) block sees few passes.
    Returns (owner (G, S) local index of each unit's prototype, is_prototype (G, S)).
    """
    g, s, _ = x.shape
    sim = x @ x.transpose(1, 2)
    wv = w.unsqueeze(-1)
    kernel = torch.exp((sim - 1.0) * (2.0 / (cutoff * cutoff)))  # exp(-(d / cutoff)^2)
    rho = (kernel @ wv).squeeze(-1).masked_fill(~valid, -math.inf)
    del kernel
    order = torch.sort(-rho, dim=1, stable=True).indices
    positions = torch.arange(s, device=x.device).expand(g, s)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    denser = (rank.unsqueeze(1) < rank.unsqueeze(2)) & valid.unsqueeze(1)  # [g, i, j]: j denser than i
    best, nearest_denser = sim.masked_fill(~denser, -math.inf).max(dim=-1)
    del denser
    delta = (2.0 - 2.0 * best).clamp_min(0.0).sqrt()  # +inf similarity gap -> delta = +inf
    proto = valid & ((delta > min_delta) | (rank == 0))
    if assign == "nearest":
        owner = sim.masked_fill_(~proto.unsqueeze(1), -math.inf).argmax(dim=-1)
    else:
        owner = torch.where(proto | ~valid, positions, nearest_denser)
        for _ in range(max(1, math.ceil(math.log2(max(s, 2)))) + 1):
            owner = owner.gather(1, owner)
    owner = torch.where(proto | ~valid, positions, owner)
    return owner, proto


def assign_to_prototypes(
    centres: torch.Tensor,
    weights: torch.Tensor,
    sizes: torch.Tensor,
    cutoff: float,
    min_delta: float,
    assign: str = "nearest",
    max_units: int = 1024,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """Split every group of units around its density peaks.

    `centres` (U, d) unit vectors and `weights` (U,) are sorted by group, groups of `sizes`
    (G,) lying contiguously. Returns owner (U,) long: the row of the prototype each unit joins
    (owner[u] == u for prototypes; a group with one prototype has one owner). A group larger
    than `max_units` picks prototypes among `max_units` of its units, evenly strided over the
    units sorted heaviest first (ties: first rows), and sends all its units to the nearest
    prototype. `max_elements` caps the size of one
    padded (groups x S x S) distance block.
    """
    if assign not in ASSIGN_MODES:
        raise ValueError(f"assign must be one of {ASSIGN_MODES}; got {assign!r}")
    device = centres.device
    total = centres.shape[0]
    owner = torch.arange(total, device=device)
    if total == 0:
        return owner
    starts = torch.cumsum(sizes, 0) - sizes
    sizes_cpu = sizes.cpu()
    small = torch.nonzero((sizes_cpu >= 2) & (sizes_cpu <= max_units)).flatten()
    if small.numel():
        # Widths 4, 16, 64, ... (at most max_units): few buckets, so few Python-level calls.
        buckets = torch.ceil(torch.log2(sizes_cpu[small].double()) / 2).long().clamp_min(1)
        for b in torch.unique(buckets).tolist():
            width = min(4**b, max_units)
            groups = small[buckets == b].to(device)
            chunk = max(1, max_elements // (width * width))
            for lo in range(0, groups.numel(), chunk):
                sel = groups[lo : lo + chunk]
                cols = torch.arange(width, device=device)
                valid = cols.unsqueeze(0) < sizes[sel].unsqueeze(1)
                rows = (starts[sel].unsqueeze(1) + cols).clamp_max(total - 1)
                local, _ = _peaks_padded(
                    centres[rows], weights[rows] * valid, valid, cutoff, min_delta, assign
                )
                glob = starts[sel].unsqueeze(1) + local
                owner[rows[valid]] = glob[valid]
    for gi in torch.nonzero(sizes_cpu > max_units).flatten().tolist():
        lo, n = int(starts[gi]), int(sizes_cpu[gi])
        w = weights[lo : lo + n]
        heavy_first = torch.sort(-w, stable=True).indices
        stride = torch.div(torch.arange(max_units, device=device) * n, max_units, rounding_mode="floor")
        cand = torch.sort(heavy_first[stride]).values
        ones = torch.ones(1, cand.numel(), dtype=torch.bool, device=device)
        _, proto = _peaks_padded(
            centres[lo + cand].unsqueeze(0), w[cand].unsqueeze(0), ones, cutoff, min_delta, assign
        )
        protos = lo + cand[proto[0]]
        near = (centres[lo : lo + n] @ centres[protos].T).argmax(dim=1)
        owner[lo : lo + n] = protos[near]
        # A prototype owns itself, as in the padded path: argmax alone does not ensure it (a zero
        # centre has similarity 0 to itself too; equal centres tie), and a prototype handed to
        # another one would leave the units it still owns without a part (target id -1).
        owner[protos] = protos
    return owner


def connected_components(num_nodes: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Component of each node of an undirected edge list: the smallest node index in it.

    Min-label propagation with pointer jumping; deterministic on every device.
    """
    comp = torch.arange(num_nodes, device=a.device)
    if a.numel() == 0:
        return comp
    while True:
        nxt = comp.clone()
        nxt.scatter_reduce_(0, a, comp[b], reduce="amin")
        nxt.scatter_reduce_(0, b, comp[a], reduce="amin")
        nxt = nxt[nxt]
        if torch.equal(nxt, comp):
            return comp
        comp = nxt
