"""Causal attention with a per-head sink, computed by the flash kernel.

The sink is an extra key/value slot with k = v = 0 whose score is a learned per-head logit s. Its
value being zero, the output is plain causal attention's output y rescaled per query:

    out_i = y_i * Z_i / (Z_i + e^s) = y_i * sigmoid(lse_i - s),     lse_i = log Z_i

so the forward is one flash call (which returns lse) plus an elementwise scale. The backward is the
flash backward run with the sink-inclusive log-sum-exp, logaddexp(lse, s), and the scaled output:
the kernel then recomputes exactly the probabilities of the sink softmax. The sink's own gradient is
ds = -sum_i p_sink(i) * D_i with D_i = dout_i . out_i and p_sink(i) = sigmoid(s - lse_i).

Passing the sink as a float mask over a prepended zero key instead (the reference, `sink_attention_masked`)
rules out the flash kernel; this path keeps it. Where the flash op is unavailable for the inputs (an
unsupported dtype or head width, a torch whose op differs) it falls back to the masked path.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def sink_attention_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """The reference: SDPA over a prepended zero key whose score is the sink logit (any device/dtype)."""
    B, H, T, D = q.shape
    zero = q.new_zeros(B, H, 1, D)
    k = torch.cat([zero, k], dim=2)  # (B, H, 1+T, D)
    v = torch.cat([zero, v], dim=2)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    mask = torch.zeros(H, T, T + 1, dtype=q.dtype, device=q.device)
    mask[:, :, 1:].masked_fill_(~causal, float("-inf"))
    mask[:, :, 0] = sink.to(q.dtype)[:, None]  # q . 0 = 0, so the score is the logit
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _flash_forward(q, k, v):
    """(y, lse, ctx) from the device's flash op; ctx is what its backward needs besides q, k, v, out, lse."""
    if q.is_cuda:
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False)
        # outputs: out, lse, cum_seq_q, cum_seq_k, max_q, max_k, rng/philox seed, philox offset, debug
        return res[0], res[1], tuple(res[2:8])
    y, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)
    return y, lse, ()


def _flash_backward(dout, q, k, v, out, lse, ctx):
    if q.is_cuda:
        cum_q, cum_k, max_q, max_k, seed, offset = ctx
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dout, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, 0.0, True, seed, offset)
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(dout, q, k, v, out, lse, 0.0, True)


def _masked_grads(q, k, v, sink, dout):
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (q, k, v, sink)]
        return torch.autograd.grad(sink_attention_masked(*inputs), inputs, dout)


class _SinkFlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sink):
        y, lse, flash_ctx = _flash_forward(q, k, v)  # lse (B, H, T), fp32 on CUDA
        if lse.shape != q.shape[:3]:
            raise RuntimeError(f"flash op returned a log-sum-exp of shape {tuple(lse.shape)}")
        s = sink.to(lse.dtype)[None, :, None]
        out = y * torch.sigmoid(lse - s).to(y.dtype)[..., None]
        lse_sink = torch.logaddexp(lse, s)
        ctx.save_for_backward(q, k, v, out, lse_sink, sink)
        ctx.flash_ctx = flash_ctx
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse_sink, sink = ctx.saved_tensors
        dout = dout.contiguous() if dout.stride(-1) != 1 else dout
        try:
            dq, dk, dv = _flash_backward(dout, q, k, v, out, lse_sink, ctx.flash_ctx)
        except (RuntimeError, TypeError, IndexError) as err:  # an op that differs in another torch
            warnings.warn(f"flash backward unavailable ({type(err).__name__}: {err}); differentiating "
                          f"the masked path instead", RuntimeWarning, stacklevel=2)
            return _masked_grads(q, k, v, sink, dout)
        p_sink = torch.exp(sink.to(lse_sink.dtype)[None, :, None] - lse_sink)  # (B, H, T)
        d = (dout.to(p_sink.dtype) * out.to(p_sink.dtype)).sum(-1)  # D_i
        dsink = -(p_sink * d).sum((0, 2)).to(sink.dtype)
        return dq, dk, dv, dsink


def flash_supported(q: torch.Tensor) -> bool:
    """Whether the flash op takes these inputs (B, H, T, D): CUDA needs fp16/bf16 and a head width
    that is a multiple of 8 up to 256; the CPU op takes fp32/fp64/bf16/fp16."""
    D = q.shape[-1]
    if q.is_cuda:
        return q.dtype in (torch.float16, torch.bfloat16) and D % 8 == 0 and D <= 256
    return q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def sink_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sink: torch.Tensor,
                   flash: bool = True) -> torch.Tensor:
    """Causal attention of q, k, v (B, H, T, D) with a sink logit per head (H,); the default scale
    1/sqrt(D). flash=False (or inputs the flash op does not take) runs the masked reference."""
    if flash and flash_supported(q):
        try:
            return _SinkFlashAttention.apply(q, k, v, sink)
        except (RuntimeError, TypeError, IndexError) as err:  # an op that differs in another torch
            warnings.warn(f"flash sink attention unavailable ({type(err).__name__}: {err}); "
                          f"using the masked path", RuntimeWarning, stacklevel=2)
    return sink_attention_masked(q, k, v, sink)
