"""Optimal one-to-one matching (Hungarian algorithm) in numpy, for label mapping and the DER speaker mapping."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def max_weight_matching(score: npt.ArrayLike) -> list[tuple[int, int]]:
    """Pairs (row, col) maximising the summed ``score`` over a one-to-one matching of a rectangular matrix.

    Every row is matched if there are at least as many columns, else every column. O(n^2 m) (Kuhn-Munkres with
    potentials); deterministic: ties go to the lowest index.
    """
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError("score must be a 2-D matrix")
    if s.size == 0:
        return []
    transposed = s.shape[0] > s.shape[1]
    cost = -(s.T if transposed else s)  # minimise cost, rows <= cols
    n, m = cost.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    match = np.zeros(m + 1, dtype=np.int64)  # match[col] = row (1-based), 0 = free
    way = np.zeros(m + 1, dtype=np.int64)
    for row in range(1, n + 1):
        match[0] = row
        col0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[col0] = True
            row0 = match[col0]
            free = ~used[1:]
            cur = cost[row0 - 1] - u[row0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = col0
            cand = np.where(free, minv[1:], np.inf)
            col1 = int(np.argmin(cand)) + 1
            delta = cand[col1 - 1]
            u[match[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            col0 = col1
            if match[col0] == 0:
                break
        while col0:
            col1 = int(way[col0])
            match[col0] = match[col1]
            col0 = col1
    pairs = [(int(match[c]) - 1, c - 1) for c in range(1, m + 1) if match[c] != 0]
    if transposed:
        pairs = [(c, r) for r, c in pairs]
    return sorted(pairs)
