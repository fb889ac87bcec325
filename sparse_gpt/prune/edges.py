"""Weight-level circuits: inside a node circuit, the fewest weights between its nodes that still
solve the task.

A node circuit keeps every nonzero weight between its nodes. Once the nodes are fixed, a mask over
those weights (one Heaviside gate per weight, the node mask's surrogate gradient, task loss +
edge_k_coef x kept weights) is trained; a pruned weight passes on its source's ablation value
times the weight (sparse_gpt.prune.masks.edge_gated), so the rest of the model sees a typical
input. The mask is discretised by the fewest top-ranked weights meeting the target on the raw
held-out loss (the worse of two batches, as for nodes), then refined by the nodes' greedy removal
(sparse_gpt.prune.refine.greedy_remove) over weights. Nodes the remaining weights leave without
a use are dropped when the loss allows. Every step is judged exactly, and the stage never returns
a circuit that misses the target: if it cannot keep it, every weight between the nodes stays.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import torch

from ..nodes import EdgeSet, edge_set
from .masks import HeavisideMask
from .objective import EdgeEvaluator, Evaluator
from .pruner import Pruner, PruneRun, top_k_gates
from .refine import greedy_remove

# kinds whose value reaches the circuit only through their outgoing weights: with none kept, the
# node is already as good as ablated (dropping it changes nothing)
_USED_THROUGH_OUT = ("resid_read", "attn_v", "mlp_neuron")
# kinds computed from incoming weights: with none kept, the node is a constant (not its mean)
_FED_THROUGH_IN = ("attn_q", "attn_k", "attn_v", "mlp_neuron", "resid_write")


def fewest_top(scores: torch.Tensor, loss_of, target: float) -> tuple[int, list[tuple[int, float]]]:
    """The fewest top-ranked entries whose loss `loss_of(k)` meets `target`, the whole set assumed to
    meet it. From the entries with a positive score: if they meet the target, halve while the half
    still does, else look only above them; then bisect inside the bracket. (The loss is not monotone
    in k, so this is a search, not a proof; every point is judged exactly.)"""
    N = len(scores)
    curve: dict[int, float] = {}

    def meets(k: int) -> bool:
        if k not in curve:
            curve[k] = loss_of(k)
        return curve[k] <= target

    n_pos = int((scores > 0).sum())
    if n_pos and meets(n_pos):
        hi = n_pos
        while hi > 1 and meets(hi // 2):
            hi //= 2
        lo = hi // 2
    else:
        lo, hi = n_pos, N
    while hi - lo > 1:  # invariant: meets(hi) (or hi == N), not meets(lo) (or lo == 0)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi, sorted(curve.items())


def unused_nodes(pruner: Pruner, keep: torch.Tensor, edges: EdgeSet, edge_keep: torch.Tensor,
                 target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (N,) masks of circuit nodes the kept weights leave without a use. `unused`: residual
    reads, v channels and neurons with no kept outgoing weight, already as good as ablated.
    `constant`: q/k/v channels, neurons and residual writes with no kept incoming weight (they
    carry a constant, not their mean) whose removal alone keeps the screening batch at target."""
    layout = pruner.layout
    into, out = edges.node_degrees(layout, edge_keep.cpu())
    kinds = [loc.kind for loc in layout.locations for _ in range(loc.width)]
    through_out = torch.tensor([k in _USED_THROUGH_OUT for k in kinds])
    through_in = torch.tensor([k in _FED_THROUGH_IN for k in kinds])
    keep = keep.cpu()
    unused = keep & through_out & (out == 0)
    constant = keep & ~unused & through_in & (into == 0)
    cand = constant.nonzero().flatten()
    if len(cand):
        # node sets inside the circuit under its edge mask (an ablated node's weights carry nothing)
        ev = Evaluator(pruner.model, layout, pruner.ablate_to, pruner.cfg.freeze_norms, edges=edges,
                       edge_gates=edge_keep.float().to(pruner.device))
        singles = (keep & ~unused).float().repeat(len(cand), 1)
        singles[torch.arange(len(cand)), cand] = 0.0
        constant = torch.zeros_like(keep)
        constant[cand[ev.losses_many(pruner.screen, singles.to(pruner.device)).cpu() <= target]] = True
    return unused, constant


class _Clock:
    """Wall and CPU seconds of consecutive phases, recorded as `<phase>_seconds` and `<phase>_cpu_seconds`."""

    def __init__(self, info: dict):
        self.info, self.wall, self.cpu = info, time.perf_counter(), time.process_time()

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.info[f"{phase}_seconds"] = round(wall - self.wall, 1)
        self.info[f"{phase}_cpu_seconds"] = round(cpu - self.cpu, 1)
        self.wall, self.cpu = wall, cpu


def _trained_scores(pruner: Pruner, ev: EdgeEvaluator, n_edges: int) -> torch.Tensor:
    """Scores of a mask over the weights trained with the nodes fixed (the pruner's mask training)."""
    cfg = pruner.cfg
    gen = torch.Generator().manual_seed(cfg.seed + 104_729)
    settings = replace(cfg, lr=cfg.edge_lr, k_warmup=0.0, temperature_final=None)
    mask = HeavisideMask(n_edges, cfg.init_bias, cfg.init_noise, cfg.temperature, generator=gen).to(pruner.device)
    if cfg.edge_steps:
        pruner.train_mask(mask, settings, cfg.edge_steps, cfg.edge_k_coef, gen, desc="edge mask",
                          logits_of=ev._gated_logits)
    return mask.scores().cpu()


def _without_unused_nodes(pruner: Pruner, keep: torch.Tensor, edges, edge_keep: torch.Tensor, target: float):
    """(keep, edges, edge_keep, evaluator, loss) without the nodes the kept weights leave unused, if
    that still meets the target; each candidate set is judged exactly, with its own weights. None
    when no node can go."""
    unused, constant = unused_nodes(pruner, keep, edges, edge_keep, target)
    for drop in (unused | constant, unused):
        new_keep = keep & ~drop
        if not drop.any() or not new_keep.any():
            continue
        kept_records = [e for e in edges.records(edge_keep)
                        if all(new_keep[pruner.layout.node_index(n)] for n in (e.source, e.target))]
        new_edges = edge_set(pruner.model, pruner.layout, new_keep)
        new_edge_keep = new_edges.mask_of(kept_records)
        new_ev = EdgeEvaluator(pruner.model, pruner.layout, pruner.ablate_to, new_keep.to(pruner.device), new_edges,
                               pruner.cfg.freeze_norms)
        new_loss = float(pruner.judge(new_edge_keep.float()[None], new_ev)[0])
        if new_loss <= target:
            return new_keep, new_edges, new_edge_keep, new_ev, new_loss
    return None


def prune_edges(pruner: Pruner, run: PruneRun, deadline: float = math.inf, log=None) -> PruneRun:
    """`run` with a weight-level circuit (run.edge_keep, run.edge_stage), its nodes possibly fewer;
    every weight between the nodes is kept (and the stage says why) when the node circuit misses
    the target or no smaller weight set meets it."""
    cfg = pruner.cfg
    target, device = cfg.search_target, pruner.device
    t0, c0 = time.perf_counter(), time.process_time()
    keep = run.keep.cpu()
    edges = edge_set(pruner.model, pruner.layout, keep)
    E = len(edges)
    info = {"node_level_edges": E, "nodes_before": int(keep.sum())}

    def finish(keep, edge_keep, loss, calibration, status, scores=run.scores):
        info.update(status=status, nodes=int(keep.sum()), edges=int(edge_keep.sum()), loss=loss,
                    seconds=round(time.perf_counter() - t0, 1), cpu_seconds=round(time.process_time() - c0, 1))
        if log is not None:
            log(f"edge stage: {info['edges']} of {E} weights, {info['nodes']} of {info['nodes_before']} nodes, raw "
                f"held-out loss {loss:.3f} ({info['seconds']:.0f} s, {info['cpu_seconds']:.0f} s CPU): {status}")
        stages = run.stages + [{"stage": "edges", "nodes": info["nodes"], "edges": info["edges"], "loss": loss}]
        return replace(run, keep=keep, scores=scores, loss=loss, calibration=calibration, edge_keep=edge_keep.cpu(),
                       edge_stage=dict(info), stages=stages, seconds=run.seconds + time.perf_counter() - t0)

    all_edges = torch.ones(E, dtype=torch.bool)
    if run.loss > target:
        return finish(keep, all_edges, run.loss, run.calibration,
                      "the node circuit misses the target: every weight between its nodes kept")
    if E == 0:
        return finish(keep, all_edges, run.loss, run.calibration, "no weights between the nodes")
    ev = EdgeEvaluator(pruner.model, pruner.layout, pruner.ablate_to, keep.to(device), edges, cfg.freeze_norms)
    judge = lambda sets: pruner.judge(sets, ev)  # noqa: E731
    clock = _Clock(info)

    # 1. train a mask over the weights, the nodes fixed
    scores = _trained_scores(pruner, ev, E)
    info["trained"] = int((scores > 0).sum())
    clock.lap("train")
    # 2. discretise: the fewest top-ranked weights meeting the target
    k, curve = fewest_top(scores, lambda k: float(judge(top_k_gates(scores, k)[None])[0]), target)
    edge_keep = top_k_gates(scores, k).bool()
    info.update(discretised=k, curve=curve)
    clock.lap("discretise")
    # 3. greedy removal of weights, exact on held-out pairs
    edge_keep = greedy_remove(ev, pruner.screen, judge, edge_keep.to(device), target, rounds=2, max_exact=32,
                              deadline=min(deadline, time.perf_counter() + cfg.edge_seconds)).cpu()
    info["greedy"] = int(edge_keep.sum())
    loss = float(judge(edge_keep.float()[None])[0])
    clock.lap("greedy")
    # 4. nodes left without a use
    dropped = _without_unused_nodes(pruner, keep, edges, edge_keep, target)
    info["nodes_dropped"] = 0 if dropped is None else int(keep.sum() - dropped[0].sum())
    if dropped is not None:
        keep, edges, edge_keep, ev, loss = dropped
    info["node_level_edges_after_drop"] = len(edges)
    if loss > target:  # cannot happen when every step above was judged, but never trust it
        return finish(run.keep.cpu(), all_edges, run.loss, run.calibration,
                      "no smaller weight set met the target: every weight between the nodes kept")
    scores = run.scores
    if not torch.equal(keep, run.keep.cpu()):
        scores = torch.where(keep, run.scores - run.scores.min() + 1.0, run.scores - run.scores.max() - 1.0)
    return finish(keep, edge_keep, loss, pruner.calibration_of(edge_keep, ev), "ok", scores)
