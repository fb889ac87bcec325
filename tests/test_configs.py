"""Every shipped config loads and asks for a sparsity the trainer can keep.

Most of them are not trained in CI (cpu-long takes an hour, paper needs a GPU), so a typo or an
impossible density would otherwise surface only after a user had prepared the data.
"""
import dataclasses
from pathlib import Path

import pytest
import torch

from sparse_gpt.config import load_config
from sparse_gpt.model import GPT
from sparse_gpt.sparsity import sparse_tensors

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _sparse_specs(path: Path):
    cfg = load_config(path)
    # the trainer takes the vocabulary size from the tokenizer it builds; data.vocab_size is its target
    model_cfg = dataclasses.replace(cfg.model, vocab_size=cfg.data.vocab_size)
    with torch.device("meta"):  # shapes only: the paper's 109M parameters cost nothing here
        model = GPT(model_cfg)
    return cfg, [] if cfg.sparsity.dense else sparse_tensors(model, cfg.sparsity)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_is_trainable(path):
    cfg, specs = _sparse_specs(path)
    assert cfg.train.steps > 0
    assert bool(specs) != cfg.sparsity.dense


@pytest.mark.parametrize("name", ["cpu-small", "cpu-long"])
def test_cpu_configs_give_every_channel_exactly_two_inputs(name):
    """docs/design.md: at the chosen densities the neuron floor of 2 is the whole budget of c_attn
    and c_fc, so every q/k/v channel and MLP neuron reads exactly two residual channels."""
    path = next(p for p in CONFIGS if p.stem == name)
    _, specs = _sparse_specs(path)
    reads = [s for s in specs if s.name.endswith(("c_attn.weight", "c_fc.weight"))]
    assert reads
    for s in reads:
        assert s.floor == 2
        assert s.k_at(1.0) == s.min_k == 2 * s.param.shape[0], s.name
