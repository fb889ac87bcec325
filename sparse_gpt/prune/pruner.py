"""The pruning optimiser: learn node masks, discretise by bisection, calibrate.

One run: train a mask (task loss + k_coef x active nodes) on templated prompt pairs, rank nodes by
their mask parameter, find the fewest top-ranked nodes whose task loss on fixed held-out batches
meets the target, then fit a scale and bias of the two-way logit difference. `search` repeats runs
with adapted k_coef / lr / seed and keeps the smallest circuit that meets the target.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
from tqdm import tqdm

from ..nodes import ABLATIONS, NodeLayout, ablation_values
from ..tasks.base import BinaryTask, TaskBatch, encode_examples, encode_pairs, oriented_logit_diff, two_way_loss
from .masks import HardConcreteMask, HeavisideMask
from .objective import Calibration, Evaluator, Score, calibrate, gated_answer_logits


class TargetUnreachableError(ValueError):
    """The full model itself does not meet the target task loss."""

    def __init__(self, message: str, full: Score):
        super().__init__(message)
        self.full = full  # the full model's score on the held-out pairs


@dataclass
class PruneConfig:
    target_loss: float = 0.15
    ablation: str = "mean"          # mean | zero
    mask: str = "heaviside"         # heaviside (the paper) | hard_concrete (Lagrangian target size)
    target_size: int = 64           # hard_concrete only: nodes the Lagrangian drives towards
    tie_qk: bool = False
    freeze_norms: bool = False
    steps: int = 300
    batch_pairs: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-3
    beta2: float = 0.95
    grad_clip: float = 1.0
    k_coef: float = 1e-3
    init_bias: float = 0.1
    init_noise: float = 1e-2
    temperature: float = 1.0
    natural_frac: float = 0.0       # share of each batch taken from natural examples (if the task has them)
    pool_pairs: int = 512           # templated pairs the masks train on
    eval_pairs: int = 128           # fixed held-out pairs for the bisection and calibration
    search_runs: int = 3            # mask runs in the built-in search
    seed: int = 0

    def validate(self) -> "PruneConfig":
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {self.ablation!r}")
        if self.mask not in ("heaviside", "hard_concrete"):
            raise ValueError(f"mask must be 'heaviside' or 'hard_concrete', got {self.mask!r}")
        if not 0 < self.target_loss:
            raise ValueError(f"target loss must be positive, got {self.target_loss}")
        if not 0 <= self.natural_frac < 1:
            raise ValueError(f"natural_frac must be in [0, 1), got {self.natural_frac}")
        return self


@dataclass
class PruneRun:
    settings: PruneConfig           # the configuration with this run's k_coef, lr and seed
    scores: torch.Tensor            # (N,) mask ranking
    keep: torch.Tensor              # (N,) bool: the discretised circuit
    n_positive: int                 # nodes with a positive mask parameter after training
    loss_positive: float            # held-out loss keeping exactly those
    curve: list[tuple[int, float]]  # (k, held-out loss) points the bisection evaluated
    loss: float                     # held-out loss of the circuit before calibration
    calibration: Calibration
    seconds: float
    history: list[dict] = field(default_factory=list)

    @property
    def n_nodes(self) -> int:
        return int(self.keep.sum())

    @property
    def converged(self) -> bool:
        """The trained mask itself solved the task (so the ranking, not the bisection, chose the size)."""
        return self.loss_positive <= self.settings.target_loss

    def summary(self) -> dict:
        return {"k_coef": self.settings.k_coef, "lr": self.settings.lr, "seed": self.settings.seed,
                "nodes": self.n_nodes, "n_positive": self.n_positive, "loss_positive": self.loss_positive,
                "loss": self.loss, "calibrated_loss": self.calibration.loss, "converged": self.converged,
                "seconds": round(self.seconds, 1)}


def top_k_gates(scores: torch.Tensor, k: int) -> torch.Tensor:
    gates = torch.zeros_like(scores)
    gates[scores.argsort(descending=True, stable=True)[:k]] = 1.0
    return gates


class Pruner:
    """Prunes one model for one task. Build once (batches, means), then `search()` or `run()`.

    `means` are the nodes' means over pretraining text; the configured ablation decides what a
    pruned node carries. The model is only read: its parameters come back as they were given."""

    def __init__(self, model, layout: NodeLayout, means: torch.Tensor, task: BinaryTask, tokenizer,
                 cfg: PruneConfig, natural_texts=None, device: str = "cpu", require_full: bool = True):
        self.model, self.layout, self.task, self.cfg = model, layout, task, cfg.validate()
        self.device = device
        self.ablate_to = ablation_values(cfg.ablation, means.to(device))
        block = model.config.block_size
        enc = lambda pairs: encode_pairs(task, pairs, tokenizer, block).to(device)  # noqa: E731
        self.pool = enc(task.pairs(cfg.pool_pairs, seed=cfg.seed, split="prune"))
        self.heldout = enc(task.pairs(cfg.eval_pairs, seed=cfg.seed + 1, split="prune"))
        self.natural = None
        if cfg.natural_frac > 0:
            examples = task.natural_examples(natural_texts or [], n=cfg.pool_pairs, seed=cfg.seed, tokenizer=tokenizer)
            if not examples:
                raise ValueError(f"--natural-frac {cfg.natural_frac}: task {task.name} has no natural examples")
            self.natural = encode_examples(task, examples, tokenizer, block).to(device)
        self.eval = Evaluator(model, layout, self.ablate_to, cfg.freeze_norms)
        full = self.eval.metrics(self.heldout, None)
        self.full_loss = full.loss
        # Controls (nonsense tasks) skip this check: the pruner may build a mechanism the model lacks.
        if require_full and self.full_loss > cfg.target_loss:
            raise TargetUnreachableError(
                f"the full model's loss on {task.name} is {self.full_loss:.4f}, above the target "
                f"{cfg.target_loss}; no circuit can meet it (train longer, or pass a higher --target-loss)", full)

    # -- one mask-training run --

    def _sample(self, gen: torch.Generator) -> TaskBatch:
        n_nat = round(self.cfg.batch_pairs * 2 * self.cfg.natural_frac) if self.natural is not None else 0
        n_pairs = self.cfg.batch_pairs - n_nat // 2
        pair_idx = torch.randint(0, len(self.pool) // 2, (n_pairs,), generator=gen)
        rows = torch.stack([2 * pair_idx, 2 * pair_idx + 1], 1).flatten().to(self.device)
        batch = self.pool.select(rows)
        if n_nat:
            nat_rows = torch.randint(0, len(self.natural), (n_nat,), generator=gen).to(self.device)
            batch = _concat(batch, self.natural.select(nat_rows))
        return batch

    def _make_mask(self, gen: torch.Generator):
        c = self.cfg
        if c.mask == "hard_concrete":
            return HardConcreteMask(self.layout, c.target_size, init_noise=c.init_noise, tie_qk=c.tie_qk,
                                    generator=gen).to(self.device)
        return HeavisideMask(self.layout, c.init_bias, c.init_noise, c.temperature, c.tie_qk,
                             generator=gen).to(self.device)

    def _step(self, mask, opt, batch: TaskBatch, k_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on the mask; returns the task loss and the gates it was taken at."""
        gates = mask.gates()
        part = batch.trimmed()
        logits = gated_answer_logits(self.model, self.layout, part, gates, self.ablate_to, self.cfg.freeze_norms)
        task_loss = two_way_loss(*oriented_logit_diff(logits, part))
        loss = task_loss + k_coef * mask.penalty()
        for extra in mask.extra_losses().values():
            loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if isinstance(mask, HardConcreteMask):
            mask.flip_multiplier_grads_()
        torch.nn.utils.clip_grad_norm_(mask.parameters(), self.cfg.grad_clip)
        opt.step()
        return task_loss, gates

    def run(self, k_coef: float | None = None, lr: float | None = None, seed: int | None = None,
            progress: bool = True, desc: str = "masks") -> PruneRun:
        c = self.cfg
        settings = replace(c, k_coef=c.k_coef if k_coef is None else k_coef, lr=c.lr if lr is None else lr,
                           seed=c.seed if seed is None else seed)
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(settings.seed)
        mask = self._make_mask(gen)
        opt = torch.optim.AdamW(mask.parameters(), lr=settings.lr, betas=(0.9, c.beta2), weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / c.steps)
        history = []
        bar = tqdm(range(c.steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
        with _frozen_parameters(self.model):  # gradients flow to the mask only
            for step in bar:
                if isinstance(mask, HardConcreteMask):
                    mask.set_progress(step / c.steps)
                task_loss, gates = self._step(mask, opt, self._sample(gen), settings.k_coef)
                sched.step()
                mask.clamp_()
                if step % 20 == 0 or step == c.steps - 1:
                    active = int((gates.detach() > 0.5).sum())
                    history.append({"step": step, "task_loss": task_loss.item(), "active": active})
                    bar.set_postfix(loss=f"{task_loss.item():.3f}", active=active, refresh=False)
        bar.close()
        mask.eval()
        return self.discretise(mask.scores().cpu(), settings, time.perf_counter() - t0, history)

    # -- discretisation --

    def loss_at(self, scores: torch.Tensor, k: int) -> float:
        return self.eval.loss(self.heldout, top_k_gates(scores, k).to(self.device))

    def discretise(self, scores: torch.Tensor, settings: PruneConfig, seconds: float, history: list) -> PruneRun:
        """Fewest top-ranked nodes meeting the target on the held-out batch.

        The loss is not monotone in k, so plain bisection over [0, N] can land
        far too high. Scan a geometric grid up to the nodes the mask kept (tau > 0), then bisect
        inside the first bracket that crosses the target; extend up to N only if that fails."""
        target, N = self.cfg.target_loss, self.layout.n_nodes
        n_pos = int((scores > 0).sum())
        curve: dict[int, float] = {}

        def f(k: int) -> float:
            if k not in curve:
                curve[k] = self.loss_at(scores, k)
            return curve[k]

        loss_pos = f(n_pos) if n_pos else math.inf
        grid = sorted({max(1, n_pos >> i) for i in range(0, 16)}) if n_pos else []
        if loss_pos > target:  # the mask alone fails: look further down the ranking
            grid = sorted(set(grid) | {min(N, max(n_pos, 1) * 2 ** i) for i in range(1, 20)} | {N})
        hi = next((k for k in grid if f(k) <= target), N)
        lower = [k for k in grid if k < hi]
        lo = lower[-1] if lower else 0
        while hi - lo > 1:  # invariant: f(hi) <= target < f(lo) (locally)
            mid = (lo + hi) // 2
            if f(mid) <= target:
                hi = mid
            else:
                lo = mid
        keep = top_k_gates(scores, hi).bool()
        loss = f(hi)
        z, y = oriented_logit_diff(self.eval.logits(self.heldout, keep.float().to(self.device)), self.heldout)
        return PruneRun(settings=settings, scores=scores, keep=keep, n_positive=n_pos, loss_positive=loss_pos,
                        curve=sorted(curve.items()), loss=loss, calibration=calibrate(z.cpu(), y.cpu()),
                        seconds=seconds, history=history)

    # -- the built-in search --

    def search(self, progress: bool = True) -> tuple[PruneRun, list[PruneRun]]:
        """Adapt k_coef between runs: up after a run whose mask met the target (try smaller), down
        after one that collapsed; keep the smallest circuit. Learning rate and seed vary per run."""
        k_coef, runs = self.cfg.k_coef, []
        for i in range(self.cfg.search_runs):
            lr = self.cfg.lr * (1.0 if i % 2 == 0 else 0.5)
            run = self.run(k_coef=k_coef, lr=lr, seed=self.cfg.seed + i, progress=progress,
                           desc=f"{self.task.name} run {i + 1}/{self.cfg.search_runs}")
            runs.append(run)
            k_coef = k_coef * 3 if run.converged else k_coef / 3
        best = min(runs, key=lambda r: (r.n_nodes, r.loss))
        return best, runs


@contextmanager
def _frozen_parameters(model) -> Iterator[None]:
    """Switch off requires_grad on every parameter, and restore each one's flag afterwards."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _concat(a: TaskBatch, b: TaskBatch) -> TaskBatch:
    T = max(a.tokens.shape[1], b.tokens.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, T - t.shape[1]))  # causal: pads never reach a scored position
    return TaskBatch(tokens=torch.cat([pad(a.tokens), pad(b.tokens)]),
                     lengths=torch.cat([a.lengths, b.lengths]), positions=torch.cat([a.positions, b.positions]),
                     correct=torch.cat([a.correct, b.correct]), alternative=torch.cat([a.alternative, b.alternative]),
                     pair_ids=torch.cat([a.pair_ids, torch.full_like(b.pair_ids, -1)]))
