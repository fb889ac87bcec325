"""Evidence for or against a circuit's faithfulness.

Sufficiency: everything outside the circuit ablated (for a weight-level circuit, also the weights
between its nodes it does not keep), the task still works, judged on the raw
(uncalibrated) loss: a calibration's scale and bias can turn a circuit at chance into a passing
one, so they are reported beside the raw numbers and never decide. Necessity: only the
circuit's nodes ablated, the task breaks. Random node sets of the same size per location (with
every weight between their nodes: a stricter baseline than the circuit's own weights) as a baseline;
held-out templates and natural examples mined from real code to catch template shortcuts; the
final residual's RMS relative to the full model's (the final norm can amplify a shrunken residual).
"""
from __future__ import annotations

import math

import torch

from ..nodes import EdgeSet, NodeLayout
from ..prune.masks import gated, record_norm_scales
from ..prune.objective import IDENTITY, NATURAL_ACCURACY_GAP, Calibration, Evaluator, Score
from ..tasks.base import (BinaryTask, TaskBatch, encode_examples, encode_pairs, oriented_logit_diff,
                          two_way_accuracy, two_way_loss)
from .artefact import Circuit
from .faithfulness import faithfulness_curve
from .metrics import Metrics, RandomBaseline

# Ablating a necessary circuit should push the task loss at least half way to chance (ln 2).
NECESSITY_LOSS = math.log(2) / 2


def random_keep_like(keep: torch.Tensor, layout: NodeLayout, gen: torch.Generator) -> torch.Tensor:
    """A random node set with the same number of nodes at every location as `keep`."""
    out = torch.zeros_like(keep)
    for loc in layout.locations:
        n = int(keep[loc.slice].sum())
        if n:
            out[loc.offset + torch.randperm(loc.width, generator=gen)[:n]] = True
    return out


@torch.no_grad()
def final_resid_rms_ratio(model, layout, batch, gates, means, freeze_norms: bool, edges: EdgeSet | None = None,
                          edge_gates: torch.Tensor | None = None) -> float:
    """RMS of the final residual at the scored positions: circuit / full model."""
    T = int(batch.lengths.max())
    x = batch.tokens[:, :T]
    rows = torch.arange(len(batch), device=x.device)
    with model.hooks(record=["final_resid"]) as cache:
        model(x)
    full = cache["final_resid"][rows, batch.positions]
    scales = record_norm_scales(model, x) if freeze_norms else None
    with gated(model, layout, gates, means, scales, edges, edge_gates), model.hooks(record=["final_resid"]) as cache:
        model(x)
    pruned = cache["final_resid"][rows, batch.positions]
    return (pruned.pow(2).mean().sqrt() / full.pow(2).mean().sqrt()).item()


def _batches(task: BinaryTask, tokenizer, block: int, n_pairs: int, seed: int,
             natural_texts: list[str] | None) -> dict[str, TaskBatch]:
    """Templated pairs from the pruning templates and held-out ones, and natural examples if any."""
    batches = {"templated": encode_pairs(task, task.pairs(n_pairs, seed, "prune"), tokenizer, block),
               "heldout": encode_pairs(task, task.pairs(n_pairs, seed, "heldout"), tokenizer, block)}
    if natural_texts:
        examples = task.natural_examples(natural_texts, n=2 * n_pairs, seed=seed, tokenizer=tokenizer)
        if examples:
            batches["natural"] = encode_examples(task, examples, tokenizer, block)
    return batches


def _checks(full: dict[str, Score], circuit: dict[str, Score], raw: dict[str, Score], necessity: Score,
            random: RandomBaseline, target: float) -> dict[str, bool]:
    checks = {
        "sufficient": raw["templated"].loss <= target,
        "necessary": necessity.loss >= NECESSITY_LOSS,
        "beats_random": raw["templated"].loss < random.min,
        "generalises_heldout": raw["heldout"].loss <= max(target, 2 * full["heldout"].loss),
    }
    if "natural" in circuit:
        # a circuit at chance on real code where the full model is not has found a template shortcut
        checks["generalises_natural"] = raw["natural"].accuracy >= 0.5 + 0.5 * (full["natural"].accuracy - 0.5)
        checks["natural_accuracy_raw"] = raw["natural"].accuracy >= full["natural"].accuracy - NATURAL_ACCURACY_GAP
        checks["natural_accuracy_calibrated"] = \
            circuit["natural"].accuracy >= full["natural"].accuracy - NATURAL_ACCURACY_GAP
    return checks


def _score(z: torch.Tensor, y: torch.Tensor, cal: Calibration) -> Score:
    return Score(two_way_loss(z, y, cal.scale, cal.bias).item(), two_way_accuracy(z, y, cal.scale, cal.bias).item(),
                 len(z))


def _random_baseline(ev: Evaluator, batch: TaskBatch, keep: torch.Tensor, layout: NodeLayout, n: int,
                     seed: int) -> RandomBaseline:
    gen = torch.Generator().manual_seed(seed)
    losses = [ev.loss(batch, random_keep_like(keep.cpu(), layout, gen).float().to(keep.device)) for _ in range(n)]
    return RandomBaseline(n=n, losses=losses, mean=sum(losses) / max(1, n), min=min(losses, default=math.nan))


def evaluate_circuit(model, circuit: Circuit, task: BinaryTask, tokenizer, means: torch.Tensor,
                     n_pairs: int = 256, n_random: int = 10, seed: int = 10_007,
                     natural_texts: list[str] | None = None, scores: torch.Tensor | None = None,
                     curve_pairs: int = 64) -> Metrics:
    """All validation metrics of `circuit` on `task` (`means`: the nodes' means over pretraining
    text); stored in circuit.json's metrics. With `scores` (the pruner's ranking of every node),
    also the faithfulness curve over that ranking, on the first `curve_pairs` templated pairs."""
    device = next(model.parameters()).device
    layout = NodeLayout(model.config)
    settings = circuit.settings
    ablate_to = circuit.ablation_values(means.to(device))
    ev = Evaluator(model, layout, ablate_to, settings.freeze_norms)
    keep = circuit.keep_mask(layout).to(device)
    gates = keep.float()
    # the circuit itself: its nodes, and of the weights between them only those it keeps
    edges, edge_keep = circuit.edge_mask(model, layout)
    edge_gates = edge_keep.float().to(device)
    cev = Evaluator(model, layout, ablate_to, settings.freeze_norms, edges=edges, edge_gates=edge_gates)
    batches = {k: b.to(device) for k, b in
               _batches(task, tokenizer, model.config.block_size, n_pairs, seed, natural_texts).items()}
    full, within, raw = {}, {}, {}
    for split, b in batches.items():
        full[split] = ev.metrics(b, None)
        # one forward gives both: the calibration only rescales the logit difference
        z, y = oriented_logit_diff(cev.logits(b, gates), b)
        raw[split] = _score(z, y, IDENTITY)
        within[split] = _score(z, y, circuit.calibration)
    templ = batches["templated"]
    necessity = ev.metrics(templ, 1.0 - gates)
    random = _random_baseline(ev, templ, keep, layout, n_random, seed)
    checks = _checks(full, within, raw, necessity, random, settings.target_loss)
    curve = None
    if scores is not None:
        part = templ.select(slice(0, 2 * curve_pairs))
        own = cev.loss(part, gates) if not bool(edge_keep.all()) else None
        curve = faithfulness_curve(ev, part, scores.to(device), int(keep.sum()), circuit_loss=own).to_dict()
    return Metrics(target_loss=settings.target_loss, nodes=int(keep.sum()), edges=int(edge_keep.sum()), full=full,
                   circuit=within, circuit_uncalibrated=raw, necessity=necessity, random=random,
                   final_resid_rms_ratio=final_resid_rms_ratio(model, layout, templ, gates, ablate_to,
                                                               settings.freeze_norms, edges, edge_gates),
                   checks=checks, passed=checks["sufficient"] and checks["necessary"], faithfulness=curve,
                   node_level_edges=len(edges))
