"""Order statistics in place, for numba kernels: the k-th smallest value and the median.

Plain njit, no fast-math: they reproduce numpy's median operation for operation, which the
classifier's frame features rely on (the shipped model's inputs must not move); the scorer's
level test (kernels.paired_median) uses the same median.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def kth_smallest(buf, n, k):
    """The k-th smallest of buf[:n], partitioning buf in place (Hoare quickselect)."""
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        # median-of-three pivot keeps sorted and reversed lines linear
        a, b, c = buf[lo], buf[mid], buf[hi]
        pivot = max(min(a, b), min(max(a, b), c))
        i, j = lo, hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                buf[i], buf[j] = buf[j], buf[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return buf[k]


@njit(cache=True, nogil=True)
def median_in_place(buf, n):
    """np.median of buf[:n] (the mean of the two middle values for even n); reorders buf."""
    half = n // 2
    upper = kth_smallest(buf, n, half)
    if n % 2:
        return upper
    lower = buf[0]
    for i in range(1, half):
        lower = max(lower, buf[i])
    return (lower + upper) / 2
