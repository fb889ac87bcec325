"""Refinement of a discretised circuit: exact greedy removal, then a short retraining inside it.

A trained mask's discretisation keeps every node its ranking put above the cut, including nodes
the task does not need once the rest is fixed. Greedy removal drops nodes a batch at a time,
judging every removal by the exact raw task loss (no calibration) on held-out pairs: each round
ranks the kept nodes (first by a first-order estimate, then by every node's exact removal on a
small batch, many node sets per forward, so a round costs a few large forwards rather than one
per node) and bisects for the longest run of harmless nodes that can go together. Where the judge
needs the first of them (it also holds natural examples, which the small batch does not), the
next ones are judged singly and the rest tried, rather than the pass ending there.
A retraining of masks restricted to the kept set then lets the penalty trade nodes against each
other with the rest of the model fixed, and a second greedy pass cleans up after it.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace

import torch

from ..tasks.base import TaskBatch
from .objective import Evaluator
from .pruner import Pruner, PruneRun, top_k_gates

MIN_GREEDY_SECONDS = 90.0


def _without(keep: torch.Tensor, drop: list[torch.Tensor]) -> torch.Tensor:
    """(C, N) gate sets: `keep` minus each entry of `drop` (each a tensor of node indices)."""
    sets = keep.float().repeat(len(drop), 1)
    for i, d in enumerate(drop):
        sets[i, d] = 0.0
    return sets


def _longest_removable_prefix(keep: torch.Tensor, harmless: torch.Tensor, judge, target: float) -> int:
    """The largest j such that removing harmless[:j] together keeps `judge` at target (bisection,
    taking the judge as monotone in j)."""
    removed = {0: True}

    def ok(j: int) -> bool:
        if j not in removed:
            removed[j] = bool(judge(_without(keep, [harmless[:j]]))[0] <= target)
        return removed[j]
    lo, hi = 0, len(harmless)
    if hi and not ok(hi):
        while hi - lo > 1:  # invariant: ok(lo), not ok(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        hi = lo
    return hi


def greedy_remove(ev: Evaluator, screen: TaskBatch, judge, keep: torch.Tensor, target: float,
                  deadline: float = math.inf, rounds: int | None = None, estimated_rounds: int = 1,
                  max_exact: int = 160, max_skips: int = 24) -> torch.Tensor:
    """The kept set after greedy removal: nodes go while the raw loss `judge(gate_sets)` (C,)
    stays <= target.

    Each round ranks the kept nodes by the loss of removing each alone on `screen`: the first
    `estimated_rounds` by the first-order estimate (one backward), the others exactly (each
    removal of the `max_exact` nodes the estimate ranks first, in a few batched forwards). It
    then finds by bisection the longest prefix of the harmless ones (those whose single removal
    keeps `screen` at target) that can go together, judged by `judge`, and removes it. The judge
    sees more than the screen (other batches, natural examples and their accuracy), so in an exact
    round the first harmless node may be one it needs: then the next `max_skips` are judged one by
    one (in one batched call) and those it lets go are tried together, where the pass used to
    end; until then it is the same pass, so it keeps a subset of what that pass kept. Stops when a
    round removes nothing, after `rounds` (None: no limit), or at `deadline` (perf_counter). An
    exact round removes at most `max_exact` nodes, so a large circuit (a mask that missed the target
    and was repaired) needs many: with 4 rounds a first pass took one such circuit from 1,882 nodes
    to 1,399, without a limit to 143."""
    keep = keep.clone()
    for r in itertools.count() if rounds is None else range(rounds):
        if time.perf_counter() > deadline:
            break
        kept = keep.nonzero().flatten()
        estimate = ev.loss(screen, keep.float()) + ev.removal_estimates(screen, keep)[kept]
        if r >= estimated_rounds:
            # exact removal losses for the most promising nodes only: a round's cost stays bounded
            # however large the circuit
            best = estimate.argsort()[:max_exact]
            kept, single = kept[best], ev.losses_many(screen, _without(keep, [i[None] for i in kept[best]]))
        else:
            single = estimate
        order = single.argsort()
        harmless = kept[order[single[order] <= target]][:int(keep.sum()) - 1]  # a circuit keeps at least one node
        hi = _longest_removable_prefix(keep, harmless, judge, target)
        if hi == 0 and r >= estimated_rounds and len(harmless) > 1 and max_skips:
            # judge the next candidates one by one (one batched call) and keep those it lets go
            rest = harmless[1:max_skips + 1]
            harmless = rest[judge(_without(keep, [i[None] for i in rest])).to(rest.device) <= target]
            hi = _longest_removable_prefix(keep, harmless, judge, target)
        if hi == 0 and r >= estimated_rounds:
            break
        keep[harmless[:hi]] = False
    return keep


def retrain_within(pruner: Pruner, run: PruneRun, keep: torch.Tensor, k_mult: float = 3.0) -> torch.Tensor:
    """A mask trained again on the circuit's nodes only (the rest stays ablated), with a stronger
    penalty, starting near the threshold so a short run can move nodes across it; returns the
    fewest of its top-ranked nodes meeting the target (Pruner.judge), or `keep` itself if none
    smaller does."""
    s = run.settings
    if s.refine_steps == 0:
        return keep
    gen = torch.Generator().manual_seed(s.seed + 7919)
    mask = pruner._make_mask(replace(s, init_bias=0.02), gen, allowed=keep)
    pruner.train_mask(mask, s, s.refine_steps, s.k_coef * k_mult, gen)
    scores = mask.scores().cpu()
    n_keep = int(keep.sum())
    loss = lambda k: pruner.loss_at(scores, k)  # noqa: E731
    hi = min(n_keep, int((scores > 0).sum()))
    if hi == 0 or loss(hi) > s.search_target:
        return keep
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if loss(mid) <= s.search_target:
            hi = mid
        else:
            lo = mid
    return top_k_gates(scores, hi).bool()


def refine(pruner: Pruner, run: PruneRun, deadline: float = math.inf) -> PruneRun:
    """`run` after greedy removal, retraining inside the circuit and a second greedy removal, each
    judged on the raw held-out loss (Pruner.judge: a node only goes when both held-out batches stay
    at target); the run itself if it did not meet the target."""
    s = run.settings
    if run.loss > s.search_target:
        return run
    t0 = time.perf_counter()
    target, device = s.search_target, pruner.device
    stages = list(run.stages)
    keep = run.keep.to(device)
    # the first greedy pass gets 90 s whatever the deadline (it is where most of the refinement's
    # gain is); the retraining and the second pass only run in the time left
    keep = greedy_remove(pruner.eval, pruner.screen, pruner.judge, keep, target,
                         deadline=max(deadline, time.perf_counter() + MIN_GREEDY_SECONDS))
    stages.append({"stage": "greedy", "nodes": int(keep.sum()), "loss": float(pruner.judge(keep.float()[None]))})
    if time.perf_counter() < deadline:
        retrained = retrain_within(pruner, run, keep.cpu()).to(device)
        if retrained.sum() < keep.sum():
            keep = retrained
        stages.append({"stage": "retrained", "nodes": int(keep.sum()),
                       "loss": float(pruner.judge(keep.float()[None]))})
        keep = greedy_remove(pruner.eval, pruner.screen, pruner.judge, keep, target, deadline=deadline)
        stages.append({"stage": "greedy 2", "nodes": int(keep.sum()),
                       "loss": float(pruner.judge(keep.float()[None]))})
    keep = keep.cpu()
    # the circuit's nodes rank first (by their old score), so curves over the ranking start with it
    scores = torch.where(keep, run.scores - run.scores.min() + 1.0, run.scores - run.scores.max() - 1.0)
    return replace(run, keep=keep, scores=scores, loss=float(pruner.judge(keep.float()[None])),
                   calibration=pruner.calibration_of(keep), seconds=run.seconds + time.perf_counter() - t0,
                   stages=stages)
