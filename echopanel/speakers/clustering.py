"""Speaker clustering for one audio source: live labels as speech arrives, final labels at the end. Pure: no clock,
no I/O, deterministic (same inputs in the same order, same labels).

Both use one merge rule. Two groups of speech with total durations ``w_a`` and ``w_b`` seconds are one speaker if
the cosine similarity of their duration-weighted mean embeddings reaches

    base - slack * (1 / w_a + 1 / w_b)

A short piece of speech gives a noisy embedding, so its similarity to its own speaker is low (~0.75 for 1 s pieces
here); a long stretch gives a clean mean, and two clean means of different voices on the same telephone line can
still be 0.86-0.92 alike. One fixed cosine threshold cannot serve both; this rule lets a short piece join a speaker
easily and asks two large clusters to be nearly identical. ``base`` and ``slack`` were tuned on the fixtures (see
``tests/speakers/test_clustering.py``).

Grouping (``cluster``): agglomerative, always merging the pair that clears the rule by the widest margin, until no
pair clears it; then each piece moves to the nearest resulting centroid (two k-means passes).

Live (``OnlineClusterer``): each new embedding is labelled at once by clustering it together with a bounded window
of the most recent ones plus, per speaker, the summed embeddings that have left the window; the new embedding's
cluster is named after the labels already given to its members, or is a new speaker. For one piece against settled
speakers this is the nearest-centroid rule with a threshold that depends on the durations (0.50 for a 1 s piece
against a 1 s speaker, 0.72 against a 60 s one); re-grouping the recent window as well lets two close voices that
first fell into one speaker come apart a few pieces later. Memory: ``window`` (64) embeddings plus one sum per
speaker; cost ~7-15 ms per piece here.

Final (``recluster``): the same grouping over all of a source's embeddings, named after the live labels wherever
they agree (duration-weighted best one-to-one matching), so few labels change.

Policies:
- Short pieces (under ``min_duration_s``, 0.8 s) are unreliable: they never found or move a speaker; they take the
  label of the nearest speaker centroid (or found S1 if there is no speaker at all).
- At most ``max_speakers`` labels (8): once reached, a piece that would start a new speaker gets the nearest
  speaker's label instead, and it does not enter that speaker's centroid.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from echopanel.speakers.matching import max_weight_matching

F64 = npt.NDArray[np.float64]

DEFAULT_BASE = 0.94
DEFAULT_SLACK = 0.22
DEFAULT_MAX_SPEAKERS = 8
DEFAULT_WINDOW = 64
MIN_RELIABLE_S = 0.8
REFINE_PASSES = 2
_OTHER = 1 << 30  # sort key of labels not of the form "S<n>"


def label_of(index: int) -> str:
    """The label of the speaker with 0-based ``index``: "S1", "S2", ..."""
    return f"S{index + 1}"


def merge_threshold(w_a: float, w_b: float, base: float = DEFAULT_BASE, slack: float = DEFAULT_SLACK) -> float:
    """Cosine similarity that two groups of speech of ``w_a`` and ``w_b`` seconds need to be one speaker."""
    return base - slack * (1.0 / w_a + 1.0 / w_b)


def _unit_rows(x: npt.ArrayLike) -> F64:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("embeddings must be finite non-zero vectors")
    return a / norms


def _normalise(sums: F64) -> F64:
    return sums / np.maximum(np.linalg.norm(sums, axis=-1, keepdims=True), 1e-12)


def cluster(
    sums: npt.ArrayLike,
    weights: Sequence[float],
    *,
    base: float = DEFAULT_BASE,
    slack: float = DEFAULT_SLACK,
    movable: Sequence[bool] | None = None,
    refine_passes: int = REFINE_PASSES,
) -> list[int]:
    """Group items, each a weighted sum of unit embeddings (``sums[i]``, total weight ``weights[i]`` seconds).

    Returns a cluster index per item, numbered by first appearance. Items with ``movable[i]`` False (e.g. a
    speaker's archived sum) keep the cluster the merging gave them during the k-means passes.
    """
    w = np.asarray(weights, dtype=np.float64).copy()
    if len(w) == 0:
        return []
    s = np.array(sums, dtype=np.float64, ndmin=2)
    n = len(s)
    if len(w) != n:
        raise ValueError("sums and weights must have the same length")
    move = np.ones(n, dtype=bool) if movable is None else np.asarray(movable, dtype=bool)
    member = np.arange(n)  # cluster representative of each item
    cs = s.copy()  # cluster sums (valid at representatives)
    alive = np.ones(n, dtype=bool)
    unit = _normalise(cs)
    margin = unit @ unit.T - (base - slack * (1.0 / w[:, None] + 1.0 / w[None, :]))
    np.fill_diagonal(margin, -np.inf)
    # Best pair per row, kept up to date, so a merge costs O(n) instead of a scan of the whole matrix. Ties go to
    # the lowest (row, column), as a row-major argmax of the matrix would.
    best = margin.max(axis=1)
    best_col = margin.argmax(axis=1)
    for _ in range(n - 1):
        a = int(np.argmax(best))
        if best[a] < 0:
            break
        a, b = sorted((a, int(best_col[a])))
        cs[a] += cs[b]
        w[a] += w[b]
        alive[b] = False
        member[member == b] = a
        unit[a] = _normalise(cs[a])
        row = unit @ unit[a] - (base - slack * (1.0 / w + 1.0 / w[a]))
        row[~alive] = -np.inf
        row[a] = -np.inf
        margin[a, :] = row
        margin[:, a] = row
        margin[b, :] = -np.inf
        margin[:, b] = -np.inf
        best[b] = -np.inf
        stale = alive & ((best_col == a) | (best_col == b))
        stale[a] = True
        gain = alive & ~stale & ((row > best) | ((row == best) & (a < best_col)))
        best[gain] = row[gain]
        best_col[gain] = a
        idx = np.flatnonzero(stale)
        best[idx] = margin[idx].max(axis=1)
        best_col[idx] = margin[idx].argmax(axis=1)

    reps = np.flatnonzero(alive)
    labels = _refine(s, np.searchsorted(reps, member), move, refine_passes)
    order: dict[int, int] = {}
    return [order.setdefault(int(k), len(order)) for k in labels]


def _refine(
    sums: F64, labels: npt.NDArray[np.int64], movable: npt.NDArray[np.bool_], passes: int
) -> npt.NDArray[np.int64]:
    """k-means passes: each movable item to the cluster whose duration-weighted centroid is nearest."""
    k = int(labels.max()) + 1 if len(labels) else 0
    for _ in range(passes if k > 1 else 0):
        totals = np.zeros((k, sums.shape[1]))
        np.add.at(totals, labels, sums)
        nearest = np.argmax(_normalise(sums) @ _normalise(totals).T, axis=1)
        new = np.where(movable, nearest, labels)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels


def name_clusters(clusters: Sequence[int], labels: Sequence[str | None], weights: Sequence[float]) -> dict[int, str]:
    """Name clusters after the labels their members carry, one-to-one, maximising the shared weight.

    Members with label None carry no name. Clusters sharing nothing with any label stay unnamed (absent).
    """
    names_l = sorted({lab for lab in labels if lab is not None}, key=_label_key)
    ks = sorted(set(clusters))
    if not names_l or not ks:
        return {}
    row = {k: i for i, k in enumerate(ks)}
    col = {lab: i for i, lab in enumerate(names_l)}
    overlap = np.zeros((len(ks), len(names_l)))
    for k, lab, wt in zip(clusters, labels, weights, strict=True):
        if lab is not None:
            overlap[row[k], col[lab]] += wt
    return {ks[r]: names_l[c] for r, c in max_weight_matching(overlap) if overlap[r, c] > 0}


def _label_key(label: str) -> tuple[int, str]:
    """Sort "S2" before "S10"; other names after, alphabetically."""
    if label.startswith("S") and label[1:].isdigit():
        return int(label[1:]), ""
    return _OTHER, label


def _next_label(used: Sequence[str] | set[str]) -> str:
    top = max((k for k, _ in map(_label_key, used) if k < _OTHER), default=0)
    return label_of(top)


@dataclass(frozen=True, slots=True)
class Assignment:
    label: str
    new_speaker: bool
    reliable: bool  # long enough to enter the clustering


@dataclass(slots=True)
class _Item:
    vector: F64  # unit embedding
    weight: float  # seconds
    label: str


class OnlineClusterer:
    """Live speaker labels for one source (see the module doc). Not thread-safe: one caller at a time."""

    def __init__(
        self,
        base: float = DEFAULT_BASE,
        slack: float = DEFAULT_SLACK,
        max_speakers: int = DEFAULT_MAX_SPEAKERS,
        window: int = DEFAULT_WINDOW,
        min_duration_s: float = MIN_RELIABLE_S,
    ) -> None:
        if max_speakers < 1:
            raise ValueError("max_speakers must be at least 1")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.base = base
        self.slack = slack
        self.max_speakers = max_speakers
        self.min_duration_s = min_duration_s
        self._recent: deque[_Item] = deque(maxlen=window)
        self._archive: dict[str, tuple[F64, float]] = {}  # label -> (sum of weighted unit vectors, weight)
        self._labels: list[str] = []  # every label given, in order of creation

    @property
    def speakers(self) -> list[str]:
        """Labels given so far, in order of creation."""
        return list(self._labels)

    def centroids(self) -> dict[str, F64]:
        """Unit centroid of each speaker over the window and the archive (reliable pieces only)."""
        sums: dict[str, F64] = {lab: s.copy() for lab, (s, _) in self._archive.items()}
        for it in self._recent:
            sums[it.label] = sums.get(it.label, np.zeros_like(it.vector)) + it.weight * it.vector
        return {lab: _normalise(sums[lab]) for lab in self._labels if lab in sums}

    def assign(self, embedding: npt.ArrayLike, duration_s: float) -> str:
        """The live label of one piece of speech (its embedding and duration in seconds)."""
        return self.assign_detailed(embedding, duration_s).label

    def assign_detailed(self, embedding: npt.ArrayLike, duration_s: float) -> Assignment:
        vec = _unit_rows(embedding)[0]
        weight = max(float(duration_s), 1e-3)
        reliable = duration_s >= self.min_duration_s
        if not self._labels:
            label = self._create()
            if reliable:
                self._push(_Item(vec, weight, label))
            return Assignment(label, True, reliable)
        if not reliable:
            return Assignment(self._nearest(vec), False, False)
        if not self._recent and not self._archive:  # only short pieces so far: this one defines their speaker
            self._push(_Item(vec, weight, self._labels[-1]))
            return Assignment(self._labels[-1], False, True)

        items = [*self._archive.items()]
        sums = [s for _, (s, _) in items] + [it.weight * it.vector for it in self._recent] + [weight * vec]
        weights = [wt for _, (_, wt) in items] + [it.weight for it in self._recent] + [weight]
        member_labels: list[str | None] = [lab for lab, _ in items] + [it.label for it in self._recent] + [None]
        movable = [False] * len(items) + [True] * (len(self._recent) + 1)
        groups = cluster(sums, weights, base=self.base, slack=self.slack, movable=movable)
        names = name_clusters(groups, member_labels, weights)
        mine = groups[-1]
        if mine in names:
            label, new = names[mine], False
        elif len(self._labels) < self.max_speakers:
            label, new = self._create(), True
        else:
            return Assignment(self._nearest(vec), False, True)  # at the cap: nearest, centroid unchanged
        self._push(_Item(vec, weight, label))
        return Assignment(label, new, True)

    def _create(self) -> str:
        label = _next_label(self._labels)
        self._labels.append(label)
        return label

    def _nearest(self, vec: F64) -> str:
        cents = self.centroids()
        if not cents:
            return self._labels[0]
        labs = list(cents)
        sims = np.stack([cents[lab] for lab in labs]) @ vec
        return labs[int(np.argmax(sims))]

    def _push(self, item: _Item) -> None:
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            s, wt = self._archive.get(old.label, (np.zeros_like(old.vector), 0.0))
            self._archive[old.label] = (s + old.weight * old.vector, wt + old.weight)
        self._recent.append(item)


def recluster(
    embeddings: npt.ArrayLike,
    durations: Sequence[float],
    live_labels: Sequence[str],
    base: float = DEFAULT_BASE,
    slack: float = DEFAULT_SLACK,
    *,
    min_duration_s: float = MIN_RELIABLE_S,
    max_speakers: int = DEFAULT_MAX_SPEAKERS,
    max_items: int = 1000,
) -> list[str]:
    """Final labels for all of a source's pieces of speech, named after the live labels wherever they agree.

    Pieces of at least ``min_duration_s`` are grouped with ``cluster``; if that gives more than ``max_speakers``
    groups, the smallest (by duration) are dissolved into the nearest larger ones. Shorter pieces then take the
    nearest group. Each group takes the live label it shares the most speech with (one-to-one); groups left over
    get fresh labels after the highest live one. Cost: O(n^2) memory and time in the number of pieces n up to
    ``max_items`` (1000, ~17 minutes of speech in 1 s pieces, 0.3 s); past that, consecutive pieces with the same live
    label are clustered in groups first, so the cost stays at that of ``max_items`` items.
    """
    n = len(live_labels)
    if n == 0:
        if len(durations) or np.asarray(embeddings).size:
            raise ValueError("embeddings, durations and live_labels must have the same length")
        return []
    x = _unit_rows(embeddings)
    if not (len(x) == len(durations) == n):
        raise ValueError("embeddings, durations and live_labels must have the same length")
    d = np.maximum(np.asarray(durations, dtype=np.float64), 1e-3)
    reliable = d >= min_duration_s
    if not reliable.any():
        reliable[:] = True
    idx = np.flatnonzero(reliable)
    pieces = x[idx] * d[idx, None]
    run = -(-len(idx) // max_items)  # ceil: pieces per group, 1 unless the session is long
    if run == 1:
        groups = np.asarray(cluster(pieces, d[idx].tolist(), base=base, slack=slack))
    else:
        # Long session: group consecutive pieces with one live label (at most ``run`` each), cluster the groups,
        # then let every piece move to its nearest centroid. Keeps the cost at O(max_items^2).
        group_of = np.zeros(len(idx), dtype=np.int64)
        size_now = 1
        for j in range(1, len(idx)):
            fresh = live_labels[idx[j]] != live_labels[idx[j - 1]] or size_now >= run
            group_of[j] = group_of[j - 1] + fresh
            size_now = 1 if fresh else size_now + 1
        gsum = np.zeros((int(group_of[-1]) + 1, x.shape[1]))
        np.add.at(gsum, group_of, pieces)
        gw = np.bincount(group_of, weights=d[idx])
        glab = np.asarray(cluster(gsum, gw.tolist(), base=base, slack=slack, refine_passes=0))
        groups = _refine(pieces, glab[group_of], np.ones(len(idx), dtype=bool), REFINE_PASSES)
        order: dict[int, int] = {}
        groups = np.asarray([order.setdefault(int(g), len(order)) for g in groups])
    k = int(groups.max()) + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, groups, x[idx] * d[idx, None])
    size = np.bincount(groups, weights=d[idx], minlength=k)
    keep = np.sort(np.argsort(-size, kind="stable")[:max_speakers])
    cents = _normalise(sums[keep])
    found = np.full(n, -1, dtype=np.int64)
    found[idx] = keep[np.argmax(x[idx] @ cents.T, axis=1)] if k > max_speakers else groups
    rest = np.flatnonzero(~reliable)
    if len(rest):
        found[rest] = keep[np.argmax(x[rest] @ cents.T, axis=1)]

    names = name_clusters(found.tolist(), list(live_labels), d.tolist())
    used = set(live_labels)
    for c in sorted(set(found.tolist())):
        if c not in names:
            names[c] = _next_label(used)
            used.add(names[c])
    return [names[int(c)] for c in found]
