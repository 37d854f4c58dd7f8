"""Deterministic blending: which component, and which of its samples, a global index reads.

Global indices are cut into windows of W samples. Through the end of window k, component c
has received A_c(k) samples: floor(w_c (k+1) W) plus one for the components with the largest
remainders (ties by component order), so the cumulative count never strays a sample from its
exact share, and each window holds n_c(k) = A_c(k) - A_c(k-1) >= floor(w_c W) - 1 >= 0
samples of c. Inside a window the order is a seeded permutation. Everything is a pure
function of (seed, key, index): no state, no dependence on the number of readers.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from data_pipeline.synth.rng import derive_seed


class BlendSchedule:
    """Maps a global sample index to (component, component-local index)."""

    def __init__(self, weights: list[float], window: int, seed: int, key: str) -> None:
        w = np.asarray(weights, dtype=np.float64)
        self.shares = w / w.sum()
        self.window, self.seed, self.key = int(window), int(seed), key
        self._window = lru_cache(maxsize=8)(self._build_window)

    def cumulative(self, k: int) -> np.ndarray:
        """A_c(k): samples of each component in windows 0..k (A_c(-1) = 0)."""
        total = (k + 1) * self.window
        target = self.shares * total
        counts = np.floor(target).astype(np.int64)
        short = total - int(counts.sum())
        if short > 0:
            order = np.lexsort((np.arange(len(target)), -(target - counts)))
            counts[order[:short]] += 1
        return counts

    def _build_window(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        before = self.cumulative(k - 1) if k > 0 else np.zeros(len(self.shares), np.int64)
        n = self.cumulative(k) - before
        comp = np.repeat(np.arange(len(n)), n)
        rng = np.random.default_rng(derive_seed(self.seed, self.key, "blend", k))
        comp = comp[rng.permutation(len(comp))]
        local = np.empty(len(comp), dtype=np.int64)
        for c in range(len(n)):
            pos = np.flatnonzero(comp == c)
            local[pos] = before[c] + np.arange(len(pos))
        return comp, local

    def counts_before(self, n: int) -> np.ndarray:
        """Samples of each component among global indices [0, n)."""
        k, r = divmod(int(n), self.window)
        counts = self.cumulative(k - 1) if k > 0 else np.zeros(len(self.shares), np.int64)
        if r:
            counts = counts + np.bincount(self._window(k)[0][:r], minlength=len(self.shares))
        return counts

    def lookup(self, index: int) -> tuple[int, int]:
        """(component, component-local sample index) of global sample `index`."""
        comp, local = self._window(index // self.window)
        j = index % self.window
        return int(comp[j]), int(local[j])

    def global_index_of(self, component: int, local: int) -> int:
        """The global index at which `component` reads its local sample `local`."""
        lo, hi = 0, max(1, int(local / max(self.shares[component], 1e-12) / self.window) + 2)
        while self.cumulative(hi)[component] <= local:
            hi *= 2
        while lo < hi:  # first window whose cumulative count exceeds `local`
            mid = (lo + hi) // 2
            if self.cumulative(mid)[component] > local:
                hi = mid
            else:
                lo = mid + 1
        comp, loc = self._window(lo)
        (pos,) = np.flatnonzero((comp == component) & (loc == local))
        return lo * self.window + int(pos)
