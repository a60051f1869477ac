"""Comparator networks (Batcher): fixed sequences of compare-exchange steps that sort any input.

numba kernels apply them without data-dependent branches, which is what makes many small
sorts and medians fast: the classifier's per-line medians build on the generator here.
Tables are built once per size and shared: never write to them.
"""

from __future__ import annotations

import functools

import numpy as np


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


@functools.lru_cache(maxsize=32)  # one table per size, shared by the scans: never written
def sort_network(n: int) -> np.ndarray:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for the next power of two
    >= n: applied in order, each putting the smaller value in row i, they sort any input.

    The classifier's per-line medians use a pruned copy (features._median_network).
    """
    size = next_pow2(n)
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)
