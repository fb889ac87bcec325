import math

import pytest
import torch

from sparse_gpt.config import ConfigError, ModelConfig, SparsityConfig, TrainConfig
from sparse_gpt.model import GPT
from sparse_gpt.sparsity import SparseAdam, density_scale, keep_topk_, lr_multiplier, sparse_tensors


def tiny_model(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=96, block_size=16, n_layer=2, d_model=64, d_head=16, **kw))


def test_keep_topk_exact_count_and_neuron_floor():
    torch.manual_seed(0)
    for unit_dim in (0, 1):
        w = torch.randn(48, 80)
        # make one unit tiny so that only the floor can keep it alive
        if unit_dim == 0:
            w[5] *= 1e-4
        else:
            w[:, 5] *= 1e-4
        keep_topk_(w, k=400, floor=4, unit_dim=unit_dim)
        assert int(w.count_nonzero()) == 400
        per_unit = (w != 0).sum(dim=1 - unit_dim)
        assert per_unit.min().item() >= 4
        assert per_unit[5].item() == 4


def test_sparse_tensors_cover_the_right_weights():
    model = tiny_model(bias=True)
    names = {t.name: t for t in sparse_tensors(model, SparsityConfig(matrix_density=1 / 8, embed_density=1 / 4))}
    assert names["transformer.h.0.attn.c_attn.weight"].unit_dim == 0
    assert names["transformer.h.0.mlp.c_fc.weight"].unit_dim == 0
    assert names["transformer.h.1.attn.c_proj.weight"].unit_dim == 1
    assert names["transformer.h.1.mlp.c_proj.weight"].unit_dim == 1
    assert names["transformer.wte.weight"].density == 1 / 4 and names["lm_head.weight"].unit_dim is None
    assert "transformer.h.0.mlp.c_fc.bias" in names
    assert not any("ln_" in n or "sink" in n for n in names)


def test_trained_nonzero_counts_match_targets():
    model = tiny_model()
    sp = SparsityConfig(matrix_density=1 / 8, embed_density=1 / 4, anneal_start=0.0, anneal_end=0.5)
    opt = SparseAdam(model, sp, TrainConfig(steps=6, lr=1e-2))
    x = torch.randint(0, 96, (4, 16))
    for step in range(6):
        model(x).logsumexp(-1).mean().backward()
        opt.step(step)
        opt.zero_grad()
    for row in opt.nonzero_report():
        assert row["nonzero"] == row["target"], row
    for t in opt.tensors:
        if t.unit_dim is not None:
            assert (t.param != 0).sum(dim=1 - t.unit_dim).min() >= 4, t.name
    # dense parameters stay dense
    assert int(model.transformer.ln_f.weight.count_nonzero()) == 64


def test_impossible_density_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ConfigError, match="neuron floor needs"):
        sparse_tensors(model, SparsityConfig(matrix_density=1 / 64))


def test_a_density_that_empties_an_embedding_or_bias_names_the_right_setting():
    """Embeddings and biases have no neuron floor; the message names embed_density (not
    matrix_density) and, for a bias, the switch that makes biases sparse."""
    model = tiny_model()
    with pytest.raises(ConfigError, match=r"embed_density=1e-05 keeps 0 of \d+ weights in "
                                          r"transformer\.wte\.weight \(an embedding\)"):
        sparse_tensors(model, SparsityConfig(matrix_density=0.25, embed_density=1e-5,
                                             sparsify_biases=False))
    with pytest.raises(ConfigError, match=r"\.bias \(a bias.*sparsify_biases=false"):
        sparse_tensors(model, SparsityConfig(matrix_density=0.25, embed_density=1e-3))


def test_schedules_at_key_fractions():
    assert density_scale(0.0, 0.01, 0.5) == 0.0
    assert density_scale(0.01, 0.01, 0.5) == 0.0
    assert density_scale(0.255, 0.01, 0.5) == pytest.approx(0.5)
    assert density_scale(0.5, 0.01, 0.5) == 1.0 and density_scale(0.9, 0.01, 0.5) == 1.0
    # 1000 steps, 1% warmup: 10 warmup steps, then linear to 0
    assert lr_multiplier(0, 1000, 0.01) == pytest.approx(0.1)
    assert lr_multiplier(9, 1000, 0.01) == pytest.approx(1.0)
    assert lr_multiplier(10, 1000, 0.01) == pytest.approx(1.0)
    assert lr_multiplier(505, 1000, 0.01) == pytest.approx(0.5)
    assert lr_multiplier(999, 1000, 0.01) == pytest.approx(1 / 990)
    # the sharkfin factor sqrt(L0_final / L0_now): 1/sqrt(density ratio) at the start, 1 at the end
    model = tiny_model()
    opt = SparseAdam(model, SparsityConfig(matrix_density=1 / 8, embed_density=1 / 4), TrainConfig(steps=1000, lr=1.0))
    dense_l0 = sum(t.numel for t in opt.tensors)
    assert opt.schedule(10)["lr"] == pytest.approx(math.sqrt(opt.l0_final / dense_l0))
    assert opt.schedule(600)["lr"] == pytest.approx(lr_multiplier(600, 1000, 0.01))
    assert opt.schedule(600)["l0"] == opt.l0_final


def test_one_step_matches_hand_computation():
    """Grad RMS normalisation, Adam(0.9, 0.95, eps 0.1), top-k, then decoupled decay, by hand."""
    torch.manual_seed(0)
    model = tiny_model(bias=True)
    train = TrainConfig(steps=4, lr=0.05, warmup_frac=0.0, weight_decay=0.1)
    sp = SparsityConfig(matrix_density=1 / 8, embed_density=1 / 4, anneal_start=0.0, anneal_end=0.25)
    opt = SparseAdam(model, sp, train)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randint(0, 96, (2, 16))).pow(2).mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    opt.step(0)

    n_total = sum(g.numel() for g in grads.values())
    rms = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads.values()) / n_total)
    lr = 0.05 * lr_multiplier(0, 4, 0.0) * math.sqrt(opt.l0_final / opt.l0_at(0.0))
    specs = {t.name: t for t in opt.tensors}
    for name, p in model.named_parameters():
        g = grads[name] / rms
        m_hat = (0.1 * g) / (1 - 0.9)
        v_hat = (0.05 * g * g) / (1 - 0.95)
        expect = before[name] - lr * m_hat / (v_hat.sqrt() + 0.1)
        if name in specs:  # step 0 ends a quarter of the way: fully annealed (anneal_end=0.25)
            t = specs[name]
            keep_topk_(expect, t.k_at(1.0), t.floor, t.unit_dim)
        if p.dim() >= 2:
            expect = expect * (1 - lr * 0.1)
        torch.testing.assert_close(p.detach(), expect, rtol=1e-5, atol=1e-7, msg=name)


def test_dense_baseline_has_no_sparse_tensors():
    model = tiny_model()
    opt = SparseAdam(model, SparsityConfig(matrix_density=1.0, embed_density=1.0), TrainConfig(steps=3))
    assert opt.tensors == []
    model(torch.randint(0, 96, (2, 16))).mean().backward()
    opt.step(1)
    assert int(model.transformer.h[0].mlp.c_fc.weight.count_nonzero()) == 64 * 256
