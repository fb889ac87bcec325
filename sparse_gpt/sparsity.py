"""Weight sparsity as in the paper: top-k after every step, annealing, the sharkfin LR.

One optimiser step, in order: normalise the gradients to global RMS 1, Adam (dense moments, so a
zeroed weight can come back), keep the top-k magnitudes of every sparse tensor (protecting each
neuron's top `neuron_floor` weights), then decoupled weight decay on the survivors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .config import ConfigError, SparsityConfig, TrainConfig
from .topk import METHODS as TOPK_RULE_METHODS, keep_mask

# Which weights are sparse, at which density, and along which axis a unit (neuron, q/k/v channel)
# lies: c_attn and c_fc own a unit per output row, the c_proj's per input column.
_MATRIX_UNIT_DIM = {"attn.c_attn.weight": 0, "mlp.c_fc.weight": 0,
                    "attn.c_proj.weight": 1, "mlp.c_proj.weight": 1}
_EMBEDDINGS = ("transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight")
_BIASES = ("attn.c_attn.bias", "attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias")


@dataclass
class SparseTensor:
    name: str
    param: nn.Parameter
    density: float            # target share of entries kept at the end of annealing
    unit_dim: int | None      # axis indexing units that get the neuron floor; None: no floor
    floor: int

    @property
    def numel(self) -> int:
        return self.param.numel()

    def k_at(self, density_scale: float) -> int:
        """Entries kept when the schedule has moved density_scale of the way from dense to target."""
        density = 1.0 - density_scale * (1.0 - self.density)
        return max(self.min_k, min(self.numel, round(density * self.numel)))

    @property
    def min_k(self) -> int:
        if self.unit_dim is None:
            return 1
        return self.param.shape[self.unit_dim] * min(self.floor, self.param.shape[1 - self.unit_dim])


def sparse_tensors(model: nn.Module, cfg: SparsityConfig) -> list[SparseTensor]:
    """The model's sparse tensors with their targets; raises ConfigError if a target is impossible."""
    out = []
    for name, p in model.named_parameters():
        suffix = name.split(".", 3)[-1] if name.startswith("transformer.h.") else name
        if suffix in _MATRIX_UNIT_DIM:
            spec = SparseTensor(name, p, cfg.matrix_density, _MATRIX_UNIT_DIM[suffix], cfg.neuron_floor)
        elif name in _EMBEDDINGS:
            spec = SparseTensor(name, p, cfg.embed_density, None, 0)
        elif suffix in _BIASES and cfg.sparsify_biases:
            spec = SparseTensor(name, p, cfg.embed_density, None, 0)
        else:
            continue  # norm gains, sink logits, the bigram table stay dense
        target = round(spec.density * spec.numel)
        if target < spec.min_k:
            raise ConfigError(_too_sparse_message(spec, target, cfg))
        out.append(spec)
    return out


def _too_sparse_message(spec: SparseTensor, target: int, cfg: SparsityConfig) -> str:
    """Why a density keeps too few entries of one tensor, naming the setting that applies to it."""
    least = f"{spec.min_k / spec.numel:.4g}"
    if spec.unit_dim is not None:
        units = spec.param.shape[spec.unit_dim]
        return (f"sparsity.matrix_density={cfg.matrix_density:g} keeps {target} of {spec.numel} weights in "
                f"{spec.name}, but the neuron floor needs {spec.min_k} ({units} units x {cfg.neuron_floor}); "
                f"raise the density to at least {least} or lower sparsity.neuron_floor")
    # Embeddings and biases have no floor, but a tensor with no weight left would be dead.
    what = "a bias, sparse because sparsity.sparsify_biases is on" if spec.name.endswith(".bias") \
        else "an embedding"
    fix = " or set sparsity.sparsify_biases=false" if spec.name.endswith(".bias") else ""
    return (f"sparsity.embed_density={cfg.embed_density:g} keeps {target} of {spec.numel} weights in "
            f"{spec.name} ({what}), and every sparse tensor must keep at least one; raise "
            f"sparsity.embed_density to at least {least}{fix}")


@torch.no_grad()
def keep_topk_reference_(w: torch.Tensor, k: int, floor: int = 0, unit_dim: int | None = None) -> None:
    """The reference (torch.topk) weight top-k: zero all but exactly k entries of w in place, each
    unit's top `floor` first, then the largest |w|. The fast path must keep the same set (ties aside)."""
    if k >= w.numel():
        return
    score = w.abs()
    if floor and unit_dim is not None:
        reduce_dim = 1 - unit_dim
        top = score.topk(min(floor, w.shape[reduce_dim]), dim=reduce_dim).indices
        score.scatter_(reduce_dim, top, float("inf"))
    keep = score.view(-1).topk(k, sorted=False).indices
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    mask[keep] = True
    w.masked_fill_(~mask.view_as(w), 0.0)


TOPK_METHODS = ("reference",) + tuple(m for m in TOPK_RULE_METHODS)


def _scores(ws: list[torch.Tensor], floor: int, unit_dim: int | None, method: str = "topk") -> torch.Tensor:
    """(G, numel) magnitudes of same-shape tensors, each unit's top `floor` raised to +inf."""
    score = torch.stack([w.detach() for w in ws]).abs_()  # one copy for the group
    if floor and unit_dim is not None:
        reduce_dim = 2 - unit_dim  # dims of the stacked (G, rows, cols) tensor
        f = min(floor, score.shape[reduce_dim])
        if not (method == "partition" and _protect_by_partition_(score, f, reduce_dim)):
            top = score.topk(f, dim=reduce_dim).indices
            score.scatter_(reduce_dim, top, float("inf"))
    return score.view(score.shape[0], -1)


def _protect_by_partition_(score: torch.Tensor, f: int, reduce_dim: int) -> bool:
    """Raise every unit's top f entries of score (G, rows, cols) to +inf using a per-unit threshold
    from numpy.partition (4x faster than topk + scatter on CPU). Returns False, leaving score as it
    was, if a unit has ties at its threshold (more than f entries would be protected)."""
    import numpy as np
    units = score if reduce_dim == 2 else score.transpose(1, 2)
    n = units.shape[2]
    part = np.partition(units.reshape(-1, n).numpy(), n - f, axis=1)[:, n - f]
    thr = torch.from_numpy(part).view(units.shape[0], units.shape[1], 1)
    protect = units >= thr
    if bool((protect.sum(2) > f).any()):
        return False
    units.masked_fill_(protect, float("inf"))
    return True


@torch.no_grad()
def keep_topk_group_(ws: list[torch.Tensor], k: int, floor: int = 0, unit_dim: int | None = None,
                     method: str = "auto") -> None:
    """keep_topk_ on several same-shape tensors with the same k: one selection call for the group
    (on the GPU, one kernel launch instead of one per matrix)."""
    if not ws or k >= ws[0].numel():
        return
    if method == "auto":
        method = "partition" if ws[0].device.type == "cpu" and ws[0].dtype in (torch.float32, torch.float64) else "topk"
    if method == "reference":
        for w in ws:
            keep_topk_reference_(w, k, floor, unit_dim)
        return
    if method not in TOPK_METHODS:
        raise ValueError(f"unknown top-k method {method!r}; one of {TOPK_METHODS}")
    if method == "partition" and ws[0].is_cuda:
        method = "topk"
    keep = keep_mask(_scores(ws, floor, unit_dim, method), k, method)
    for w, m in zip(ws, keep):
        if w.is_cuda:
            w.mul_(m.view_as(w))  # one kernel per tensor
        else:
            w.masked_fill_(~m.view_as(w), 0.0)


def keep_topk_(w: torch.Tensor, k: int, floor: int = 0, unit_dim: int | None = None, method: str = "auto") -> None:
    """Zero all but exactly k entries of w in place: each unit's top `floor`, then the largest |w|.

    The default is an exact threshold selection (sparse_gpt.topk: numpy.partition on CPU, torch.topk's
    values elsewhere); method="reference" is the plain torch.topk version the tests compare it with.
    Ties at the threshold are broken by index; a unit's floor among tied weights by torch.topk."""
    keep_topk_group_([w], k, floor, unit_dim, method)


def density_scale(progress: float, start: float, end: float) -> float:
    """0 while dense (before `start`), rising linearly to 1 (target density) at `end`."""
    if progress <= start:
        return 0.0
    if progress >= end:
        return 1.0
    return (progress - start) / (end - start)


def lr_multiplier(step: int, total: int, warmup_frac: float) -> float:
    """Linear warmup, then linear decay to zero at the end of training."""
    warmup = round(warmup_frac * total)
    if step < warmup:
        return (step + 1) / warmup
    return (total - step) / max(1, total - warmup)


class SparseAdam:
    """Adam + weight top-k + decoupled weight decay, in the paper's order; one object per run."""

    def __init__(self, model: nn.Module, sparsity: SparsityConfig, train: TrainConfig):
        self.model, self.sparsity, self.train = model, sparsity, train
        self.tensors = [] if sparsity.dense else sparse_tensors(model, sparsity)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Decay only matrices; the bigram table is a dense lookup the paper leaves undecayed.
        bigram = getattr(model, "bigram_table", None)
        self.decayed = [p for p in self.params if p.dim() >= 2 and p is not bigram]
        # On the GPU one fused kernel updates every parameter; CPU keeps the default (for-loop) Adam,
        # whose results earlier CPU runs reproduce bit for bit.
        fused = bool(self.params) and all(p.is_cuda for p in self.params)
        self.adam = torch.optim.Adam(self.params, lr=train.lr, betas=(train.beta1, train.beta2),
                                     eps=train.eps, weight_decay=0.0, fused=fused or None)
        self.l0_final = self.l0_at(1.0)
        # Same-shape tensors with the same target and floor share one selection call per step.
        self.topk_method = "auto"  # see keep_topk_; "reference" is the plain torch.topk path
        self.groups: dict[tuple, list[SparseTensor]] = {}
        for t in self.tensors:
            key = (tuple(t.param.shape), t.density, t.floor, t.unit_dim, t.param.dtype, t.param.device)
            self.groups.setdefault(key, []).append(t)

    def progress(self, step: int) -> float:
        return step / self.train.steps

    def l0_at(self, scale: float) -> int:
        """Nonzero sparse weights when annealing is `scale` of the way to the target (a dense
        baseline has no sparse tensors: then every trainable weight counts)."""
        if not self.tensors:
            return sum(p.numel() for p in self.params)
        return sum(t.k_at(scale) for t in self.tensors)

    def schedule(self, step: int) -> dict[str, float]:
        """LR and density in force during `step` (0-based)."""
        scale = density_scale(self.progress(step), self.sparsity.anneal_start, self.sparsity.anneal_end)
        lr = self.train.lr * lr_multiplier(step, self.train.steps, self.train.warmup_frac)
        if self.sparsity.lr_l0_scaling:  # 1 for a dense baseline
            # Without this factor annealing gives no benefit (the paper's finding).
            lr *= math.sqrt(self.l0_final / self.l0_at(scale))
        return {"lr": lr, "density_scale": scale, "l0": self.l0_at(scale)}

    @torch.no_grad()
    def normalize_grads(self) -> torch.Tensor:
        """Divide the gradients by their global RMS (mode rms) or by max(RMS, 1) (mode clip); returns
        the RMS as a 0-d tensor. No host sync: dividing by 1 leaves a gradient unchanged bit for bit."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads[0].is_cuda:  # one fused kernel for all norms
            sq = torch.stack(torch._foreach_norm(grads)).float().pow(2).sum()
        else:  # the sum of squares CPU runs have always used (their results stay bit-identical)
            sq = torch.stack([g.float().pow(2).sum() for g in grads]).sum()
        rms = (sq / sum(g.numel() for g in grads)).sqrt()
        mode = self.train.grad_norm
        if mode == "rms":
            torch._foreach_div_(grads, rms.clamp_min(1e-12))
        elif mode == "clip":
            torch._foreach_div_(grads, rms.clamp_min(1.0))
        return rms

    @torch.no_grad()
    def step(self, step: int) -> dict[str, float]:
        sched = self.schedule(step)
        for group in self.adam.param_groups:
            group["lr"] = sched["lr"]
        grad_rms = self.normalize_grads()
        self.adam.step()
        # The density reached after this step is the one the next step trains under.
        next_scale = density_scale(self.progress(step + 1), self.sparsity.anneal_start, self.sparsity.anneal_end)
        if next_scale > 0:
            for group in self.groups.values():
                t = group[0]
                keep_topk_group_([g.param for g in group], t.k_at(next_scale), t.floor, t.unit_dim,
                                 self.topk_method)
        if self.train.weight_decay:
            torch._foreach_mul_(self.decayed, 1.0 - sched["lr"] * self.train.weight_decay)
        # read last, once every kernel of the step is queued
        return {"lr": sched["lr"], "grad_rms": grad_rms.item(), "density_scale": next_scale}

    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.adam.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state)

    def nonzero_report(self) -> list[dict]:
        """Per sparse tensor: nonzeros now vs the final target (for logs and the closing check)."""
        return [{"name": t.name, "numel": t.numel, "nonzero": int(t.param.count_nonzero()),
                 "target": t.k_at(1.0)} for t in self.tensors]
