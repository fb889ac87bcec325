"""Weight-level circuits: the edge-masked forward, the edge stage on the planted model, and circuit.json
with an edge mask (and without one, as older files were written)."""
import json
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from planted import PLANTED_NODES, SETTINGS, PlantedQuoteTask, planted_model, planted_tokenizer, pretraining_windows
from sparse_gpt.circuit import Circuit, CircuitError, Provenance, evaluate_circuit, load_circuit
from sparse_gpt.circuit.artefact import checksum
from sparse_gpt.config import ModelConfig
from sparse_gpt.model import GPT
from sparse_gpt.nodes import NodeLayout, circuit_edges, compute_node_means, edge_set
from sparse_gpt.prune import PruneConfig, Pruner
from sparse_gpt.prune.edges import prune_edges
from sparse_gpt.prune.masks import edge_gated, gated
from sparse_gpt.prune.objective import EdgeEvaluator
from sparse_gpt.prune.pruner import PruneRun

# the weights of the planted mechanism (tests/planted.py), as (source, target)
PLANTED_EDGES = {
    ("0.mlp.act_in[8]", "0.mlp.post_act[0]"), ("0.mlp.act_in[9]", "0.mlp.post_act[1]"),
    ("0.mlp.post_act[0]", "0.mlp.resid_delta[0]"), ("0.mlp.post_act[1]", "0.mlp.resid_delta[0]"),
    ("0.mlp.post_act[0]", "0.mlp.resid_delta[1]"), ("0.mlp.post_act[1]", "0.mlp.resid_delta[1]"),
    ("1.attn.act_in[2]", "1.attn.q[0]"), ("1.attn.act_in[0]", "1.attn.k[0]"), ("1.attn.act_in[1]", "1.attn.v[0]"),
    ("1.attn.v[0]", "1.attn.resid_delta[4]"),
}


def sparse_tiny_model(afrac=0.5, seed=0) -> GPT:
    """A random two-layer model with 3 in 4 weights zeroed (a weight-sparse model in miniature)."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=64, block_size=16, n_layer=2, d_model=16, d_head=4, d_mlp=32, afrac=afrac,
                            attn_sink=True, bias=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.dim() == 2 and ".h." in name:
                p.mul_((torch.rand_like(p) < 0.25).float()).mul_(10.0)  # large enough to matter
            elif name.endswith("sink_logit"):
                p.fill_(0.5)
    return model.eval()


def _setup(afrac=0.5, seed=0):
    model = sparse_tiny_model(afrac, seed)
    layout = NodeLayout(model.config)
    g = torch.Generator().manual_seed(seed)
    means = compute_node_means(model, layout, torch.randint(0, 64, (8, 16), generator=g))
    keep = torch.rand(layout.n_nodes, generator=g) < 0.6
    tokens = torch.randint(0, 64, (3, 12), generator=g)
    return model, layout, means, keep, tokens


def _forward(model, layout, means, keep, tokens, edges=None, edge_gates=None, record=()):
    with torch.no_grad(), gated(model, layout, keep.float(), means):
        if edges is None:
            with model.hooks(record=record) as cache:
                return model(tokens), dict(cache)
        with edge_gated(model, layout, edges, edge_gates, means), model.hooks(record=record) as cache:
            return model(tokens), dict(cache)


def test_every_edge_kept_is_exactly_the_node_circuit():
    model, layout, means, keep, tokens = _setup()
    edges = edge_set(model, layout, keep)
    assert len(edges) > 50
    before = {k: v.clone() for k, v in model.state_dict().items()}
    node, _ = _forward(model, layout, means, keep, tokens)
    edge, _ = _forward(model, layout, means, keep, tokens, edges, torch.ones(len(edges)))
    assert torch.equal(node, edge)
    # per-row edge sets (many candidate circuits in one forward) give each row its own result
    rows = torch.ones(len(tokens), 1, len(edges))
    rows[1, 0, :] = 0.0
    batched, _ = _forward(model, layout, means, keep, tokens, edges, rows)
    assert torch.equal(batched[0], node[0]) and not torch.allclose(batched[1], node[1])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the model is untouched
    assert not model.transformer.h[0].mlp.c_fc._forward_hooks  # and its hooks are gone


def test_a_pruned_weight_passes_on_its_source_mean_times_the_weight():
    model, layout, means, keep, tokens = _setup(afrac=None)
    edges = edge_set(model, layout, keep)
    group = next(g for g in edges.groups if g.target == "1.mlp.post_act")
    e = group.offset  # its first edge: source s -> neuron d
    s, d = int(group.src[0]), int(group.dst[0])
    gates = torch.ones(len(edges))
    gates[e] = 0.0
    _, cache = _forward(model, layout, means, keep, tokens, edges, gates, record=["1.mlp.act_in", "1.mlp.post_act"])
    x = cache["1.mlp.act_in"]
    fc = model.transformer.h[1].mlp.c_fc
    pre = x @ fc.weight.T + fc.bias
    src = layout.by_name["1.mlp.act_in"].offset + s
    pre[..., d] += fc.weight[d, s] * (means[src] - x[..., s])  # by hand: w * mean instead of w * x
    by_hand = F.gelu(pre)
    kept_neurons = keep[layout.by_name["1.mlp.post_act"].slice]
    assert kept_neurons[d]
    got = cache["1.mlp.post_act"]
    assert torch.allclose(got[..., kept_neurons], by_hand[..., kept_neurons], atol=1e-5)
    assert not torch.allclose(got[..., d], F.gelu(x @ fc.weight[d] + fc.bias[d]), atol=1e-3)  # it did change


def test_a_pruned_v_weight_is_what_ablating_the_v_channel_gives_its_target():
    """attn c_proj reads v channels mixed by attention: a pruned weight from v channel j passes on
    what the attention output carries when v_j is ablated (its mean, weighted by the attention on
    real keys rather than the sink)."""
    model, layout, means, keep, tokens = _setup(afrac=None, seed=1)
    edges = edge_set(model, layout, keep)
    group = next(g for g in edges.groups if g.target.endswith("attn.resid_delta"))
    j, d = int(group.src[0]), int(group.dst[0])
    gates = torch.ones(len(edges))
    gates[group.offset] = 0.0
    hook = group.target
    _, pruned = _forward(model, layout, means, keep, tokens, edges, gates, record=[hook])
    _, kept = _forward(model, layout, means, keep, tokens, record=[hook])
    ablated_keep = keep.clone()
    ablated_keep[layout.by_name[group.source].offset + j] = False
    _, ablated = _forward(model, layout, means, ablated_keep, tokens, record=[hook])
    others = torch.arange(model.config.d_model) != d
    assert torch.allclose(pruned[hook][..., d], ablated[hook][..., d], atol=1e-5)
    assert torch.equal(pruned[hook][..., others], kept[hook][..., others])
    assert not torch.allclose(pruned[hook][..., d], kept[hook][..., d], atol=1e-4)


def _planted_with_distractor_weights():
    """The planted model plus two weights between its circuit's nodes that the task does not need:
    each quote detector is inhibited by the other quote (it is off on that token anyway)."""
    model = planted_model()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[1, 8] = -1.0
        model.transformer.h[0].mlp.c_fc.weight[0, 9] = -1.0
    layout = NodeLayout(model.config)
    means = compute_node_means(model, layout, pretraining_windows())
    pruner = Pruner(model, layout, means, PlantedQuoteTask(), planted_tokenizer(), PruneConfig(**SETTINGS))
    return model, layout, means, pruner


def _run_of(pruner, keep) -> PruneRun:
    loss = float(pruner.judge(keep.float()[None])[0])
    return PruneRun(settings=pruner.cfg, scores=keep.float(), keep=keep, n_positive=int(keep.sum()),
                    loss_positive=loss, curve=[], loss=loss, calibration=pruner.calibration_of(keep), seconds=0.0)


def test_the_edge_stage_finds_the_planted_weights_and_drops_an_unused_node():
    model, layout, means, pruner = _planted_with_distractor_weights()
    # the planted nodes, and a neuron with no weight to or from them (the distractor one)
    keep = layout.keep_mask(PLANTED_NODES | {"1.mlp.post_act[5]"})
    assert len(edge_set(model, layout, keep)) == len(PLANTED_EDGES) + 2
    run = prune_edges(pruner, _run_of(pruner, keep))
    assert run.edge_stage["status"] == "ok" and run.loss <= 0.15
    assert {layout.node_name(i) for i in run.keep.nonzero().flatten().tolist()} == PLANTED_NODES
    kept = {(e.source, e.target) for e in circuit_edges(model, layout, run.keep, run.edge_keep)}
    assert kept == PLANTED_EDGES
    assert run.edge_stage["node_level_edges"] == len(PLANTED_EDGES) + 2 and run.edge_stage["edges"] == 10
    assert run.stages[-1] == {"stage": "edges", "nodes": 13, "edges": 10, "loss": run.loss}
    # the loss it reports is the weight-level circuit's
    ev = EdgeEvaluator(model, layout, pruner.ablate_to, run.keep, edge_set(model, layout, run.keep))
    assert ev.loss(pruner.heldout, run.edge_keep.float()) <= run.loss + 1e-6


def test_the_edge_stage_keeps_every_weight_of_a_circuit_that_misses_the_target():
    model, layout, means, pruner = _planted_with_distractor_weights()
    keep = layout.keep_mask(PLANTED_NODES - {"1.attn.v[0]"})  # the quote type no longer reaches the answer
    run = prune_edges(pruner, _run_of(pruner, keep))
    assert run.loss > 0.15 and bool(run.edge_keep.all()) and "every weight" in run.edge_stage["status"]
    assert torch.equal(run.keep, keep)


def _weight_level_circuit(tmp_path):
    model, layout, means, pruner = _planted_with_distractor_weights()
    keep = layout.keep_mask(PLANTED_NODES)
    run = prune_edges(pruner, _run_of(pruner, keep))
    edges = edge_set(model, layout, run.keep)
    circuit = Circuit(provenance=Provenance(task="planted_quote", pruner=run.settings, checkpoint_fingerprint="fp"),
                      model=asdict(model.config), nodes=layout.circuit_nodes(run.keep, run.scores),
                      edges=edges.records(run.edge_keep), calibration=run.calibration, bisection=run.curve,
                      node_level_edges=len(edges))
    return model, layout, means, pruner, run, circuit


def test_circuit_json_round_trips_the_edge_mask_and_validation_uses_it(tmp_path):
    model, layout, means, pruner, run, circuit = _weight_level_circuit(tmp_path)
    metrics = evaluate_circuit(model, circuit, PlantedQuoteTask(), planted_tokenizer(), means, n_pairs=16,
                               n_random=2, scores=run.scores)
    assert metrics.edges == 10 and metrics.node_level_edges == 12
    # validation ran the circuit with its own weights only: the same loss the edge evaluator gives
    edges, mask = circuit.edge_mask(model, layout)
    assert torch.equal(mask, run.edge_keep)
    from sparse_gpt.circuit.validate import _batches
    templ = _batches(PlantedQuoteTask(), planted_tokenizer(), 32, 16, 10_007, None)["templated"]
    ev = EdgeEvaluator(model, layout, pruner.ablate_to, run.keep, edges)
    assert metrics.circuit_uncalibrated["templated"].loss == pytest.approx(ev.loss(templ, mask.float()), abs=1e-6)
    circuit.metrics = metrics
    path = circuit.save(tmp_path / "circuit.json")
    loaded = load_circuit(path, fingerprint="fp")
    assert loaded == circuit and loaded.node_level_edges == 12 and len(loaded.edges) == 10
    assert json.loads(path.read_text())["node_level_edges"] == 12
    # an edge that is not a weight between the circuit's nodes is refused when the mask is built
    data = loaded.to_dict()
    data["edges"][0]["source"] = "0.mlp.act_in[3]"
    data["nodes"].append({"name": "0.mlp.act_in[3]", "location": "0.mlp.act_in", "layer": 0,
                          "kind": "resid_read", "index": 3})
    data["checksum"] = checksum(data)
    with pytest.raises(CircuitError, match="not a nonzero weight"):
        Circuit.from_dict(data).edge_mask(model, layout)


def test_an_older_circuit_json_without_an_edge_mask_loads_as_every_weight_between_its_nodes(tmp_path):
    model, layout, means, pruner, run, circuit = _weight_level_circuit(tmp_path)
    # what the previous version wrote: every weight between the nodes, no node_level_edges anywhere
    circuit.edges = circuit_edges(model, layout, run.keep)
    circuit.node_level_edges = None
    circuit.metrics = evaluate_circuit(model, circuit, PlantedQuoteTask(), planted_tokenizer(), means, n_pairs=8,
                                       n_random=1)
    data = circuit.to_dict()
    for key in ("node_level_edges", "edge_stage"):
        data["metrics"].pop(key, None)
    assert "node_level_edges" not in data
    data["checksum"] = checksum(data)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = load_circuit(path)
    assert old.node_level_edges is None and old.metrics.node_level_edges is None
    edges, mask = old.edge_mask(model, layout)
    assert bool(mask.all()) and len(edges) == len(old.edges) == 12
    from sparse_gpt.render.layout import edge_count
    assert edge_count(old) == "12 edges" and edge_count(circuit) == "12 edges"


def test_edge_settings_are_checked():
    for bad in ({"edge_k_coef": 0.0}, {"edge_steps": -1}, {"edge_seconds": float("nan")}):
        with pytest.raises(ValueError, match="edge"):
            PruneConfig(**bad).validate()


def test_a_malformed_node_level_edges_is_refused(tmp_path):
    model, layout, means, pruner, run, circuit = _weight_level_circuit(tmp_path)
    for bad in ("12", -1, True, 1.5):
        data = circuit.to_dict() | {"node_level_edges": bad}
        data["checksum"] = checksum(data)
        with pytest.raises(CircuitError, match="'node_level_edges' should be a whole number"):
            Circuit.from_dict(data)


def test_fewest_top_finds_the_smallest_count_meeting_the_target_from_either_side():
    from sparse_gpt.prune.edges import fewest_top
    loss = lambda k: 1.0 / k  # noqa: E731  (monotone: meets 0.1 from k = 10 on)
    for n_pos in (0, 4, 37, 100):  # the mask kept too few, or more than needed
        scores = torch.cat([torch.ones(n_pos), -torch.ones(100 - n_pos)])
        k, curve = fewest_top(scores, loss, 0.1)
        assert k == 10 and all(loss(j) == v for j, v in curve) and len(curve) <= 12
