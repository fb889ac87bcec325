"""The Triton AbsTopK kernel against the shared top-k rule: the same kept entries (ties by index),
the same output, the gradient through the kept entries only. Runs on a GPU, or on CPU under
Triton's interpreter (TRITON_INTERPRET=1); skipped where Triton is not installed."""
import os

import pytest
import torch

from sparse_gpt import topk_triton
from sparse_gpt.model import abs_topk
from sparse_gpt.topk import keep_mask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    topk_triton.triton is None or (DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1"),
    reason="needs Triton and a GPU (or TRITON_INTERPRET=1)")


def _rule(x: torch.Tensor, k: int) -> torch.Tensor:
    W = x.shape[-1]
    return keep_mask(x.detach().abs().float().cpu().reshape(-1, W), k, "topk").view(x.shape)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_triton_abs_topk_follows_the_rule(dtype):
    gen = torch.Generator().manual_seed(0)
    shapes = [((4, 64), 16), ((3, 100), 25), ((5, 512), 1), ((2, 96), 95)]
    if DEVICE == "cuda":
        shapes += [((64, 8, 4096), 1024), ((128, 2048), 512), ((300, 1024), 256), ((16, 3000), 750)]
    for shape, k in shapes:
        x = torch.randn(shape, generator=gen)
        if dtype == torch.float32:
            x = (x * 2).round() / 2  # ties at the threshold
        x.view(-1, shape[-1])[0, :10] = 0.0
        x = x.to(DEVICE, dtype)
        assert topk_triton.supported(x)
        out, keep = topk_triton.abs_topk_rows(x, k)
        rule = _rule(x, k)
        assert torch.equal(keep.cpu(), rule), (shape, dtype)
        assert torch.equal(out.cpu(), torch.where(rule, x.cpu(), torch.zeros((), dtype=dtype)))


def test_triton_abs_topk_on_a_strided_chunk_with_gradient():
    gen = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 16, 3 * 64, generator=gen).to(DEVICE, torch.bfloat16 if DEVICE == "cuda" else torch.float32)
    q = qkv.requires_grad_().chunk(3, dim=-1)[1]  # row stride 3 x 64: a view, not a copy
    out = abs_topk(q, 16, "triton")
    up = torch.randn(q.shape, generator=gen).to(q.device, q.dtype)
    (grad,) = torch.autograd.grad(out, qkv, up)
    rule = _rule(q, 16)
    assert torch.equal(out.detach().cpu(), torch.where(rule, q.detach().cpu(), torch.zeros((), dtype=q.dtype)))
    expect = torch.zeros_like(qkv).cpu()
    expect[..., 64:128] = torch.where(rule, up.cpu(), torch.zeros((), dtype=q.dtype))
    assert torch.equal(grad.cpu(), expect)


def test_triton_kernel_probe_works():
    assert topk_triton.works(torch.float32 if DEVICE == "cpu" else torch.bfloat16, DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_threshold_keep_follows_the_rule_across_blocks(dtype):
    from sparse_gpt.topk import kth_largest
    gen = torch.Generator().manual_seed(2)
    sizes = [(3, 97), (2, 4096), (2, 10000)] + ([(4, 786432), (2, 3 * 1024 * 1024 + 5)] if DEVICE == "cuda" else [])
    for rows, n in sizes:
        for values in (3, 1000, 10 ** 6):
            score = torch.randint(0, values, (rows, n), generator=gen).to(dtype)
            for k in sorted({1, max(1, n // 64), n // 2, n - 1}):
                s = score.to(DEVICE)
                keep = topk_triton.threshold_keep(s, kth_largest(s, k, "topk"), k)
                expect = keep_mask(score.float(), k)  # CPU: numpy.partition, then the tie rule
                assert torch.equal(keep.cpu(), expect), (rows, n, values, k, dtype)
