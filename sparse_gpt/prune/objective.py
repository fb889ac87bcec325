"""What the pruner optimises and measures: the task loss of a gated model, and its calibration.

The loss itself is the tasks' two-way cross-entropy (sparse_gpt.tasks.base.two_way_loss); this
module runs the model under node gates to get it, evaluates fixed batches without gradients
(`Evaluator`), and fits the scale and bias of the logit difference (`calibrate`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..nodes import EdgeSet, NodeLayout
from ..tasks.base import (TaskBatch, length_chunks, oriented_logit_diff, scored_logits, two_way_accuracy,
                          two_way_loss)
from .masks import gated, record_norm_scales

# A circuit's accuracy on natural examples should stay within this of the full model's (a validation
# check; the pruner's natural judge holds node sets to it too).
NATURAL_ACCURACY_GAP = 0.05


@dataclass(frozen=True)
class Calibration:
    """Scale and bias of the oriented logit difference, and the task loss they give."""
    scale: float = 1.0
    bias: float = 0.0
    loss: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        return d if self.loss is not None else {"scale": self.scale, "bias": self.bias}


IDENTITY = Calibration()


@dataclass(frozen=True)
class Score:
    """Task loss and accuracy of a model (or circuit) on `n` prompts."""
    loss: float
    accuracy: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(z: torch.Tensor, y: torch.Tensor, steps: int = 16) -> Calibration:
    """Fit scale and bias of z by LBFGS; keeps (1, 0) if fitting does not lower the loss."""
    base = two_way_loss(z, y).item()
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    opt = torch.optim.LBFGS([params], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = two_way_loss(z, y, params[0], params[1])
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        fitted = two_way_loss(z, y, params[0], params[1]).item()
    if math.isfinite(fitted) and fitted < base:
        return Calibration(params[0].item(), params[1].item(), fitted)
    return Calibration(1.0, 0.0, base)


def losses_per_set(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(C,) two_way_loss of each row of z (C, rows) against the labels y (rows,)."""
    return F.binary_cross_entropy_with_logits(z, y.expand_as(z), reduction="none").mean(1)


def held_out_calibration(fit: tuple[torch.Tensor, torch.Tensor],
                         judge: tuple[torch.Tensor, torch.Tensor]) -> Calibration:
    """A calibration fitted on one batch's (z, y) and judged on another's: kept only if it does not
    raise the judging batch's loss (a scale and bias fitted on one batch can make another worse).
    Its `loss` is the judging batch's loss with what is kept."""
    cal = calibrate(*fit)
    raw = two_way_loss(*judge).item()
    held = two_way_loss(*judge, cal.scale, cal.bias).item()
    if math.isfinite(held) and held <= raw:
        return Calibration(cal.scale, cal.bias, held)
    return Calibration(1.0, 0.0, raw)


def answer_logits(model, batch: TaskBatch, frozen_norms: bool = False) -> torch.Tensor:
    """(N, V) logits at each prompt's scored position, in one forward pass over a trimmed batch.

    The unembedding runs at the scored positions only, except under frozen norms (whose recorded
    scales cover every position)."""
    if frozen_norms:
        logits = model(batch.tokens)
        return logits[torch.arange(len(batch), device=logits.device), batch.positions]
    return model(batch.tokens, positions=batch.positions)


def gated_answer_logits(model, layout: NodeLayout, batch: TaskBatch, gates: torch.Tensor,
                        ablate_to: torch.Tensor, freeze_norms: bool, edges: EdgeSet | None = None,
                        edge_gates: torch.Tensor | None = None) -> torch.Tensor:
    """answer_logits of a trimmed batch with node gates (and, with `edges`, edge gates) applied;
    differentiable in both."""
    scales = record_norm_scales(model, batch.tokens) if freeze_norms else None
    with gated(model, layout, gates, ablate_to, scales, edges, edge_gates):
        return answer_logits(model, batch, frozen_norms=freeze_norms)


class Evaluator:
    """Loss / accuracy of the model under a gate vector, on fixed batches (no gradients).

    `ablate_to` is what a gated-off node carries (sparse_gpt.nodes.ablation_values). Prompts run in
    chunks of similar length (tasks.base.scored_logits). With `edges` and `edge_gates`, a fixed edge
    mask applies on top of every node gate vector (an edge-level circuit: only meaningful for node
    sets inside the nodes `edges` was built on, where an ablated node's edges carry nothing)."""

    def __init__(self, model, layout: NodeLayout, ablate_to: torch.Tensor, freeze_norms: bool = False,
                 chunk: int = 64, edges: EdgeSet | None = None, edge_gates: torch.Tensor | None = None):
        self.model, self.layout, self.ablate_to, self.freeze_norms = model, layout, ablate_to, freeze_norms
        self.chunk = chunk
        self.edges, self.edge_gates = edges, edge_gates

    def _gated_logits(self, part: TaskBatch, gates: torch.Tensor) -> torch.Tensor:
        """answer_logits of a trimmed batch under `gates` (this evaluator's kind of gate vector)."""
        return gated_answer_logits(self.model, self.layout, part, gates, self.ablate_to, self.freeze_norms,
                                   self.edges, self.edge_gates)

    @torch.no_grad()
    def logits(self, batch: TaskBatch, gates: torch.Tensor | None) -> torch.Tensor:
        forward = None
        if gates is not None:
            forward = lambda part: self._gated_logits(part, gates)  # noqa: E731
        return scored_logits(self.model, batch, self.chunk, forward)

    def loss(self, batch: TaskBatch, gates: torch.Tensor | None, calibration: Calibration = IDENTITY) -> float:
        return self.metrics(batch, gates, calibration).loss

    def metrics(self, batch: TaskBatch, gates: torch.Tensor | None, calibration: Calibration = IDENTITY) -> Score:
        z, y = oriented_logit_diff(self.logits(batch, gates), batch)
        cal = (calibration.scale, calibration.bias)
        return Score(two_way_loss(z, y, *cal).item(), two_way_accuracy(z, y, *cal).item(), len(batch))

    @torch.no_grad()
    def losses_many(self, batch: TaskBatch, gate_sets: torch.Tensor, max_rows: int = 512) -> torch.Tensor:
        """(C,) raw task loss of C node sets (gate_sets: (C, N)) on `batch`, several node sets per
        forward: the batch is repeated once per set and each row gets its set's gates, so trying
        many removals costs a few large forwards instead of one small forward each."""
        return losses_per_set(*self.logit_diffs_many(batch, gate_sets, max_rows))

    @torch.no_grad()
    def logit_diffs_many(self, batch: TaskBatch, gate_sets: torch.Tensor, max_rows: int = 512
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, rows) oriented logit differences of C node sets on `batch` (as losses_many runs
        them), and the (rows,) orientation labels."""
        C = len(gate_sets)
        z_all = torch.zeros(C, len(batch), device=gate_sets.device)
        y_all = torch.zeros(len(batch), device=gate_sets.device)
        for rows, part in length_chunks(batch, max(1, max_rows // max(1, C))):
            n = len(part)
            step = max(1, max_rows // n)  # node sets per forward
            rows = rows.to(z_all.device)
            for c0 in range(0, C, step):
                sets = gate_sets[c0:c0 + step]
                k = len(sets)
                rep = part.select(torch.arange(n, device=part.tokens.device).repeat(k))
                gates = sets.repeat_interleave(n, 0)[:, None, :]
                z, y = oriented_logit_diff(self._gated_logits(rep, gates), rep)
                z_all[c0:c0 + k, rows] = z.view(k, n).to(z_all.dtype)
                y_all[rows] = y[:n].to(y_all.dtype)
        return z_all, y_all

    def removal_estimates(self, batch: TaskBatch, keep: torch.Tensor) -> torch.Tensor:
        """(N,) first-order estimate of the raw loss change when each kept node is removed: minus
        the gradient of the loss with respect to the node's gate (one forward and backward)."""
        gates = keep.float().clone().requires_grad_(True)
        total = gates.new_zeros(())
        for rows, part in length_chunks(batch, self.chunk):
            logits = self._gated_logits(part, gates)
            total = total + two_way_loss(*oriented_logit_diff(logits, part)) * len(part)
        (grad,) = torch.autograd.grad(total / len(batch), gates)
        return -grad.detach()


class EdgeEvaluator(Evaluator):
    """An Evaluator whose gate vectors are edge masks over `edges`, with the node set fixed at
    `keep`: the same loss, losses_many and removal_estimates, one entry per weight."""

    def __init__(self, model, layout: NodeLayout, ablate_to: torch.Tensor, keep: torch.Tensor, edges: EdgeSet,
                 freeze_norms: bool = False, chunk: int = 64):
        super().__init__(model, layout, ablate_to, freeze_norms, chunk)
        self.node_gates, self.edge_set = keep.float(), edges

    def _gated_logits(self, part: TaskBatch, gates: torch.Tensor) -> torch.Tensor:
        return gated_answer_logits(self.model, self.layout, part, self.node_gates, self.ablate_to,
                                   self.freeze_norms, self.edge_set, gates)
