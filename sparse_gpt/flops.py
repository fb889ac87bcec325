"""Model FLOPs per token and model FLOPs utilisation (MFU) for the training logs.

FLOPs per trained token (the PaLM / nanoGPT convention, forward + backward = 3 x forward):

    6 * N_matmul + 12 * n_layer * T * d_attn

N_matmul counts the weights of every matrix multiply: per layer c_attn (d x 3 d_attn), attn c_proj
(d_attn x d), c_fc (d x d_mlp), mlp c_proj (d_mlp x d), plus the unembedding (d x vocab). The token
and position embeddings and the bigram table are lookups (no FLOPs); biases, norms, softmax and
AbsTopK are left out. The attention term counts QK^T and AV over the full context T (causal masking
not halved, as in PaLM). Sparse weights are counted as dense: our matmuls are dense and multiply the
zeros too, so MFU measures how well the hardware is used, not useful work on nonzeros.
"""
from __future__ import annotations

from .config import ModelConfig

# bf16 dense tensor-core peaks (FLOP/s) from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name() in order (first substring match wins).
BF16_PEAK_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100", 989e12),     # SXM / HBM3
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
]


def matmul_params(cfg: ModelConfig) -> int:
    d, d_attn = cfg.d_model, cfg.n_head * cfg.d_head
    per_layer = d * 3 * d_attn + d_attn * d + 2 * d * cfg.mlp_width
    return cfg.n_layer * per_layer + d * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs (forward + backward) per token at context seq_len (default block_size)."""
    T = seq_len or cfg.block_size
    return 6 * matmul_params(cfg) + 12 * cfg.n_layer * T * cfg.n_head * cfg.d_head


def peak_flops(device: str, override_tflops: float | None = None) -> float | None:
    """The device's bf16 peak in FLOP/s; None on CPU or an unknown GPU (MFU is then unavailable)
    unless override_tflops (train.peak_tflops) gives it."""
    if override_tflops:
        return override_tflops * 1e12
    if not str(device).startswith("cuda"):
        return None
    import torch
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in BF16_PEAK_FLOPS if key in name), None)


def mfu(cfg: ModelConfig, tokens_per_s: float, peak: float | None, seq_len: int | None = None) -> float | None:
    return None if not peak else flops_per_token(cfg, seq_len) * tokens_per_s / peak
