"""The pruner on a hand-built model whose circuit is known, the artefact, and the validation."""
import json
import math

import pytest
import torch

from planted import (PLANTED_NODES, SETTINGS, PlantedQuoteTask, circuit_of, planted_model, planted_tokenizer,
                     prune_planted, pretraining_windows)
from sparse_gpt.prune.circuit import CircuitError, load_circuit, save_circuit
from sparse_gpt.prune.masks import HardConcreteMask, HeavisideMask, gated, record_norm_scales
from sparse_gpt.prune.means import compute_node_means
from sparse_gpt.prune.nodes import NodeLayout, circuit_edges
from sparse_gpt.prune.pruner import (PruneConfig, Pruner, TargetUnreachableError, calibrate,
                                     oriented_logit_diff, two_way_loss)
from sparse_gpt.prune.validate import evaluate_circuit
from sparse_gpt.tasks.base import encode_pairs

def test_pruner_finds_exactly_the_planted_circuit(planted):
    model, tok, task, layout, means, pruner, run = planted
    found = {layout.node_name(i) for i in run.keep.nonzero().flatten().tolist()}
    assert found == PLANTED_NODES
    assert run.loss <= 0.15 and run.converged


def test_planted_circuit_edges_are_its_weights(planted):
    model, tok, task, layout, means, pruner, run = planted
    edges = {(e["source"], e["target"]): e["weight"] for e in circuit_edges(model, layout, run.keep)}
    assert edges == {
        ("0.mlp.act_in[8]", "0.mlp.post_act[0]"): 2.0, ("0.mlp.act_in[9]", "0.mlp.post_act[1]"): 2.0,
        ("0.mlp.post_act[0]", "0.mlp.resid_delta[0]"): 0.25, ("0.mlp.post_act[1]", "0.mlp.resid_delta[0]"): 0.25,
        ("0.mlp.post_act[0]", "0.mlp.resid_delta[1]"): 0.25, ("0.mlp.post_act[1]", "0.mlp.resid_delta[1]"): -0.25,
        ("1.attn.act_in[2]", "1.attn.q[0]"): 1.0, ("1.attn.act_in[0]", "1.attn.k[0]"): 2.0,
        ("1.attn.act_in[1]", "1.attn.v[0]"): 1.0, ("1.attn.v[0]", "1.attn.resid_delta[4]"): 1.0,
    }


def test_validation_passes_on_the_planted_circuit(planted):
    model, tok, task, layout, means, pruner, run = planted
    m = evaluate_circuit(model, circuit_of(model, layout, run), task, tok, means, n_pairs=64)
    assert m["checks"]["sufficient"] and m["checks"]["necessary"] and m["checks"]["beats_random"]
    assert m["passed"]
    assert m["necessity"]["loss"] > 0.6 and m["random"]["min"] > 0.3 and len(m["random"]["losses"]) == 10
    assert m["circuit_heldout"]["accuracy"] == 1.0


def test_validation_fails_on_a_broken_model(planted):
    """The planted circuit, checked on a model given a second, parallel copy of the mechanism: it is
    still sufficient, but ablating it no longer breaks the task, so validation must fail."""
    _, tok, task, _, _, _, run = planted
    model = planted_model(redundant=True)
    layout = NodeLayout(model.config)
    means = compute_node_means(model, layout, pretraining_windows())
    circuit = circuit_of(model, layout, run)
    m = evaluate_circuit(model, circuit, task, tok, means, n_pairs=64)
    assert m["checks"]["sufficient"]
    assert not m["checks"]["necessary"] and not m["passed"]
    assert m["necessity"]["accuracy"] == 1.0


def test_target_the_full_model_cannot_reach_is_refused():
    model, tok, task = planted_model(), planted_tokenizer(), PlantedQuoteTask()
    layout = NodeLayout(model.config)
    means = compute_node_means(model, layout, pretraining_windows())
    with pytest.raises(TargetUnreachableError, match="full model's loss"):
        Pruner(model, layout, means, task, tok, PruneConfig(**(SETTINGS | {"target_loss": 0.001})))


def test_two_way_loss_matches_hand_computation_and_task_loss():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    batch = type("B", (), {})()
    batch.correct, batch.alternative = torch.tensor([0, 2]), torch.tensor([2, 1])
    z, y = oriented_logit_diff(logits, batch)
    # prompt 0: correct 2.0 vs alt -1.0; prompt 1: correct 3.0 vs alt 1.0
    hand = (math.log(1 + math.exp(-3.0)) + math.log(1 + math.exp(-2.0))) / 2
    assert two_way_loss(z, y).item() == pytest.approx(hand, rel=1e-6)


def test_calibration_never_raises_the_loss():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        y = (torch.rand(64, generator=g) > 0.5).float()
        z = (y * 2 - 1) * torch.rand(64, generator=g) * 3 + torch.randn(64, generator=g) * (trial / 5)
        cal = calibrate(z, y)
        assert cal["loss"] <= two_way_loss(z, y).item() + 1e-7
        assert cal["loss"] == pytest.approx(two_way_loss(z, y, cal["scale"], cal["bias"]).item(), rel=1e-5)


def test_artefact_round_trips_and_refuses_tampering(planted, tmp_path):
    model, tok, task, layout, means, pruner, run = planted
    path = save_circuit(circuit_of(model, layout, run, fingerprint="abc123"), tmp_path / "circuit.json")
    loaded = load_circuit(path, fingerprint="abc123")
    assert {n["name"] for n in loaded["nodes"]} == PLANTED_NODES
    with pytest.raises(CircuitError, match="checkpoint weights"):
        load_circuit(path, fingerprint="other")
    data = json.loads(path.read_text())
    data["edges"][0]["weight"] = 99.0
    path.write_text(json.dumps(data))
    with pytest.raises(CircuitError, match="checksum mismatch"):
        load_circuit(path)
    path.write_text("{not json")
    with pytest.raises(CircuitError, match="not valid JSON"):
        load_circuit(path)
    with pytest.raises(CircuitError, match="no circuit file"):
        load_circuit(tmp_path / "missing.json")


def test_node_names_round_trip_and_errors():
    layout = NodeLayout(planted_model().config)
    assert layout.n_nodes == 2 * (16 * 7 + 16)
    for i in (0, 17, 100, layout.n_nodes - 1):
        assert layout.node_index(layout.node_name(i)) == i
    with pytest.raises(KeyError, match="no node named"):
        layout.node_index("0.attn.z[1]")
    with pytest.raises(IndexError, match="out of range"):
        layout.node_index("0.mlp.post_act[16]")


def test_gates_hooks_and_frozen_norms():
    model, tok, task = planted_model(), planted_tokenizer(), PlantedQuoteTask()
    layout = NodeLayout(model.config)
    means = compute_node_means(model, layout, pretraining_windows())
    batch = encode_pairs(task, task.pairs(8, 0), tok, 32)
    x = batch.tokens[:, :int(batch.lengths.max())]
    clean = model(x)
    ones = torch.ones(layout.n_nodes)
    with gated(model, layout, ones, means, record_norm_scales(model, x)):
        torch.testing.assert_close(model(x), clean)  # all kept + frozen scales == the model itself
    with gated(model, layout, torch.zeros(layout.n_nodes), means):
        ablated = model(x)
    assert not torch.allclose(ablated, clean)
    assert all(not hp._forward_hooks for hp in model.hook_points.values())
    assert torch.equal(model(x), clean)


def test_tied_qk_masks_and_hard_concrete():
    layout = NodeLayout(planted_model().config)
    mask = HeavisideMask(layout, tie_qk=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mask.tau.copy_(torch.randn(layout.n_nodes))
    g = mask.gates()
    q, k = layout.by_name["1.attn.q"], layout.by_name["1.attn.k"]
    assert torch.equal(g[q.slice], g[k.slice])
    hc = HardConcreteMask(layout, target_size=13, generator=torch.Generator().manual_seed(0))
    gates = hc.gates()
    assert gates.shape == (layout.n_nodes,) and gates.min() >= 0 and gates.max() <= 1
    assert hc.expected_l0().item() > 13  # starts mostly open


def test_hard_concrete_pruner_meets_the_target():
    model, tok, task, layout, means, pruner, run = prune_planted(mask="hard_concrete", target_size=13, lr=0.1)
    assert run.loss <= 0.15 and run.converged
    assert {layout.node_name(i) for i in run.keep.nonzero().flatten().tolist()} == PLANTED_NODES


def test_node_means_are_cached_beside_the_checkpoint(tmp_path):
    from sparse_gpt.config import DataConfig
    from sparse_gpt.prune.means import MEANS_FILE, load_or_compute_means
    model, tok = planted_model(), planted_tokenizer()
    layout = NodeLayout(model.config)
    data = DataConfig(max_bytes=400_000, val_fraction=0.2)
    logs = []
    first = load_or_compute_means(model, layout, tok, tmp_path, "fp1", data, n_tokens=2048, log=logs.append)
    again = load_or_compute_means(model, layout, tok, tmp_path, "fp1", data, n_tokens=2048, log=logs.append)
    assert (tmp_path / MEANS_FILE).exists() and torch.equal(first, again)
    assert len(logs) == 1  # the second call read the cache
    load_or_compute_means(model, layout, tok, tmp_path, "fp2", data, n_tokens=2048, log=logs.append)
    assert len(logs) == 2  # other weights: recomputed, never a stale cache


def test_chunked_evaluation_matches_one_forward(planted):
    """The evaluator's length-sorted chunks and scored-position logits give the one-pass logits."""
    model, tok, task, layout, means, pruner, run = planted
    batch = pruner.heldout
    gates = run.keep.float()
    ev = pruner.eval
    for chunk in (3, 64, 10_000):
        ev.chunk = chunk
        got = ev.logits(batch, gates)
        T = int(batch.lengths.max())
        with torch.no_grad(), gated(model, layout, gates, pruner.means):
            full = model(batch.tokens[:, :T])[torch.arange(len(batch)), batch.positions]
        torch.testing.assert_close(got, full)
    ev.chunk = 64
