"""Exact top-k masks: the one selection rule behind the weight top-k and AbsTopK.

`keep_mask(score, k)` keeps, in every row of score (R, n), exactly k entries: all those above the
row's k-th largest value, then, among the entries equal to it, the first in index order. The
threshold comes from numpy.partition on CPU (about 3-4x faster than torch.topk there) and from
torch.topk's values elsewhere (torch.kthvalue is a slow kernel on CUDA); ties are filled without a
host-device sync, by counting tied entries per block of the row instead of a cumulative sum over
all of it. Rows of the selection are independent, so a group of same-shape tensors is one call.
"""
from __future__ import annotations

import torch

from . import topk_triton

METHODS = ("auto", "partition", "topk", "kthvalue", "bisect")
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


def kth_largest(score: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    """(R, 1) the k-th largest entry of every row of score (R, n), in score's dtype and device
    (method bisect: the scores must be non-negative, as magnitudes are)."""
    n = score.shape[1]
    if method == "auto":
        method = "partition" if _numpy_ok(score) else "topk"
    if method == "partition" and _numpy_ok(score):
        import numpy as np
        part = np.partition(score.detach().numpy(), n - k, axis=1)[:, n - k]
        return torch.from_numpy(part.copy())[:, None]
    if method == "kthvalue":
        return score.kthvalue(n - k + 1, dim=1, keepdim=True).values
    if method == "bisect":
        return _kth_largest_bisect(score, k)
    # The k-th largest is the smallest of the k largest, or the largest of the n-k+1 smallest:
    # select whichever set is smaller.
    if k <= n - k + 1:
        return score.topk(k, dim=1, sorted=False).values.amin(1, keepdim=True)
    return score.topk(n - k + 1, dim=1, largest=False, sorted=False).values.amax(1, keepdim=True)


def _kth_largest_bisect(score: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest of non-negative scores found bit by bit: the bit patterns of non-negative
    floats order like the integers they spell, so the answer is the largest pattern t with at least
    k entries >= t, built from the top bit down with one counting pass per bit (no sort, no sync)."""
    bits = score.contiguous().view(_INT_VIEW[score.dtype])
    nbits = bits.element_size() * 8 - 1  # the sign bit is 0
    t = torch.zeros(score.shape[0], 1, dtype=bits.dtype, device=score.device)
    for bit in range(nbits - 1, -1, -1):
        cand = t | (1 << bit)
        t = torch.where((bits >= cand).sum(1, keepdim=True) >= k, cand, t)
    return t.view(score.dtype)


def _numpy_ok(score: torch.Tensor) -> bool:
    return score.device.type == "cpu" and score.dtype in (torch.float32, torch.float64)


def _block_size(n: int, limit: int = 1024) -> int:
    """The largest divisor of n up to limit: the row is split into blocks of this many entries."""
    for b in range(min(n, limit), 0, -1):
        if n % b == 0:
            return b
    return 1


def fill_ties(above: torch.Tensor, tied: torch.Tensor, k: int) -> torch.Tensor:
    """above | the first (k - count(above)) entries of tied in index order, per row (R, n).

    Counting tied entries per block (a reduction), a cumulative sum over blocks and one over the
    single block where the quota runs out replace a cumulative sum over every entry; no sync."""
    R, n = tied.shape
    need = k - above.sum(1, keepdim=True)                      # (R, 1) tied places to fill
    bs = _block_size(n)
    nb = n // bs
    tied_b = tied.view(R, nb, bs)
    counts = tied_b.sum(2)                                     # (R, nb)
    end = counts.cumsum(1)                                     # tied entries up to each block's end
    full = end <= need                                         # blocks whose tied entries all stay
    # the block where the quota runs out: the first one that is not full (argmax of a 0/1 row finds
    # the first 1); in a row where every block is full this is block 0, which is then full anyway
    b = (~full).to(torch.uint8).argmax(1, keepdim=True)        # (R, 1)
    before = (end - counts).gather(1, b)                       # (R, 1) tied entries before block b
    blk = tied_b.gather(1, b[:, :, None].expand(R, 1, bs)).squeeze(1)  # (R, bs)
    part = blk & (blk.cumsum(1) + before <= need)              # (R, bs)
    at_b = torch.arange(nb, device=tied.device)[None, :] == b  # (R, nb)
    keep_tied = full[:, :, None] | (at_b[:, :, None] & part[:, None, :])  # (R, nb, bs)
    return above | (tied & keep_tied.view(R, n))


def keep_mask(score: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    """(R, n) bool with exactly k True per row: the entries above the row's k-th largest value,
    then those equal to it in index order. score must hold no NaN."""
    if method not in METHODS:
        raise ValueError(f"unknown top-k method {method!r}; one of {METHODS}")
    n = score.shape[1]
    if k >= n:
        return torch.ones_like(score, dtype=torch.bool)
    thr = kth_largest(score, k, method).to(score.device)
    if score.is_cuda and topk_triton.triton is not None and topk_triton.works(score.dtype, str(score.device)):
        return topk_triton.threshold_keep(score, thr, k)  # two passes instead of a dozen
    if score.device.type == "cpu":
        keep = score >= thr
        if not bool((keep.sum(1) > k).any()):
            return keep  # no ties at any row's threshold (on CPU the check costs no sync)
    return fill_ties(score > thr, score == thr, k)
