import math

import pytest
import torch

from sparse_gpt.config import ModelConfig
from sparse_gpt.model import GPT, abs_topk


def small_config(**kw) -> ModelConfig:
    base = dict(vocab_size=64, block_size=16, n_layer=2, d_model=32, d_head=16, afrac=0.25)
    base.update(kw)
    return ModelConfig(**base)


def hook_names(n_layer: int) -> set[str]:
    names = {"final_resid"}
    for i in range(n_layer):
        names |= {f"{i}.attn.{s}" for s in ("act_in", "q", "k", "v", "resid_delta")}
        names |= {f"{i}.mlp.{s}" for s in ("act_in", "post_act", "resid_delta")}
    return names


def test_shapes_and_hook_names():
    torch.manual_seed(0)
    cfg = small_config()
    model = GPT(cfg)
    assert set(model.hook_points) == hook_names(2)
    idx = torch.randint(0, 64, (3, 10))
    with model.hooks(record=model.hook_points) as cache:
        logits = model(idx)
    assert logits.shape == (3, 10, 64)
    assert cache["0.attn.q"].shape == (3, 10, cfg.n_head * cfg.d_head)
    assert cache["1.mlp.post_act"].shape == (3, 10, 4 * 32)
    assert cache["final_resid"].shape == (3, 10, 32)
    # the OpenAI state-dict names that interop relies on
    sd = model.state_dict()
    for key in ("transformer.wte.weight", "transformer.h.1.attn.c_attn.weight", "transformer.h.0.mlp.c_proj.bias",
                "transformer.h.0.ln_1.weight", "transformer.ln_f.weight", "lm_head.weight"):
        assert key in sd
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (3 * 32, 32)


def test_init_scales():
    torch.manual_seed(0)
    model = GPT(small_config(d_model=256, n_layer=8, vocab_size=512))
    fc = model.transformer.h[0].mlp.c_fc.weight
    proj = model.transformer.h[0].mlp.c_proj.weight
    assert abs(fc.std().item() - 0.02) < 1e-3
    assert abs(proj.std().item() - 0.02 / math.sqrt(16)) < 5e-4
    assert torch.all(model.transformer.h[0].mlp.c_fc.bias == 0)


def test_abs_topk_keeps_exactly_k_per_token():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 64)
    y = abs_topk(x, 16)
    assert torch.all((y != 0).sum(-1) == 16)
    # the kept entries are the largest magnitudes, with their signs
    kth = x.abs().topk(16, dim=-1).values[..., -1:]
    assert torch.equal(y, torch.where(x.abs() >= kth, x, torch.zeros_like(x)))


def test_activation_sparsity_at_every_location():
    torch.manual_seed(0)
    cfg = small_config(afrac=0.25)
    model = GPT(cfg)
    with model.hooks(record=model.hook_points) as cache:
        model(torch.randint(0, 64, (2, 12)))
    width_qkv = cfg.n_head * cfg.d_head
    expect = {"attn.act_in": 32 // 4, "attn.q": width_qkv // 4, "attn.k": width_qkv // 4,
              "attn.v": width_qkv // 4, "mlp.act_in": 32 // 4, "mlp.post_act": 128 // 4}
    for suffix, k in expect.items():
        nnz = (cache[f"1.{suffix}"] != 0).sum(-1)
        assert torch.all(nnz == k), suffix
    # a subset of locations only
    model = GPT(small_config(afrac=0.25, afrac_locations=["mlp_neuron"]))
    with model.hooks(record=["0.mlp.post_act", "0.attn.q"]) as cache:
        model(torch.randint(0, 64, (2, 12)))
    assert torch.all((cache["0.mlp.post_act"] != 0).sum(-1) == 32)
    assert (cache["0.attn.q"] != 0).sum(-1).min() > width_qkv // 4


def test_causal():
    torch.manual_seed(0)
    model = GPT(small_config())
    a = torch.randint(0, 64, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 64
    assert torch.allclose(model(a)[0, :8], model(b)[0, :8], atol=1e-6)


def naive_attention_with_sink(q, k, v, sink):  # q,k,v (B, nh, T, hs); sink (nh,)
    T, hs = q.shape[2], q.shape[3]
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    sink_col = sink.view(1, -1, 1, 1).expand(q.shape[0], -1, T, 1)
    p = torch.softmax(torch.cat([sink_col, scores], dim=-1), dim=-1)
    return p[..., 1:] @ v  # the sink's value is zero


def test_sink_attention_matches_reference():
    torch.manual_seed(0)
    cfg = small_config(afrac=None, attn_sink=True)
    model = GPT(cfg)
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.sink_logit.copy_(torch.tensor([0.5, -1.0]))
    x = torch.randn(2, 9, 32)
    q, k, v = attn.c_attn(x).chunk(3, dim=-1)
    split = lambda t: t.view(2, 9, 2, 16).transpose(1, 2)
    ref = naive_attention_with_sink(split(q), split(k), split(v), attn.sink_logit)
    ref = attn.c_proj(ref.transpose(1, 2).reshape(2, 9, 32))
    assert torch.allclose(attn(x), ref, atol=1e-5)
    # a huge sink logit makes every head attend nowhere: the output is c_proj's bias alone
    with torch.no_grad():
        attn.sink_logit.fill_(50.0)
        attn.c_proj.bias.normal_()
    assert torch.allclose(attn(x), attn.c_proj.bias.expand(2, 9, 32), atol=1e-5)


def test_bigram_table_and_pos_emb():
    torch.manual_seed(0)
    model = GPT(small_config(bigram_table=True, pos_emb="learned"))
    idx = torch.randint(0, 64, (2, 5))
    base = model(idx)
    with torch.no_grad():
        model.bigram_table[idx[0, 0], 7] = 3.0
    assert torch.isclose(model(idx)[0, 0, 7] - base[0, 0, 7], torch.tensor(3.0), atol=1e-5)
    assert "transformer.wpe.weight" in model.state_dict()


def test_hooks_replace_and_are_removed_even_on_error():
    torch.manual_seed(0)
    model = GPT(small_config())
    idx = torch.randint(0, 64, (2, 6))
    clean = model(idx)
    with model.hooks(replace={"1.mlp.resid_delta": torch.zeros_like}, record=["1.mlp.resid_delta"]) as cache:
        patched = model(idx)
    assert torch.all(cache["1.mlp.resid_delta"] == 0)  # records see the replaced value
    assert not torch.allclose(clean, patched)
    with pytest.raises(RuntimeError):
        with model.hooks(replace={"0.attn.v": torch.zeros_like}):
            raise RuntimeError("boom")
    assert all(not hp._forward_hooks for hp in model.hook_points.values())
    assert torch.equal(model(idx), clean)
    with pytest.raises(KeyError, match="did you mean '0.attn.q'"):
        with model.hooks(record=["0.attn.qq"]):
            pass


def test_context_too_long():
    model = GPT(small_config())
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_logits_at_positions_equal_the_full_logits_there():
    torch.manual_seed(0)
    model = GPT(small_config(bigram_table=True))
    with torch.no_grad():
        model.bigram_table.normal_()
    idx = torch.randint(0, model.config.vocab_size, (5, 12))
    pos = torch.tensor([0, 11, 3, 7, 7])
    full = model(idx)
    torch.testing.assert_close(model(idx, positions=pos), full[torch.arange(5), pos])
