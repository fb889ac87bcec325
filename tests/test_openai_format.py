"""Tests for sparse_gpt.openai_format: OpenAI circuit_sparsity model directories in and out.

We cannot download a released model here, so directories are written by save_openai_model
(tests/openai_writer.py) and, to catch a naming or semantics slip that a symmetric save/load would
hide, the loaded weights are also run through `reference_forward`: a plain re-implementation of
their forward pass, written from the description of their format, that reads their state-dict
names directly.
"""
from __future__ import annotations

import json
import math
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sparse_gpt.config import ACT_SPARSITY_LOCATIONS, ModelConfig
from sparse_gpt.model import GPT
from sparse_gpt.openai_format import (
    EOT,
    OpenAIFormatError,
    config_from_openai,
    is_openai_dir,
    load_openai_model,
    load_openai_state_dict,
    load_openai_tokenizer,
)
from sparse_gpt.tokenizer import train_tokenizer

from openai_writer import (config_to_openai, save_openai_model, train_data_gym_tokenizer,
                           write_openai_tokenizer_files)

VOCAB = 2048  # tinypython_2k's size, so the exported tokenizer fits the test models


# ----- fixtures ------------------------------------------------------------------------------


def _stdlib_texts(skip_bytes: int, max_bytes: int) -> list[str]:
    """Source of stdlib modules in sorted order: after `skip_bytes`, up to `max_bytes`."""
    texts, seen = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        seen += len(text)
        if seen <= skip_bytes:
            continue
        texts.append(text)
        if sum(map(len, texts)) >= max_bytes:
            break
    assert texts, "no stdlib sources found"
    return texts


@pytest.fixture(scope="module")
def source_tokenizer():
    tok = train_data_gym_tokenizer(_stdlib_texts(0, 1_000_000), vocab_size=VOCAB)
    assert tok.get_vocab_size() == VOCAB and tok.token_to_id(EOT) == VOCAB - 1
    return tok


@pytest.fixture(scope="module")
def tok_dir(source_tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tinypython")
    write_openai_tokenizer_files(source_tokenizer, out)
    return out


def small_config(**kw) -> ModelConfig:
    base = dict(vocab_size=VOCAB, block_size=32, n_layer=2, d_model=64, d_head=16, afrac=0.25,
                attn_sink=True, bigram_table=False, bias=True)
    base.update(kw)
    return ModelConfig(**base)


def random_sparse_model(cfg: ModelConfig, seed: int = 0, density: float = 0.25) -> GPT:
    """A GPT whose every weight is random and nonzero-mean-free, matrices mostly zero."""
    g = torch.Generator().manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ".ln_" in name or "ln_f" in name:
                p.copy_(1 + 0.2 * noise)
            elif p.dim() == 2:
                keep = torch.rand(p.shape, generator=g) < density
                p.copy_(0.3 * noise * keep)
            else:  # biases and sink logits
                p.copy_(0.2 * noise)
        model.final_logits_bias.copy_(torch.randn(cfg.vocab_size, generator=g))
    return model.eval()


CASES = {
    "rms_sink_bigram_all8": dict(bigram_table=True),
    "layernorm_nosink_default_locs": dict(
        norm="layer", attn_sink=False, activation="relu", pos_emb="learned",
        afrac_locations=["attn_in", "attn_out", "mlp_in", "mlp_out"]),
    "layernorm_nobias_dense_acts": dict(norm="layer", bias=False, afrac=None, d_mlp=96),
}


def reference_forward(sd: dict[str, torch.Tensor], raw: dict, idx: torch.Tensor) -> torch.Tensor:
    """OpenAI's forward pass as their format defines it, on their tensor names."""
    d_model, n_head = raw["d_model"], raw["n_head"]
    d_head = raw["d_head"] or d_model // n_head
    locs = set(raw["afrac_loctypes"].split(","))

    def topk(x: torch.Tensor, loc: str) -> torch.Tensor:
        if raw["afrac"] is None or loc not in locs:
            return x
        i = x.abs().topk(int(raw["afrac"] * x.shape[-1]), dim=-1).indices
        return torch.zeros_like(x).scatter(-1, i, x.gather(-1, i))

    def norm(x: torch.Tensor, p: str) -> torch.Tensor:
        if raw["rms_norm"]:
            return F.rms_norm(x, (d_model,), sd[p + ".weight"])
        return F.layer_norm(x, (d_model,), sd[p + ".weight"], sd.get(p + ".bias"), 1e-5)

    def linear(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))

    B, T = idx.shape
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(raw["n_layer"]):
        p = f"transformer.h.{i}"
        h = topk(norm(x, p + ".ln_1"), "attn_in")
        q, k, v = linear(h, p + ".attn.c_attn").split(n_head * d_head, dim=-1)
        q, k, v = (topk(t, "attn_" + n).view(B, T, n_head, d_head).transpose(1, 2)
                   for t, n in ((q, "q"), (k, "k"), (v, "v")))
        scores = (q @ k.transpose(-2, -1) / math.sqrt(d_head)).masked_fill(~causal, float("-inf"))
        if raw["sink"]:
            sink = sd[p + ".attn.attn_imp.sink_logit"].view(1, n_head, 1, 1).expand(B, n_head, T, 1)
            scores = torch.cat([sink, scores], dim=-1)
            v = torch.cat([torch.zeros(B, n_head, 1, d_head), v], dim=2)
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, n_head * d_head)
        x = x + topk(linear(y, p + ".attn.c_proj"), "attn_out")
        h = topk(norm(x, p + ".ln_2"), "mlp_in")
        act = F.gelu if raw["activation_type"] == "gelu" else F.relu
        h = topk(act(linear(h, p + ".mlp.c_fc")), "mlp_neuron")
        x = x + topk(linear(h, p + ".mlp.c_proj"), "mlp_out")
    logits = F.linear(norm(x, "transformer.ln_f"), sd["lm_head.weight"]) + sd["final_logits_bias"]
    if raw["enable_bigram_table"]:
        logits = logits + sd["bigram_table"][idx]
    return logits


def _save(tmp_path: Path, cfg: ModelConfig, tok_dir: Path | None, name: str = "model") -> tuple[GPT, Path]:
    model = random_sparse_model(cfg)
    return model, save_openai_model(model, tok_dir, tmp_path / name)


def _rewrite_config(d: Path, **changes) -> None:
    raw = json.loads((d / "beeg_config.json").read_text())
    raw.update(changes)
    (d / "beeg_config.json").write_text(json.dumps(raw))


def _rewrite_weights(d: Path, fn) -> None:
    sd = torch.load(d / "final_model.pt", weights_only=True)
    fn(sd)
    torch.save(sd, d / "final_model.pt")


IDX = torch.randint(0, VOCAB, (3, 32), generator=torch.Generator().manual_seed(1))


# ----- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_gives_identical_logits(tmp_path, tok_dir, case):
    cfg = small_config(**CASES[case])
    model, d = _save(tmp_path, cfg, tok_dir)
    assert is_openai_dir(d)
    loaded, tok, ignored = load_openai_model(d)
    assert ignored == ["bigram_table_rank"]  # their loader pops it; GPTConfig does not know it
    assert loaded.config == cfg
    assert tok.get_vocab_size() == VOCAB
    with torch.no_grad():
        assert torch.equal(loaded(IDX), model(IDX))
        # ... and the file means the same thing to OpenAI's forward pass.
        sd = torch.load(d / "final_model.pt", weights_only=True)
        raw = json.loads((d / "beeg_config.json").read_text())
        torch.testing.assert_close(reference_forward(sd, raw, IDX), model(IDX), atol=1e-5, rtol=1e-5)


def test_written_files_use_their_names(tmp_path):
    cfg = small_config(afrac_locations=["q", "k", "v", "mlp_neuron"])
    _, d = _save(tmp_path, cfg, None)
    raw = json.loads((d / "beeg_config.json").read_text())
    assert raw["afrac_loctypes"] == "attn_q,attn_k,attn_v,mlp_neuron"
    assert raw["tied_unembed"] is False and raw["sink"] is True and raw["rms_norm"] is True
    assert raw["n_head"] == 4 and raw["d_head"] == 16 and "bigram_table_rank" in raw
    sd = torch.load(d / "final_model.pt", weights_only=True)
    assert "transformer.h.1.attn.attn_imp.sink_logit" in sd
    assert not any(k.endswith(".attn.sink_logit") and "attn_imp" not in k for k in sd)
    # their model always adds wpe, so ours is written as zeros
    assert sd["transformer.wpe.weight"].shape == (32, 64) and not sd["transformer.wpe.weight"].any()
    assert not (d / "vocab.bpe").exists()
    assert config_from_openai(raw)[0] == ModelConfig(**{**cfg.__dict__, "pos_emb": "learned"})


def test_final_logits_bias_absent_means_zeros(tmp_path, tok_dir):
    model, d = _save(tmp_path, small_config(), tok_dir)
    _rewrite_weights(d, lambda sd: sd.pop("final_logits_bias"))
    loaded, _, _ = load_openai_model(d)
    assert torch.equal(loaded.final_logits_bias, torch.zeros(VOCAB))
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDX), model(IDX) - model.final_logits_bias)


def test_causal_mask_buffers_of_non_flash_attention_are_dropped(tmp_path, tok_dir):
    model, d = _save(tmp_path, small_config(), tok_dir)
    mask = torch.ones(32, 32).tril().view(1, 1, 32, 32)
    _rewrite_weights(d, lambda sd: sd.update({f"transformer.h.{i}.attn.bias": mask for i in (0, 1)}))
    loaded, _, _ = load_openai_model(d)
    with torch.no_grad():
        assert torch.equal(loaded(IDX), model(IDX))


def test_tied_unembed(tmp_path, tok_dir):
    model, d = _save(tmp_path, small_config(), tok_dir)
    # tied with one matrix in the file: both come from it
    _rewrite_config(d, tied_unembed=True)
    _rewrite_weights(d, lambda sd: sd.pop("transformer.wte.weight"))
    loaded, _, _ = load_openai_model(d)
    assert torch.equal(loaded.transformer.wte.weight, model.lm_head.weight)
    # tied (also by GPTConfig's default, when the key is absent) but two different matrices
    _, d = _save(tmp_path, small_config(), tok_dir, name="other")
    raw = json.loads((d / "beeg_config.json").read_text())
    del raw["tied_unembed"]
    (d / "beeg_config.json").write_text(json.dumps(raw))
    with pytest.raises(OpenAIFormatError, match="tied_unembed"):
        load_openai_model(d)


def test_nonzero_positional_embedding_needs_learned_pos_emb(tmp_path):
    _, d = _save(tmp_path, small_config(pos_emb="learned"), None)
    with pytest.raises(OpenAIFormatError, match="transformer.wpe.weight has nonzero"):
        load_openai_state_dict(d, small_config())
    assert "transformer.wpe.weight" in load_openai_state_dict(d, small_config(pos_emb="learned"))


# ----- config --------------------------------------------------------------------------------


def _raw(**changes) -> dict:
    raw = config_to_openai(small_config())
    raw.update(changes)
    return raw


def test_unknown_keys_are_tolerated_and_reported(tmp_path, tok_dir):
    extra = dict(pfrac=0.01, expansion_factor=4, expansion_factor_mlp=4, debug_exact_topk=False,
                 sparse_matmul_impl="torch", afrac_approx=False, ignore_dw_grad=True, rtopk=None,
                 n_embd=64)
    model, d = _save(tmp_path, small_config(), tok_dir)
    _rewrite_config(d, **extra)
    loaded, _, ignored = load_openai_model(d)
    assert sorted(ignored) == sorted(["bigram_table_rank", *extra])
    with torch.no_grad():
        assert torch.equal(loaded(IDX), model(IDX))


def test_harmless_fields_and_old_spellings():
    base = config_from_openai(_raw())[0]
    harmless = dict(dropout=0.1, flash=False, grad_checkpointing=True, debug_nans=True,
                    enable_sparse_kernels=True, tokenizer_name="other", learnable_bigram_table=False,
                    use_tied_aux_matrix=False, sinusoidal_cat_pos_emb=True, dropout_cat_pos_emb=True)
    assert config_from_openai(_raw(**harmless)) == (base, ["bigram_table_rank"])
    old = _raw(d_head=None, d_mlp=None, n_mlp=256)
    old["n_embd"] = old.pop("d_model")
    cfg, ignored = config_from_openai(old)
    assert (cfg.d_model, cfg.d_head, cfg.mlp_width) == (64, 16, 256) and "n_embd" not in ignored
    # absent fields take GPTConfig's defaults (afrac null: dense activations)
    cfg, _ = config_from_openai({"vocab_size": 2048, "n_layer": 1, "n_head": 4, "d_model": 64})
    assert (cfg.block_size, cfg.norm, cfg.bias, cfg.afrac, cfg.attn_sink) == (
        1024, "layer", True, None, False)


@pytest.mark.parametrize("changes, field", [
    (dict(residual_activation_type="relu"), "residual_activation_type"),
    (dict(afrac_loctypes="attn_in,resid_post_mlp"), "afrac_loctypes"),
    (dict(d_pos_emb=16, sinusoidal_cat_pos_emb=True), "d_pos_emb"),
    (dict(n_head=2, d_head=16), "d_head"),
    (dict(rms_norm=False, ln_bias=False), "ln_bias"),
    (dict(activation_type="silu"), "activation_type"),
    (dict(use_tied_aux_matrix=True), "use_tied_aux_matrix"),
    (dict(afrac=0.01), "afrac"),  # int(0.01 * 64) == 0 entries kept
    (dict(sink="yes"), "sink"),
    (dict(n_layer=2.5), "n_layer"),
])
def test_unsupported_fields_are_named(changes, field):
    with pytest.raises(OpenAIFormatError, match=field):
        config_from_openai(_raw(**changes))


def test_afrac_locations_map_both_ways():
    for locs in (list(ACT_SPARSITY_LOCATIONS), ["attn_in", "attn_out", "mlp_in", "mlp_out"], []):
        cfg = small_config(afrac_locations=locs)
        assert config_from_openai(config_to_openai(cfg))[0].afrac_locations == locs
    # an inert afrac_loctypes (afrac null) is not checked, as in their model
    assert config_from_openai(_raw(afrac=None, afrac_loctypes="resid_post_attn"))[0].afrac is None
    # their model skips a name it does not know, so we warn and skip it too
    with pytest.warns(UserWarning, match="attn_y"):
        cfg, _ = config_from_openai(_raw(afrac_loctypes="attn_in,attn_y"))
    assert cfg.afrac_locations == ["attn_in"]


def test_afrac_loctypes_entries_are_not_stripped(tmp_path, tok_dir):
    # Their model compares each entry as written: " mlp_neuron" names no location, so AbsTopK
    # runs at attn_in alone, and a model loaded from such a file computes what their forward does.
    with pytest.warns(UserWarning, match=r"\[' mlp_neuron'\].*do(es)? not strip"):
        cfg, _ = config_from_openai(_raw(afrac_loctypes="attn_in, mlp_neuron"))
    assert cfg.afrac_locations == ["attn_in"]
    with pytest.warns(UserWarning, match="' attn_k'"):
        assert config_from_openai(_raw(afrac_loctypes="attn_q, attn_k,"))[0].afrac_locations == ["q"]
    # a residual location with a space is just as inert there: warned, not refused
    with pytest.warns(UserWarning, match="' resid_post_mlp'"):
        config_from_openai(_raw(afrac_loctypes="attn_in, resid_post_mlp"))
    model, d = _save(tmp_path, small_config(afrac_locations=list(ACT_SPARSITY_LOCATIONS)), tok_dir)
    _rewrite_config(d, afrac_loctypes="attn_in, mlp_neuron")
    with pytest.warns(UserWarning, match="mlp_neuron"):
        loaded, _, _ = load_openai_model(d)
    sd = torch.load(d / "final_model.pt", weights_only=True)
    raw = json.loads((d / "beeg_config.json").read_text())
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDX), reference_forward(sd, raw, IDX), atol=1e-5, rtol=1e-5)


# ----- broken directories --------------------------------------------------------------------


def test_missing_files_are_named(tmp_path, tok_dir):
    _, d = _save(tmp_path, small_config(), tok_dir)
    (d / "final_model.pt").unlink()
    assert not is_openai_dir(d)
    with pytest.raises(OpenAIFormatError, match="no final_model.pt"):
        load_openai_model(d)
    (d / "beeg_config.json").unlink()
    with pytest.raises(OpenAIFormatError, match="no beeg_config.json"):
        load_openai_model(d)
    with pytest.raises(OpenAIFormatError, match="not found"):
        load_openai_model(tmp_path / "nowhere")


def _rename(old: str, new: str):
    return lambda sd: sd.update({new: sd.pop(old)})


def test_missing_or_renamed_tensor_is_named(tmp_path, tok_dir):
    _, d = _save(tmp_path, small_config(), tok_dir)
    _rewrite_weights(d, _rename("transformer.h.1.mlp.c_fc.bias", "transformer.h.1.mlp.fc.bias"))
    with pytest.raises(OpenAIFormatError, match=r"missing tensors \['transformer.h.1.mlp.c_fc.bias'\]"
                                                r".*unexpected tensors \['transformer.h.1.mlp.fc.bias'\]"):
        load_openai_model(d)
    # our own sink name is not theirs
    _, d = _save(tmp_path, small_config(), tok_dir, name="sink")
    _rewrite_weights(d, _rename("transformer.h.0.attn.attn_imp.sink_logit", "transformer.h.0.attn.sink_logit"))
    with pytest.raises(OpenAIFormatError, match="transformer.h.0.attn.attn_imp.sink_logit"):
        load_openai_model(d)


def test_wrong_shape_is_named(tmp_path, tok_dir):
    _, d = _save(tmp_path, small_config(), tok_dir)
    _rewrite_config(d, d_mlp=128)  # the file's MLPs are 256 wide
    with pytest.raises(OpenAIFormatError, match=r"transformer.h.0.mlp.c_fc.weight: \(256, 64\) in the file"):
        load_openai_model(d)


def test_missing_tokenizer_is_explained(tmp_path):
    _, d = _save(tmp_path, small_config(), None)
    with pytest.raises(OpenAIFormatError, match="no tokenizer"):
        load_openai_model(d)


def test_tokenizer_found_in_their_download_layout(tmp_path, tok_dir):
    base = tmp_path / "base"
    _save(base, small_config(), None, name="models/csp_test")
    for name in ("vocab.bpe", "encoder.json"):
        (base / "tinypython").mkdir(exist_ok=True)
        (base / "tinypython" / name).write_bytes((tok_dir / name).read_bytes())
    _, tok, _ = load_openai_model(base / "models" / "csp_test")
    assert tok.token_to_id(EOT) == 2047


# ----- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_files_match_the_source_tokenizer(source_tokenizer, tok_dir):
    lines = (tok_dir / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "#version: 0.2" and lines[-1] == "" and len(lines) == 2 + 2047 - 256
    encoder = json.loads((tok_dir / "encoder.json").read_text())
    assert len(encoder) == 2048 and encoder[EOT] == 2047

    tok = load_openai_tokenizer(tok_dir)
    assert tok.get_vocab_size() == 2048 and tok.token_to_id(EOT) == 2047
    assert tok.get_vocab() == source_tokenizer.get_vocab()
    samples = _stdlib_texts(1_000_000, 200_000) + [
        "print('a')\nf(\"x\")\n", "('", '("', "x = ('a', \"b\")", "héllo wörld ✓ 日本語 🙂",
        "a\r\n\tb  \n\n    c 12345 3.14e-10", f"end {EOT} start", "",
    ]
    for text in samples:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert ids == source_tokenizer.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
    # EOT is special: decodes to itself, but literal text containing it is not turned into it
    assert tok.decode([2047], skip_special_tokens=False) == EOT
    assert 2047 not in tok.encode(f"a{EOT}b", add_special_tokens=False).ids


def test_tokenizer_missing_or_broken_files(tmp_path, tok_dir):
    (tmp_path / "vocab.bpe").write_bytes((tok_dir / "vocab.bpe").read_bytes())
    with pytest.raises(OpenAIFormatError, match="no encoder.json"):
        load_openai_tokenizer(tmp_path)
    (tmp_path / "encoder.json").write_text(json.dumps({"a": 0}))
    with pytest.raises(OpenAIFormatError, match="do not fit together"):
        load_openai_tokenizer(tmp_path)


def test_writer_takes_a_vocab_and_merges_pair(source_tokenizer, tok_dir, tmp_path):
    model = json.loads(source_tokenizer.to_str())["model"]
    vocab = {**model["vocab"], EOT: 2047}
    write_openai_tokenizer_files((vocab, [tuple(m) for m in model["merges"]]), tmp_path)
    for name in ("vocab.bpe", "encoder.json"):
        assert (tmp_path / name).read_bytes() == (tok_dir / name).read_bytes()


def test_writer_refuses_ids_outside_the_data_gym_layout(tmp_path):
    # our own tokenizer puts EOT first, shifting every byte's id by one
    tok = train_tokenizer(["def f(x):\n    return x\n"] * 20, vocab_size=300)
    with pytest.raises(OpenAIFormatError, match="GPT-2 order"):
        write_openai_tokenizer_files(tok, tmp_path)
