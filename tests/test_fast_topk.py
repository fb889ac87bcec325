"""The fast exact top-k paths against their torch.topk references: the same kept set, ties aside."""
import pytest
import torch

from sparse_gpt.model import abs_topk, abs_topk_reference
from sparse_gpt.sparsity import keep_topk_, keep_topk_group_, keep_topk_reference_
from sparse_gpt.topk import fill_ties, keep_mask

METHODS = ("partition", "topk", "kthvalue", "bisect")


def _random_weight(gen, shape, ties: bool, zeros: bool) -> torch.Tensor:
    w = torch.randn(shape, generator=gen)
    if ties:  # few distinct magnitudes: many entries tie with the k-th largest
        w = (w * 2).round() / 2
    if zeros:  # whole stretches of exact zeros, as a sparse matrix has after the top-k
        w[torch.rand(shape, generator=gen) < 0.7] = 0.0
    return w


def _check_same_set(w: torch.Tensor, ref: torch.Tensor, fast: torch.Tensor, k: int, floor: int, unit_dim):
    """Exactly as many nonzeros; the kept magnitudes are the same multiset (identical sets when no
    magnitude ties at the threshold); every unit keeps its floor."""
    assert int((fast != 0).sum()) == int((ref != 0).sum())
    assert torch.equal(fast.abs().flatten().sort().values, ref.abs().flatten().sort().values)
    kept = fast != 0
    assert torch.equal(fast[kept], w[kept])  # survivors are untouched
    if floor and unit_dim is not None:
        assert torch.equal((fast != 0).sum(1 - unit_dim), (ref != 0).sum(1 - unit_dim)) or \
            (w.abs().unique().numel() < w.numel())  # per-unit counts may differ only through ties


@pytest.mark.parametrize("method", METHODS)
def test_threshold_top_k_keeps_the_reference_set_without_ties(method):
    gen = torch.Generator().manual_seed(0)
    for shape, k, floor, unit_dim in [((48, 80), 400, 4, 0), ((48, 80), 400, 4, 1), ((64, 32), 256, 4, 0),
                                      ((96, 16), 384, 4, 1), ((500,), 37, 0, None), ((33, 7), 1, 0, None),
                                      ((48, 80), 48 * 4, 4, 0), ((48, 80), 3839, 4, 1)]:
        w = torch.randn(shape, generator=gen)
        w[3] *= 1e-4  # a weak unit only the floor keeps alive
        ref, fast = w.clone(), w.clone()
        keep_topk_reference_(ref, k, floor, unit_dim)
        keep_topk_(fast, k, floor, unit_dim, method=method)
        assert torch.equal(ref != 0, fast != 0), (shape, k, floor, unit_dim)
        assert torch.equal(ref, fast)


@pytest.mark.parametrize("method", METHODS)
def test_threshold_top_k_with_ties_and_zeros(method):
    gen = torch.Generator().manual_seed(1)
    for trial in range(12):
        unit_dim = (0, 1, None)[trial % 3]
        floor = 0 if unit_dim is None else 4
        w = _random_weight(gen, (40, 24), ties=trial % 2 == 0, zeros=trial % 4 < 2)
        for k in (40 * 4, 200, 500, 959):
            ref, fast = w.clone(), w.clone()
            keep_topk_reference_(ref, k, floor, unit_dim)
            keep_topk_(fast, k, floor, unit_dim, method=method)
            _check_same_set(w, ref, fast, k, floor, unit_dim)
            if floor:
                assert int((fast != 0).sum(1 - unit_dim).min()) >= min(4, int((w != 0).sum(1 - unit_dim).min()))


def test_threshold_mask_keeps_exactly_k_per_row_under_ties():
    score = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    for method in METHODS:
        keep = keep_mask(score, 3, method)
        assert keep.sum(1).tolist() == [3, 3]
        assert keep[0].tolist() == [True, True, False, False, False, True]  # first tie in index order
        assert keep[1].tolist() == [True, True, True, False, False, False]


def _rule_reference(score: torch.Tensor, k: int) -> torch.Tensor:
    """The tie rule spelled out: a stable sort by descending value keeps equal values in index
    order, so its first k entries are the ones the rule keeps."""
    order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [6, 97, 1024, 3000, 5 * 1024])  # one block, a prime length, several blocks
def test_keep_mask_follows_the_tie_rule(method, n):
    gen = torch.Generator().manual_seed(n)
    for trial in range(6):
        score = torch.randint(0, (2, 5, 50, 10 ** 6)[trial % 4], (7, n), generator=gen).float()
        for k in sorted({1, 2, n // 3, n // 2, n - 1, n}):
            assert torch.equal(keep_mask(score, k, method), _rule_reference(score, k)), (trial, k)


def test_fill_ties_fills_across_blocks_in_index_order():
    n = 4096  # blocks of 1024
    tied = torch.zeros(3, n, dtype=torch.bool)
    tied[:, ::7] = True
    above = torch.zeros(3, n, dtype=torch.bool)
    above[:, 1::7] = True
    k = int(above[0].sum()) + 300  # the quota runs out inside the third block
    keep = fill_ties(above, tied, k)
    assert keep.sum(1).tolist() == [k] * 3
    first = torch.nonzero(tied[0]).flatten()[:300]
    expect = above[0].clone()
    expect[first] = True
    assert torch.equal(keep[0], expect)


@pytest.mark.parametrize("method", METHODS)
def test_keep_mask_bf16_and_float64(method):
    gen = torch.Generator().manual_seed(5)
    score = torch.randn(9, 300, generator=gen).abs()
    score[0, :50] = float("inf")  # the neuron floor's protected entries
    score[1] = 0.0
    for dtype in (torch.bfloat16, torch.float16, torch.float64):  # bf16 has many ties; numpy has no bf16
        s = score.to(dtype)
        for k in (1, 77, 299):
            assert torch.equal(keep_mask(s, k, method), _rule_reference(s, k)), (dtype, k)


def test_grouped_top_k_equals_one_call_per_tensor():
    gen = torch.Generator().manual_seed(2)
    ws = [torch.randn(32, 64, generator=gen) for _ in range(3)]
    grouped = [w.clone() for w in ws]
    keep_topk_group_(grouped, 300, 4, 1)
    for w, g in zip(ws, grouped):
        keep_topk_reference_(w, 300, 4, 1)
        assert torch.equal(w, g)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="top-k method"):
        keep_topk_(torch.randn(4, 4), 3, method="bogus")


# ----- activation AbsTopK ----------------------------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
def test_abs_topk_forward_and_backward_match_the_reference(ties):
    gen = torch.Generator().manual_seed(3)
    for shape, k in [((2, 5, 64), 16), ((3, 7, 512), 128), ((4, 32), 1), ((4, 32), 31), ((2, 3, 48), 12)]:
        x = torch.randn(shape, generator=gen)
        if ties:
            x = (x * 2).round() / 2  # many equal magnitudes, and exact zeros
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        ref, fast = abs_topk_reference(x1, k), abs_topk(x2, k)
        up = torch.randn(shape, generator=gen)
        (ref * up).sum().backward()
        (fast * up).sum().backward()
        assert torch.equal((fast != 0).sum(-1), (ref != 0).sum(-1)) or ties
        if not ties:
            assert torch.equal(ref, fast)
            assert torch.equal(x1.grad, x2.grad)
        else:  # same count of kept entries per row (zeros aside), the same kept magnitudes
            kept_f = (x2.grad != 0) | (fast != 0)
            assert torch.equal(kept_f.sum(-1), torch.full(shape[:-1], k))
            assert torch.equal(fast.abs().sort(-1).values, ref.abs().sort(-1).values)
            assert torch.equal(x2.grad[kept_f], up[kept_f])  # the gradient flows exactly where kept
            assert torch.equal(fast[kept_f], x[kept_f])


def test_abs_topk_keeps_dtype_and_passes_through_when_k_is_full():
    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    out = abs_topk(x, 2)
    assert out.dtype == torch.bfloat16
    # bf16 magnitudes tie often: the reference (torch.topk) breaks ties arbitrarily, the rule by index
    assert torch.equal(out.abs().sort(-1).values, abs_topk_reference(x, 2).abs().sort(-1).values)
    assert torch.equal(out != 0, _rule_reference(x.abs().float().view(-1, 8), 2).view(x.shape))
    assert abs_topk(x, 8) is x


# ----- on a GPU (skipped without one) ---------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_METHODS = ("topk", "bisect", "auto", "triton")


@cuda
@pytest.mark.parametrize("method", GPU_METHODS)
def test_cuda_weight_top_k_keeps_the_reference_set(method):
    gen = torch.Generator().manual_seed(7)
    for shape, k, floor, unit_dim in [((1536, 512), 12288, 4, 0), ((512, 2048), 16384, 4, 1),
                                      ((4096, 512), 131072, 0, None), ((256, 96), 96 * 4, 4, 0)]:
        ws = [torch.randn(shape, generator=gen) for _ in range(3)]
        fast = [w.cuda() for w in ws]
        keep_topk_group_(fast, k, floor, unit_dim, method=method)
        for w, f in zip(ws, fast):
            keep_topk_reference_(w, k, floor, unit_dim)
            assert torch.equal(w != 0, f.cpu() != 0), (shape, method)
            assert torch.equal(w, f.cpu())


@cuda
@pytest.mark.parametrize("method", GPU_METHODS)
def test_cuda_keep_mask_follows_the_tie_rule(method):
    gen = torch.Generator().manual_seed(8)
    for n, vals in [(4096, 3), (3000, 50), (786432, 10 ** 6), (97, 2)]:
        score = torch.randint(0, vals, (5, n), generator=gen).float()
        for k in (1, n // 64, n // 2, n - 1):
            assert torch.equal(keep_mask(score.cuda(), k, method).cpu(), _rule_reference(score, k)), (n, k)


@cuda
@pytest.mark.parametrize("method", GPU_METHODS)
def test_cuda_abs_topk_bf16_forward_and_backward(method):
    gen = torch.Generator().manual_seed(9)
    for rows, width, k in [(512, 4096, 1024), (300, 1024, 256), (64, 512, 1)]:
        x = torch.randn(rows, width, generator=gen).to(torch.bfloat16)  # bf16: many tied magnitudes
        xc = x.cuda().requires_grad_()
        out = abs_topk(xc, k, method)
        assert out.dtype == torch.bfloat16
        up = torch.randn(rows, width, generator=gen).to(torch.bfloat16).cuda()
        (grad,) = torch.autograd.grad(out, xc, up)
        keep = _rule_reference(x.abs().float(), k)  # bf16 -> fp32 is exact, so the order is the same
        assert torch.equal(out.cpu(), torch.where(keep, x, torch.zeros_like(x))), (width, method)
        assert torch.equal(grad.cpu(), torch.where(keep, up.cpu(), torch.zeros_like(x)))
        ref = abs_topk_reference(x.cuda(), k)  # torch.topk: the same magnitudes kept
        assert torch.equal(ref.abs().float().sort(-1).values.cpu(), out.detach().abs().float().sort(-1).values.cpu())
