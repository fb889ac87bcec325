"""The flash sink attention against the naive softmax over [sink, causal scores], in float64:
the forward and the gradients of q, k, v and the sink logits."""
import pytest
import torch

from sparse_gpt.sink_attention import flash_supported, sink_attention, sink_attention_masked


def naive_sink_attention(q, k, v, sink):  # q, k, v (B, H, T, D); sink (H,)
    T = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    sink_col = sink.view(1, -1, 1, 1).expand(q.shape[0], -1, T, 1)
    p = torch.softmax(torch.cat([sink_col, scores], dim=-1), dim=-1)
    return p[..., 1:] @ v  # the sink's value is zero


def _inputs(B=2, H=3, T=37, D=8, seed=0, sink_scale=2.0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    sink = torch.randn(H, generator=g, dtype=torch.float64) * sink_scale
    return [t.requires_grad_() for t in (q, k, v, sink)]


def _grads(fn, inputs, dout):
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, dout)
    return out.detach(), grads


@pytest.mark.parametrize("shape", [(2, 3, 37, 8), (1, 2, 1, 16), (3, 1, 64, 4)])
def test_flash_sink_attention_forward_and_gradients_match_naive(shape):
    B, H, T, D = shape
    inputs = _inputs(B, H, T, D)
    assert flash_supported(inputs[0])
    dout = torch.randn(B, H, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out, grads = _grads(sink_attention, inputs, dout)
    ref, ref_grads = _grads(naive_sink_attention, inputs, dout)
    assert torch.allclose(out, ref, atol=1e-12, rtol=1e-10)
    for name, g, r in zip(("q", "k", "v", "sink"), grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-11, rtol=1e-9), name


def test_flash_sink_attention_gradcheck():
    inputs = _inputs(1, 2, 6, 4, seed=3)
    assert torch.autograd.gradcheck(sink_attention, inputs)


def test_masked_reference_matches_naive_and_extreme_sinks():
    q, k, v, sink = _inputs(2, 2, 9, 8, seed=2)
    with torch.no_grad():
        ref = naive_sink_attention(q, k, v, sink)
        assert torch.allclose(sink_attention_masked(q, k, v, sink), ref, atol=1e-12)
        assert torch.allclose(sink_attention(q, k, v, sink, flash=False), ref, atol=1e-12)
        # a huge sink makes every head attend nowhere; a very negative one gives plain attention
        assert torch.allclose(sink_attention(q, k, v, torch.full_like(sink, 60.0)), torch.zeros_like(q), atol=1e-20)
        plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert torch.allclose(sink_attention(q, k, v, torch.full_like(sink, -80.0)), plain, atol=1e-12)


def test_a_failing_flash_backward_falls_back_to_the_masked_path(monkeypatch):
    from sparse_gpt import sink_attention as sa

    def broken(*args):
        raise RuntimeError("no such op in this torch")
    inputs = _inputs(2, 2, 11, 8, seed=7)
    dout = torch.randn(2, 2, 11, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    _, ref_grads = _grads(naive_sink_attention, inputs, dout)
    monkeypatch.setattr(sa, "_flash_backward", broken)
    with pytest.warns(RuntimeWarning, match="flash backward unavailable"):
        _, grads = _grads(sink_attention, inputs, dout)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-11)


def test_a_failing_flash_forward_falls_back_to_the_masked_path(monkeypatch):
    from sparse_gpt import sink_attention as sa

    def broken(*args):
        raise RuntimeError("no such op in this torch")
    q, k, v, sink = _inputs(1, 2, 5, 8, seed=9)
    monkeypatch.setattr(sa, "_flash_forward", broken)
    with pytest.warns(RuntimeWarning, match="flash sink attention unavailable"):
        out = sink_attention(q, k, v, sink)
    assert torch.allclose(out, naive_sink_attention(q, k, v, sink), atol=1e-12)


def test_flash_sink_attention_float32_close_to_float64():
    q, k, v, sink = _inputs(2, 4, 50, 16, seed=4)
    ref = naive_sink_attention(q, k, v, sink)
    out = sink_attention(*(t.detach().float() for t in (q, k, v, sink)))
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_flash_sink_attention_cuda_bf16_matches_fp64_reference():
    q, k, v, sink = _inputs(4, 8, 256, 16, seed=5)
    dout = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    ref, ref_grads = _grads(naive_sink_attention, [q, k, v, sink], dout)
    cuda_inputs = [t.detach().to("cuda", torch.bfloat16).requires_grad_() for t in (q, k, v)]
    cuda_sink = sink.detach().to("cuda", torch.float32).requires_grad_()
    assert flash_supported(cuda_inputs[0])
    out = sink_attention(*cuda_inputs, cuda_sink)
    grads = torch.autograd.grad(out, cuda_inputs + [cuda_sink], dout.to("cuda", torch.bfloat16))
    assert (out.double().cpu() - ref).abs().max() < 3e-2
    for name, g, r in zip(("q", "k", "v", "sink"), grads, ref_grads):
        err = (g.double().cpu() - r).abs().max() / r.abs().max()
        assert err < 3e-2, (name, float(err))
