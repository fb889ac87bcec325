"""The pruner on a hand-built model whose circuit is known, the artefact, and the validation."""
import dataclasses
import json
import math

import pytest
import torch

from inprocess import script_module
from planted import (PLANTED_NODES, SETTINGS, PlantedQuoteTask, circuit_of, planted_model, planted_tokenizer,
                     prune_planted, pretraining_windows)
from sparse_gpt.circuit import Circuit, CircuitError, Control, evaluate_circuit, load_circuit
from sparse_gpt.circuit.artefact import checksum
from sparse_gpt.nodes import NodeLayout, ablation_values, circuit_edges, compute_node_means
from sparse_gpt.prune.masks import HardConcreteMask, HeavisideMask, gated, record_norm_scales
from sparse_gpt.prune.objective import calibrate
from sparse_gpt.prune.pruner import PruneConfig, Pruner, TargetUnreachableError
from sparse_gpt.prune.refine import greedy_remove, refine
from sparse_gpt.tasks.base import (Example, TaskBatch, encode_pairs, oriented_logit_diff, task_accuracy, task_loss,
                                   two_way_accuracy, two_way_loss)

def test_pruner_finds_exactly_the_planted_circuit(planted):
    model, tok, task, layout, means, pruner, run = planted
    found = {layout.node_name(i) for i in run.keep.nonzero().flatten().tolist()}
    assert found == PLANTED_NODES
    assert run.loss <= 0.15 and run.converged


def test_pruner_leaves_the_model_as_it_was_given(planted):
    model, *_ = planted
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def test_ablation_is_decided_in_one_place():
    means = torch.tensor([0.5, -1.0])
    assert torch.equal(ablation_values("mean", means), means)
    assert torch.equal(ablation_values("zero", means), torch.zeros(2))
    with pytest.raises(ValueError, match="ablation must be one of mean, zero"):
        ablation_values("median", means)


def test_planted_circuit_edges_are_its_weights(planted):
    model, tok, task, layout, means, pruner, run = planted
    edges = {(e.source, e.target): e.weight for e in circuit_edges(model, layout, run.keep)}
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
    assert m.checks["sufficient"] and m.checks["necessary"] and m.checks["beats_random"]
    assert m.passed
    assert m.necessity.loss > 0.6 and m.random.min > 0.3 and len(m.random.losses) == 10
    assert m.circuit["heldout"].accuracy == 1.0


def test_validation_fails_on_a_broken_model(planted):
    """The planted circuit, checked on a model given a second, parallel copy of the mechanism: it is
    still sufficient, but ablating it no longer breaks the task, so validation must fail."""
    _, tok, task, _, _, _, run = planted
    model = planted_model(redundant=True)
    layout = NodeLayout(model.config)
    means = compute_node_means(model, layout, pretraining_windows())
    circuit = circuit_of(model, layout, run)
    m = evaluate_circuit(model, circuit, task, tok, means, n_pairs=64)
    assert m.checks["sufficient"]
    assert not m.checks["necessary"] and not m.passed
    assert m.necessity.accuracy == 1.0


def test_target_the_full_model_cannot_reach_is_refused():
    model, tok, task = planted_model(), planted_tokenizer(), PlantedQuoteTask()
    layout = NodeLayout(model.config)
    means = compute_node_means(model, layout, pretraining_windows())
    with pytest.raises(TargetUnreachableError, match="full model's loss"):
        Pruner(model, layout, means, task, tok, PruneConfig(**(SETTINGS | {"target_loss": 0.001})))


class PlantedWithNatural(PlantedQuoteTask):
    """The planted task with 'natural' examples read off the texts it is given: each text is a prompt
    whose answer follows its opening quote, unless the text says otherwise after a '|'."""

    def natural_examples(self, texts, n, seed, tokenizer=None):
        out = []
        for text in texts[:n]:
            prompt, _, answer = text.partition("|")
            right = answer or (" X" if prompt.lstrip().startswith('"') else " Y")
            out.append(Example(prompt.strip(), right, " Y" if right == " X" else " X"))
        return out


NATURAL_TEXTS = ['" a b =', "' c =", '" f e =', "a ' b b b ="] * 8


def test_natural_judge_holds_node_sets_to_the_natural_examples_too(planted):
    model, tok, _, layout, means, _, _ = planted
    cfg = PruneConfig(**(SETTINGS | {"natural_judge": True}))
    pruner = Pruner(model, layout, means, PlantedWithNatural(), tok, cfg, natural_texts=NATURAL_TEXTS)
    assert len(pruner.natural_heldout) == len(NATURAL_TEXTS)
    g = torch.Generator().manual_seed(0)
    sets = torch.stack([torch.ones(layout.n_nodes), (torch.rand(layout.n_nodes, generator=g) > 0.3).float(),
                        torch.zeros(layout.n_nodes)])
    each = torch.stack([pruner.eval.losses_many(b, sets) for b in (pruner.heldout, pruner.calib,
                                                                   pruner.natural_heldout)])
    # the natural examples also hold each set to an accuracy floor: the full model's natural accuracy
    # less the validation's 5-point gap (less the search margin)
    full = pruner.eval.metrics(pruner.natural_heldout, None)
    assert pruner.natural_accuracy_floor == pytest.approx(full.accuracy - 0.05 * (1 - cfg.search_margin))
    z, y = pruner.eval.logit_diffs_many(pruner.natural_heldout, sets)
    accuracy = torch.stack([two_way_accuracy(zc, y) for zc in z])  # one node set at a time
    assert accuracy[0] == full.accuracy and accuracy[2] < pruner.natural_accuracy_floor  # nothing kept
    short = (pruner.natural_accuracy_floor - accuracy).clamp_min(0)
    each[2] = torch.where(short > 0, torch.maximum(each[2], cfg.search_target + short), each[2])
    torch.testing.assert_close(pruner.judge(sets), each.amax(0))
    assert pruner.judge(sets)[2] > cfg.search_target
    # a set whose loss is far under the target still fails when its accuracy is short
    assert float(pruner.judge(sets[:1])[0]) < cfg.search_target / 2
    pruner.natural_accuracy_floor = full.accuracy + 0.01
    assert float(pruner.judge(sets[:1])[0]) == pytest.approx(cfg.search_target + 0.01)
    # natural examples the full model gets half wrong: their loss is out of reach, so only the
    # accuracy floor (half, less the gap) holds there, and the full set meets it
    wrong = ['" a b =| Y', "' c =| Y"] * 8
    lenient = Pruner(model, layout, means, PlantedWithNatural(), tok, cfg, natural_texts=wrong)
    assert not lenient.natural_loss_judged and lenient.natural_accuracy_floor < 0.5
    assert float(lenient.judge(sets[:1])[0]) < cfg.search_target
    # a task that mines no natural examples is judged on its templated prompts alone
    plain = Pruner(model, layout, means, PlantedQuoteTask(), tok, cfg, natural_texts=NATURAL_TEXTS)
    assert plain.natural_heldout is None


def test_natural_margin_raises_the_accuracy_floor(planted):
    """--natural-margin keeps the search that far above the validation's bound (full model less 5
    points): the floor moves up by the margin, and no node set is judged more leniently."""
    model, tok, _, layout, means, _, _ = planted
    default, strict = (Pruner(model, layout, means, PlantedWithNatural(), tok,
                              PruneConfig(**(SETTINGS | {"natural_judge": True, "natural_margin": m})),
                              natural_texts=NATURAL_TEXTS) for m in (None, 0.02))
    full = default.eval.metrics(default.natural_heldout, None).accuracy
    assert default.natural_accuracy_floor == pytest.approx(full - 0.05 * (1 - default.cfg.search_margin))
    assert strict.natural_accuracy_floor == pytest.approx(full - 0.03)
    g = torch.Generator().manual_seed(1)
    sets = (torch.rand(64, layout.n_nodes, generator=g) > torch.linspace(0, 1, 64)[:, None]).float()
    assert (strict.judge(sets) >= default.judge(sets)).all()
    assert (strict.judge(sets) > default.judge(sets)).any()


def _batch(correct: list[int], alternative: list[int]) -> TaskBatch:
    n = len(correct)
    return TaskBatch(tokens=torch.zeros(n, 1, dtype=torch.long), lengths=torch.ones(n, dtype=torch.long),
                     positions=torch.zeros(n, dtype=torch.long), correct=torch.tensor(correct),
                     alternative=torch.tensor(alternative), pair_ids=torch.arange(n))


def test_two_way_loss_matches_hand_computation_and_task_loss():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    batch = _batch([0, 2], [2, 1])
    z, y = oriented_logit_diff(logits, batch)
    # prompt 0: correct 2.0 vs alt -1.0; prompt 1: correct 3.0 vs alt 1.0
    hand = (math.log(1 + math.exp(-3.0)) + math.log(1 + math.exp(-2.0))) / 2
    assert two_way_loss(z, y).item() == pytest.approx(hand, rel=1e-6)
    assert task_loss(logits, batch).item() == two_way_loss(z, y).item()  # one loss, one code path


def test_one_accuracy_rule_ties_count_as_wrong():
    """The pruner's accuracy and the tasks' accuracy are one rule: a tie picks neither answer."""
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    batch = _batch([0, 1, 0, 0], [1, 0, 1, 1])  # rows 0-1 tie (either orientation), row 2 right, row 3 wrong
    z, y = oriented_logit_diff(logits, batch)
    assert two_way_accuracy(z, y).item() == task_accuracy(logits, batch).item() == 0.25
    # a calibration bias breaks the ties one way: the row whose correct answer it favours is right
    assert two_way_accuracy(z, y, 1.0, 0.5).item() == 0.5


def test_calibration_never_raises_the_loss():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        y = (torch.rand(64, generator=g) > 0.5).float()
        z = (y * 2 - 1) * torch.rand(64, generator=g) * 3 + torch.randn(64, generator=g) * (trial / 5)
        cal = calibrate(z, y)
        assert cal.loss <= two_way_loss(z, y).item() + 1e-7
        assert cal.loss == pytest.approx(two_way_loss(z, y, cal.scale, cal.bias).item(), rel=1e-5)


def test_artefact_round_trips_and_refuses_tampering(planted, tmp_path):
    model, tok, task, layout, means, pruner, run = planted
    circuit = circuit_of(model, layout, run, fingerprint="abc123")
    assert Circuit.from_dict(circuit.to_dict()) == circuit  # no metrics yet: written as {}, read as None
    circuit.metrics = evaluate_circuit(model, circuit, task, tok, means, n_pairs=16, n_random=2)
    circuit.metrics.control = Control("nonsense", 40, 0.5, 0.4, 0.6, False)
    path = circuit.save(tmp_path / "circuit.json")
    loaded = load_circuit(path, fingerprint="abc123")
    assert loaded == circuit  # every typed field comes back equal
    assert set(loaded.node_names) == PLANTED_NODES
    assert torch.equal(loaded.keep_mask(layout), run.keep)
    assert loaded.settings == run.settings and loaded.calibration == run.calibration
    assert json.loads(path.read_text())["schema"] == "sparse_gpt.circuit/1"
    with pytest.raises(CircuitError, match="checkpoint weights"):
        load_circuit(path, fingerprint="other")
    data = json.loads(path.read_text())
    data["edges"][0]["weight"] = 99.0
    path.write_text(json.dumps(data))
    with pytest.raises(CircuitError, match="checksum mismatch"):
        load_circuit(path)
    data = loaded.to_dict()
    assert list(data["metrics"])[:5] == ["target_loss", "nodes", "edges", "full_templated", "circuit_templated"]
    assert data["metrics"]["control"]["nodes"] == 40  # on disk the metrics stay one flat object
    data["provenance"]["pruner"]["surprise"] = 1
    data["checksum"] = checksum(data)  # a consistent file, but with a setting this version does not know
    with pytest.raises(CircuitError, match="unknown pruner setting"):
        Circuit.from_dict(data)
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
    from sparse_gpt.nodes import MEANS_FILE, load_or_compute_means
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
        with torch.no_grad(), gated(model, layout, gates, pruner.ablate_to):
            full = model(batch.tokens[:, :T])[torch.arange(len(batch)), batch.positions]
        torch.testing.assert_close(got, full)
    ev.chunk = 64


def test_calibration_is_fitted_on_one_batch_and_kept_only_if_another_does_not_get_worse():
    from sparse_gpt.prune.objective import held_out_calibration
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(128, generator=g) > 0.5).float()
    signs = y * 2 - 1
    # the fitting batch is separable (calibration blows its scale up); the judging batch has a few
    # confident mistakes, which a large scale makes far worse
    fit_z = signs * (0.5 + torch.rand(128, generator=g))
    judge_z = signs * (0.5 + torch.rand(128, generator=g))
    judge_z[:10] = -judge_z[:10]
    cal = held_out_calibration((fit_z, y), (judge_z, y))
    assert calibrate(fit_z, y).scale > 2  # fitted alone it would be kept
    assert (cal.scale, cal.bias) == (1.0, 0.0)
    assert cal.loss == pytest.approx(two_way_loss(judge_z, y).item())
    # on a judging batch like the fitting one, the fitted calibration is kept, scored there
    cal = held_out_calibration((fit_z, y), (signs * (0.5 + torch.rand(128, generator=g)), y))
    assert cal.scale > 2 and cal.loss < 0.05


def test_passed_requires_the_raw_loss_to_meet_the_target(planted):
    """A circuit whose calibrated loss meets the target but whose raw loss does not has not passed:
    the calibration's scale would be doing the work."""
    from sparse_gpt.prune.objective import Calibration
    model, tok, task, layout, means, pruner, run = planted
    circuit = circuit_of(model, layout, run)
    settings = dataclasses.replace(run.settings, target_loss=0.02)
    circuit.provenance = dataclasses.replace(circuit.provenance, pruner=settings)
    circuit.calibration = Calibration(scale=25.0, bias=0.0)
    m = evaluate_circuit(model, circuit, task, tok, means, n_pairs=32, n_random=2)
    assert m.circuit["templated"].loss <= 0.02 < m.circuit_uncalibrated["templated"].loss
    assert not m.checks["sufficient"] and not m.passed
    assert Circuit.from_dict(circuit.to_dict()).calibration == circuit.calibration


def test_summary_table_names_a_reported_check_that_failed(planted):
    """"Passed" is sufficiency and necessity on the raw loss; a circuit can pass and still miss the
    natural-accuracy bound, and the summary table must not show a plain "yes" beside that."""
    model, tok, task, layout, means, pruner, run = planted
    m = evaluate_circuit(model, circuit_of(model, layout, run), task, tok, means, n_pairs=32, n_random=2)
    verdict = script_module("prune_circuit.py").verdict
    assert m.passed and all(m.checks.values()) and verdict(m) == "yes"
    missed = dataclasses.replace(m, checks={**m.checks, "natural_accuracy_raw": False})
    assert verdict(missed) == "yes, except natural_accuracy_raw"
    assert verdict(dataclasses.replace(m, passed=False)) == "NO"


def test_pruner_calibration_is_judged_on_the_held_out_batch(planted):
    model, tok, task, layout, means, pruner, run = planted
    judge = oriented_logit_diff(pruner.eval.logits(pruner.heldout, run.keep.float()), pruner.heldout)
    raw = two_way_loss(*judge).item()
    assert run.calibration.loss == pytest.approx(two_way_loss(*judge, run.calibration.scale,
                                                               run.calibration.bias).item(), rel=1e-5)
    assert run.calibration.loss <= raw


def test_many_node_sets_in_one_forward_match_one_at_a_time(planted):
    model, tok, task, layout, means, pruner, run = planted
    g = torch.Generator().manual_seed(0)
    sets = torch.stack([run.keep.float(), torch.ones(layout.n_nodes),
                        (torch.rand(layout.n_nodes, generator=g) > 0.5).float(), torch.zeros(layout.n_nodes)])
    many = pruner.eval.losses_many(pruner.heldout, sets, max_rows=50)  # several forwards, several sets each
    one = torch.tensor([pruner.eval.loss(pruner.heldout, s) for s in sets])
    torch.testing.assert_close(many, one, rtol=1e-4, atol=1e-5)
    # the first-order removal estimates point at the planted nodes as the ones that matter
    est = pruner.eval.removal_estimates(pruner.heldout, run.keep)
    assert est[run.keep].max() > 0 and est[~run.keep].abs().max() < est[run.keep].abs().max()


def test_a_mask_that_misses_the_target_is_repaired_not_grown():
    """Too few steps for the planted mechanism: the trained mask keeps 8 nodes and misses the
    target. The repair adds nodes back by the task's gradient, so the circuit stays within a few
    times the planted size (a bisection down the trained ranking grew it to 208 of 256 nodes), and
    refinement then takes it to exactly the planted nodes."""
    *_, layout, _, pruner, run = prune_planted(k_coef=0.01, steps=150)
    assert run.stages[0]["stage"] == "trained" and run.stages[0]["loss"] > 0.15
    assert run.stages[-2]["stage"] == "repaired" and run.stages[-2]["loss"] <= 0.15
    assert run.loss <= 0.15 and run.n_nodes <= 3 * len(PLANTED_NODES)
    refined = refine(pruner, run)
    assert {layout.node_name(i) for i in refined.keep.nonzero().flatten().tolist()} == PLANTED_NODES


def test_refinement_removes_nodes_the_task_does_not_need(planted):
    """The planted circuit plus 20 distractor nodes: greedy removal (judged on the raw held-out
    loss) takes the circuit back to the planted nodes."""
    model, tok, task, layout, means, pruner, run = planted
    g = torch.Generator().manual_seed(3)
    extra = torch.randperm(layout.n_nodes, generator=g)
    extra = extra[~run.keep[extra]][:20]
    padded = run.keep.clone()
    padded[extra] = True
    start = dataclasses.replace(run, keep=padded, loss=pruner.eval.loss(pruner.heldout, padded.float()))
    refined = refine(pruner, start)
    found = {layout.node_name(i) for i in refined.keep.nonzero().flatten().tolist()}
    assert found <= PLANTED_NODES | {layout.node_name(i) for i in extra.tolist()}
    assert PLANTED_NODES <= found and len(found) <= len(PLANTED_NODES) + 2
    assert refined.loss <= 0.15 and [s["stage"] for s in refined.stages][-3:] == ["greedy", "retrained", "greedy 2"]
    assert set(refined.scores.argsort(descending=True)[:len(found)].tolist()) == set(refined.keep.nonzero().flatten().tolist())


def test_faithfulness_curve_over_the_ranking(planted):
    """The planted ranking puts the 13 circuit nodes first: faithfulness is ~1 from 13 nodes on,
    the circuit's point is ~1, and with a handful of nodes it is far lower."""
    model, tok, task, layout, means, pruner, run = planted
    m = evaluate_circuit(model, circuit_of(model, layout, run), task, tok, means, n_pairs=32, n_random=2,
                         scores=run.scores)
    c = m.faithfulness
    assert c["fractions"][0] == 0.001 and c["fractions"][-1] == 1.0 and c["nodes"][-1] == layout.n_nodes
    assert c["faithfulness"][-1] == pytest.approx(1.0, abs=1e-4)  # every node kept: the model itself
    assert c["circuit_nodes"] == 13 and c["circuit_faithfulness"] > 0.9
    assert c["faithfulness"][0] < 0.5  # 1 node (0.1% of 256 rounds to 0, at least 1 is kept)
    assert 0.8 < c["cpr"] <= 1.05 and 0 <= c["cmd"] < 0.2
    assert Circuit.from_dict(circuit_of(model, layout, run).to_dict()).metrics is None


def test_refinement_keeps_at_least_one_node(planted):
    """With a target even the empty circuit meets, greedy removal stops at one node, like the
    bisection (a circuit of nothing has no mechanism to show)."""
    model, tok, task, layout, means, pruner, run = planted
    keep = greedy_remove(pruner.eval, pruner.screen, pruner.judge, run.keep, target=10.0)
    assert int(keep.sum()) == 1


def test_greedy_removal_passes_over_nodes_only_the_judge_needs(planted):
    """The judge sees more than the screen that ranks the candidates (natural examples and their
    accuracy): nodes the screen ranks most harmless but the judge needs are kept, and the nodes
    after them in the ranking are still tried, rather than the removal stopping at the first."""
    model, tok, task, layout, means, pruner, run = planted
    # four MLP neurons with no weights out of them: the screen ranks their removal first (it changes
    # nothing), but this judge needs them; at a target of 0.4 some planted nodes can go instead
    idle = {"1.mlp.post_act[10]", "1.mlp.post_act[11]", "1.mlp.post_act[12]", "1.mlp.post_act[13]"}
    needed = layout.keep_mask(idle).to(pruner.device)

    def judge(sets):
        return torch.where(sets[:, needed].all(1).cpu(), pruner.judge(sets), torch.tensor(math.inf))

    keep = layout.keep_mask(PLANTED_NODES | idle).to(pruner.device)
    kept = greedy_remove(pruner.eval, pruner.screen, judge, keep, target=0.4)
    names = {layout.node_name(i) for i in kept.nonzero().flatten().tolist()}
    assert idle <= names and len(names) < len(PLANTED_NODES | idle)
    assert float(judge(kept.float()[None])[0]) <= 0.4


def test_greedy_removal_goes_on_until_a_round_removes_nothing(planted):
    """An exact round removes at most `max_exact` nodes, so a large kept set (a repaired mask can
    hold thousands) needs many rounds: started from the whole model, the pass goes on until no more
    nodes than the planted mechanism's are left, where a fixed count of rounds stopped with most kept."""
    model, tok, task, layout, means, pruner, run = planted
    target = pruner.cfg.search_target
    everything = torch.ones(layout.n_nodes, dtype=torch.bool, device=pruner.device)
    kept = greedy_remove(pruner.eval, pruner.screen, pruner.judge, everything, target, estimated_rounds=0,
                         max_exact=8)
    assert layout.n_nodes > 8 * 10
    assert int(kept.sum()) <= len(PLANTED_NODES)
    assert float(pruner.judge(kept.float()[None])[0]) <= target
    capped = greedy_remove(pruner.eval, pruner.screen, pruner.judge, everything, target, estimated_rounds=0,
                           max_exact=8, rounds=4)
    assert int(capped.sum()) >= layout.n_nodes - 4 * 8
