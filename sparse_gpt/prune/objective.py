"""What the pruner optimises and measures: the task loss of a gated model, and its calibration.

The loss itself is the tasks' two-way cross-entropy (sparse_gpt.tasks.base.two_way_loss); this
module runs the model under node gates to get it, evaluates fixed batches without gradients
(`Evaluator`), and fits the scale and bias of the logit difference (`calibrate`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..nodes import NodeLayout
from ..tasks.base import TaskBatch, oriented_logit_diff, scored_logits, two_way_accuracy, two_way_loss
from .masks import gated, record_norm_scales


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


def answer_logits(model, batch: TaskBatch, frozen_norms: bool = False) -> torch.Tensor:
    """(N, V) logits at each prompt's scored position, in one forward pass over a trimmed batch.

    The unembedding runs at the scored positions only, except under frozen norms (whose recorded
    scales cover every position)."""
    if frozen_norms:
        logits = model(batch.tokens)
        return logits[torch.arange(len(batch), device=logits.device), batch.positions]
    return model(batch.tokens, positions=batch.positions)


def gated_answer_logits(model, layout: NodeLayout, batch: TaskBatch, gates: torch.Tensor,
                        ablate_to: torch.Tensor, freeze_norms: bool) -> torch.Tensor:
    """answer_logits of a trimmed batch with node gates applied (differentiable in the gates)."""
    scales = record_norm_scales(model, batch.tokens) if freeze_norms else None
    with gated(model, layout, gates, ablate_to, scales):
        return answer_logits(model, batch, frozen_norms=freeze_norms)


class Evaluator:
    """Loss / accuracy of the model under a gate vector, on fixed batches (no gradients).

    `ablate_to` is what a gated-off node carries (sparse_gpt.nodes.ablation_values). Prompts run in
    chunks of similar length (tasks.base.scored_logits)."""

    def __init__(self, model, layout: NodeLayout, ablate_to: torch.Tensor, freeze_norms: bool = False,
                 chunk: int = 64):
        self.model, self.layout, self.ablate_to, self.freeze_norms = model, layout, ablate_to, freeze_norms
        self.chunk = chunk

    @torch.no_grad()
    def logits(self, batch: TaskBatch, gates: torch.Tensor | None) -> torch.Tensor:
        forward = None
        if gates is not None:
            forward = lambda part: gated_answer_logits(self.model, self.layout, part, gates,  # noqa: E731
                                                       self.ablate_to, self.freeze_norms)
        return scored_logits(self.model, batch, self.chunk, forward)

    def loss(self, batch: TaskBatch, gates: torch.Tensor | None, calibration: Calibration = IDENTITY) -> float:
        return self.metrics(batch, gates, calibration).loss

    def metrics(self, batch: TaskBatch, gates: torch.Tensor | None, calibration: Calibration = IDENTITY) -> Score:
        z, y = oriented_logit_diff(self.logits(batch, gates), batch)
        cal = (calibration.scale, calibration.bias)
        return Score(two_way_loss(z, y, *cal).item(), two_way_accuracy(z, y, *cal).item(), len(batch))
