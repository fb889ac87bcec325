"""FLOPs per token and MFU (sparse_gpt/flops.py)."""
import pytest

from sparse_gpt.config import ModelConfig
from sparse_gpt.flops import flops_per_token, matmul_params, mfu, peak_flops
from sparse_gpt.model import GPT


def test_flops_per_token_by_hand():
    cfg = ModelConfig(vocab_size=300, block_size=32, n_layer=2, d_model=64, d_head=16, bigram_table=True)
    # per layer: c_attn 64x192, attn c_proj 64x64, c_fc 64x256, mlp c_proj 256x64; unembedding 64x300
    n = 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64) + 64 * 300
    assert matmul_params(cfg) == n
    assert flops_per_token(cfg) == 6 * n + 12 * 2 * 32 * 64
    # the matmul weights are the model's parameters minus lookups (embeddings, bigram table) and the
    # small vectors (biases, norm gains, sink logits)
    model = GPT(cfg)
    lookups = 300 * 64 + 300 * 300
    small = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 1)
    assert model.num_params() == n + lookups + small


def test_peak_and_mfu():
    assert peak_flops("cpu") is None
    assert peak_flops("cpu", override_tflops=2.0) == 2e12
    cfg = ModelConfig(vocab_size=300, block_size=32, n_layer=2, d_model=64, d_head=16)
    assert mfu(cfg, 1000.0, None) is None
    assert mfu(cfg, 1000.0, 1e12) == pytest.approx(flops_per_token(cfg) * 1000.0 / 1e12)
