"""Triton kernels of the exact top-k rule on the GPU: AbsTopK in one kernel, and the tie filling
of the weight top-k in two.

AbsTopK: a row is read once and written once.

Each program holds one row of the activation in registers, finds the k-th largest magnitude bit by
bit (the bit patterns of non-negative floats order like integers: one in-register count per bit),
then keeps the entries above it and the first tied ones in index order: the same rule as
sparse_gpt.topk.keep_mask, with no sort, no index tensor and no round trip through memory. It
writes the output and a one-byte keep mask for the backward.

Weight top-k (`threshold_keep`): rows of millions of entries, the threshold already known (from
torch.topk); one pass counts entries above and tied per block, one writes the mask, each block
keeping as many tied entries as the blocks before it left room for.

Used only where Triton imports (and, for AbsTopK, the row fits: `supported`); everything else
takes the torch path.
"""
from __future__ import annotations

import functools
import warnings

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch path serves
    triton = None

MAX_WIDTH = 16384  # a row must fit in one program's registers

if triton is not None:
    @triton.jit
    def _abs_topk_kernel(x_ptr, out_ptr, keep_ptr, n_rows, stride_row, W, k,
                         ROWS: tl.constexpr, BLOCK: tl.constexpr, NBITS: tl.constexpr, INT: tl.constexpr):
        # ROWS rows per program: narrow rows share the reductions' latency
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # (ROWS, 1)
        offs = tl.arange(0, BLOCK)[None, :]                                       # (1, BLOCK)
        inside = (offs < W) & (rows < n_rows)
        x = tl.load(x_ptr + rows * stride_row + offs, mask=inside, other=0.0)
        bits = tl.abs(x).to(INT, bitcast=True)
        bits = tl.where(inside, bits, -1)  # padding never counts
        t = tl.max(bits, axis=1)[:, None] * 0  # (ROWS, 1) zeros of the bits' type (from a reduction)
        for i in tl.static_range(NBITS):
            cand = t | ((t * 0 + 1) << (NBITS - 1 - i))
            count = tl.sum((bits >= cand).to(tl.int32), axis=1)[:, None]
            t = tl.where(count >= k, cand, t)
        above = bits > t
        tied = bits == t
        need = k - tl.sum(above.to(tl.int32), axis=1)[:, None]
        keep = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=1) <= need))
        tl.store(out_ptr + rows * W + offs, tl.where(keep, x, 0.0), mask=inside)
        tl.store(keep_ptr + rows * W + offs, keep.to(tl.uint8), mask=inside)

    @triton.jit
    def _block_counts_kernel(score_ptr, thr_ptr, above_ptr, tied_ptr, n, nb, BS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        offs = blk * BS + tl.arange(0, BS)
        inside = offs < n
        s = tl.load(score_ptr + row * n + offs, mask=inside, other=0.0)
        t = tl.load(thr_ptr + row)
        tl.store(above_ptr + row * nb + blk, tl.sum(((s > t) & inside).to(tl.int32), axis=0))
        tl.store(tied_ptr + row * nb + blk, tl.sum(((s == t) & inside).to(tl.int32), axis=0))

    @triton.jit
    def _keep_kernel(score_ptr, thr_ptr, quota_ptr, keep_ptr, n, nb, BS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        blk = tl.program_id(1)
        offs = blk * BS + tl.arange(0, BS)
        inside = offs < n
        s = tl.load(score_ptr + row * n + offs, mask=inside, other=0.0)
        t = tl.load(thr_ptr + row)
        tied = (s == t) & inside
        quota = tl.load(quota_ptr + row * nb + blk)
        keep = (s > t) | (tied & (tl.cumsum(tied.to(tl.int32), axis=0) <= quota))
        tl.store(keep_ptr + row * n + offs, keep.to(tl.uint8), mask=inside)


_BITS = {torch.bfloat16: (15, "int16"), torch.float16: (15, "int16"), torch.float32: (31, "int32")}


def supported(x: torch.Tensor) -> bool:
    """Whether the kernel takes x: Triton present, a GPU tensor (or Triton's CPU interpreter), a
    dtype it handles, a row that fits and a contiguous last dim."""
    if triton is None or x.dtype not in _BITS or x.shape[-1] > MAX_WIDTH or x.stride(-1) != 1:
        return False
    return x.is_cuda or _interpreting()


@functools.lru_cache(maxsize=None)
def works(dtype: torch.dtype, device: str) -> bool:
    """Whether the kernels build and give the rule's answer on this device (tried once per dtype):
    a Triton that cannot build them makes callers fall back to the torch path with a warning."""
    try:
        x = torch.tensor([[0.5, -2.0, 1.0, -1.0, 3.0, 1.0]], dtype=dtype, device=device)
        out, keep = abs_topk_rows(x, 3)
        expect = [[False, True, True, False, True, False]]  # the first tied 1 only
        keep2 = threshold_keep(x.abs(), torch.tensor([[1.0]], device=device), 3)
        ok = keep.cpu().tolist() == expect and keep2.cpu().tolist() == expect
        reason = "wrong answer"
    except Exception as err:  # a compiler error of any kind
        ok, reason = False, f"{type(err).__name__}: {err}"
    if not ok:
        warnings.warn(f"Triton AbsTopK unavailable ({reason}); using the torch path", RuntimeWarning)
    return ok


def threshold_keep(score: torch.Tensor, thr: torch.Tensor, k: int) -> torch.Tensor:
    """(R, n) bool: per row, the entries of score above thr (R, 1), then the first ones equal to it
    in index order up to k in all (the rule of sparse_gpt.topk.fill_ties) in two passes: counts
    per block of the row, then the mask, each block told how many of its tied entries it keeps."""
    R, n = score.shape
    score = score.contiguous()
    bs = min(4096, triton.next_power_of_2(n))
    nb = triton.cdiv(n, bs)
    thr = thr.reshape(R).to(score.dtype).contiguous()
    above = torch.empty((R, nb), dtype=torch.int32, device=score.device)
    tied = torch.empty((R, nb), dtype=torch.int32, device=score.device)
    warps = max(1, min(8, bs // 512))
    _block_counts_kernel[(R, nb)](score, thr, above, tied, n, nb, BS=bs, num_warps=warps)
    need = k - above.sum(1, keepdim=True)
    quota = (need - (tied.cumsum(1) - tied)).clamp_(min=0).to(torch.int32)  # tied places left per block
    keep = torch.empty((R, n), dtype=torch.uint8, device=score.device)
    _keep_kernel[(R, nb)](score, thr, quota, keep, n, nb, BS=bs, num_warps=warps)
    return keep.view(torch.bool)


def _interpreting() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET") == "1"


def abs_topk_rows(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, keep) for x (..., W): out keeps the k largest |x| of every row (ties by index), keep
    is the bool mask of kept entries. A registered op, so torch.compile keeps it as one call."""
    return torch.ops.sparse_gpt.abs_topk_rows(x, k)


@torch.library.custom_op("sparse_gpt::abs_topk_rows", mutates_args=())
def _abs_topk_rows_op(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    W = x.shape[-1]
    rows = x.reshape(-1, W)  # a view for the q/k/v chunks of one projection (row stride 3W)
    out = torch.empty((rows.shape[0], W), dtype=x.dtype, device=x.device)
    keep = torch.empty((rows.shape[0], W), dtype=torch.uint8, device=x.device)
    nbits, int_name = _BITS[x.dtype]
    block = triton.next_power_of_2(W)
    n_rows = rows.shape[0]
    per = max(1, min(16, 4096 // block))  # rows per program: about 4096 entries each
    _abs_topk_kernel[(triton.cdiv(n_rows, per),)](
        rows, out, keep, n_rows, rows.stride(0), W, k, ROWS=per, BLOCK=block, NBITS=nbits,
        INT=getattr(tl, int_name), num_warps=max(1, min(16, block * per // 256)))
    return out.view(x.shape), keep.view(torch.bool).view(x.shape)


@_abs_topk_rows_op.register_fake
def _(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device),
            torch.empty(x.shape, dtype=torch.bool, device=x.device))
