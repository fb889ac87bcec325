"""The faithfulness curve over a node ranking, as the MIB circuit benchmark defines it.

For the top k% of nodes by the pruner's ranking (k = 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100), the
normalised faithfulness is f(k) = (L_empty - L_k) / (L_empty - L_full), where L_k is the raw task
loss with only those nodes kept (the rest ablated as the circuit was pruned), L_empty with none
kept and L_full the unablated model's. 1 means the nodes do what the model does, 0 what nothing
does. CPR is the area under f and CMD the area between f and 1 (|1 - f|), both by the trapezoid
rule over the fraction of nodes kept: a good circuit ranking has CPR near 1 and CMD near 0. The
circuit itself is one more point: f at its own size (for a weight-level circuit, with only its
weights; the curve's points keep every weight between the nodes they keep).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..prune.objective import Evaluator
from ..tasks.base import TaskBatch

FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class FaithfulnessCurve:
    fractions: list[float]
    nodes: list[int]             # nodes kept at each fraction (at least 1)
    losses: list[float]          # raw task loss at each fraction
    faithfulness: list[float]
    loss_full: float
    loss_empty: float
    cpr: float                   # area under the curve
    cmd: float                   # area between the curve and 1
    circuit_nodes: int
    circuit_faithfulness: float

    def to_dict(self) -> dict:
        return asdict(self)


def _area(x: list[float], y: list[float]) -> float:
    return sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)) / (x[-1] - x[0])


def faithfulness_curve(ev: Evaluator, batch: TaskBatch, scores: torch.Tensor, circuit_nodes: int,
                       fractions=FRACTIONS, circuit_loss: float | None = None) -> FaithfulnessCurve:
    """The curve for the ranking `scores` (higher = kept first), every point in batched forwards.
    `circuit_loss`: the circuit's own raw loss on `batch`, when it is not its top nodes with every
    weight between them (a weight-level circuit)."""
    n = len(scores)
    order = scores.argsort(descending=True, stable=True)
    sizes = [max(1, round(f * n)) for f in fractions] + [circuit_nodes, 0]
    sets = torch.zeros(len(sizes), n, device=batch.tokens.device)
    for i, k in enumerate(sizes):
        sets[i, order[:k].to(sets.device)] = 1.0
    losses = ev.losses_many(batch, sets).tolist()
    loss_full = ev.loss(batch, None)
    loss_empty = losses[-1]
    span = loss_empty - loss_full
    norm = lambda v: (loss_empty - v) / span if span != 0 else float("nan")  # noqa: E731
    faith = [norm(v) for v in losses[:len(fractions)]]
    fr = list(fractions)
    return FaithfulnessCurve(fractions=fr, nodes=sizes[:len(fractions)], losses=losses[:len(fractions)],
                             faithfulness=faith, loss_full=loss_full, loss_empty=loss_empty,
                             cpr=_area(fr, faith), cmd=_area(fr, [abs(1 - f) for f in faith]),
                             circuit_nodes=circuit_nodes,
                             circuit_faithfulness=norm(losses[len(fractions)] if circuit_loss is None else circuit_loss))
