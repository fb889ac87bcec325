"""Node and edge masks and how they act on a model: gates, mean ablation, frozen norm scales.

A gate vector g (one entry per node, see sparse_gpt.nodes.NodeLayout) acts at every node location as
x * g + mean * (1 - g): a pruned node (g = 0) carries its mean activation over pretraining text.
An edge gate m (one entry per weight between kept nodes, see sparse_gpt.nodes.EdgeSet) acts inside
the weight's matrix: the target's pre-activation sums w * (m * x + (1 - m) * a) over its sources,
where a is what the source carries when ablated, so a pruned weight passes on a typical input.
"""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from ..nodes import EdgeSet, NodeLayout


class HeavisideSTE(torch.autograd.Function):
    """Forward: 1[tau > 0]. Backward: the derivative of sigmoid(tau / T)."""

    @staticmethod
    def forward(ctx, tau: torch.Tensor, temperature: float) -> torch.Tensor:
        ctx.save_for_backward(tau)
        ctx.temperature = temperature
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (tau,) = ctx.saved_tensors
        s = torch.sigmoid(tau / ctx.temperature)
        return grad * s * (1 - s) / ctx.temperature, None


def qk_source_index(layout: NodeLayout, tie_qk: bool) -> torch.Tensor:
    """(N,) index map applied to a gate vector: with tied q/k, each k node takes its q node's gate
    (a q channel is useless without the matching k channel; the paper notes they should be tied)."""
    src = torch.arange(layout.n_nodes)
    if tie_qk:
        for loc in layout.locations:
            if loc.kind == "attn_k":
                q = layout.by_name[loc.name.replace(".k", ".q")]
                src[loc.slice] = torch.arange(q.offset, q.offset + q.width)
    return src


class HeavisideMask(nn.Module):
    """One learnable tau per node (or per edge: `layout` may be a number of entries); gate = H(tau)
    with a sigmoid-derivative surrogate gradient."""

    def __init__(self, layout: NodeLayout | int, init_bias: float = 0.1, init_noise: float = 1e-2,
                 temperature: float = 1.0, tie_qk: bool = False, generator: torch.Generator | None = None,
                 allowed: torch.Tensor | None = None):
        super().__init__()
        n = layout if isinstance(layout, int) else layout.n_nodes
        tau = init_bias + init_noise * torch.randn(n, generator=generator)
        self.tau = nn.Parameter(tau)
        self.temperature = temperature
        source = torch.arange(n) if isinstance(layout, int) else qk_source_index(layout, tie_qk)
        self.register_buffer("source", source, persistent=False)
        # `allowed` restricts the mask to a node set (refinement retrains inside a circuit): the
        # others stay off whatever their tau, and rank below every allowed node
        self.register_buffer("allowed", None if allowed is None else allowed.float(), persistent=False)

    def gates(self) -> torch.Tensor:
        g = HeavisideSTE.apply(self.tau, self.temperature)[self.source]
        return g if self.allowed is None else g * self.allowed

    def penalty(self) -> torch.Tensor:
        """Differentiable number of active nodes."""
        return self.gates().sum()

    def scores(self) -> torch.Tensor:
        """Ranking used by the discretisation: higher = more important."""
        s = self.tau.detach()[self.source]
        return s if self.allowed is None else torch.where(self.allowed > 0, s, s - 10.0)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.tau.clamp_(-1.0, 1.0)

    def extra_losses(self) -> dict[str, torch.Tensor]:
        return {}


class HardConcreteMask(nn.Module):
    """Hard-concrete gates (Louizos et al.) with a Lagrangian that drives the expected number of
    active nodes to `target_size` (the Edge Pruning recipe); an option the paper did not use."""

    BETA, LOW, HIGH = 2 / 3, -0.1, 1.1

    def __init__(self, layout: NodeLayout, target_size: int, init_bias: float = 2.0, init_noise: float = 1e-2,
                 tie_qk: bool = False, generator: torch.Generator | None = None):
        super().__init__()
        self.log_alpha = nn.Parameter(init_bias + init_noise * torch.randn(layout.n_nodes, generator=generator))
        # Lagrange multipliers, trained by gradient ascent (see flip_multiplier_grads_).
        self.lambdas = nn.Parameter(torch.zeros(2))
        self.final_size, self.n_nodes = float(target_size), float(layout.n_nodes)
        self.target_size = self.n_nodes
        self.register_buffer("source", qk_source_index(layout, tie_qk), persistent=False)

    def set_progress(self, frac: float) -> None:
        """Lower the size target linearly from all nodes to the final size over the first half of
        training: a target imposed at once collapses every gate before the task can pick any."""
        ramp = min(1.0, frac / 0.5)
        self.target_size = self.n_nodes - ramp * (self.n_nodes - self.final_size)

    def gates(self) -> torch.Tensor:
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (1 - u).log() + self.log_alpha) / self.BETA)
        else:
            s = torch.sigmoid(self.log_alpha)
        return (s * (self.HIGH - self.LOW) + self.LOW).clamp(0, 1)[self.source]

    def expected_l0(self) -> torch.Tensor:
        p_open = torch.sigmoid(self.log_alpha - self.BETA * math.log(-self.LOW / self.HIGH))
        return p_open[self.source].sum()

    def penalty(self) -> torch.Tensor:
        return torch.zeros(())  # the size is controlled by the Lagrangian in extra_losses

    def extra_losses(self) -> dict[str, torch.Tensor]:
        gap = self.expected_l0() - self.target_size
        lagrangian = self.lambdas[0] * gap + self.lambdas[1] * gap * gap
        return {"lagrangian": lagrangian / self.n_nodes}

    def flip_multiplier_grads_(self) -> None:
        """The masks minimise the Lagrangian, the multipliers maximise it: ascend on lambdas."""
        if self.lambdas.grad is not None:
            self.lambdas.grad.neg_()

    def scores(self) -> torch.Tensor:
        return self.log_alpha.detach()[self.source]

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_alpha.clamp_(-10.0, 10.0)


def _mix(x: torch.Tensor, gate: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(mean, x - mean, gate)  # mean + (x - mean) * gate, one kernel fewer


@contextmanager
def gated(model, layout: NodeLayout, gates: torch.Tensor, means: torch.Tensor,
          norm_scales: dict[str, torch.Tensor] | None = None, edges: EdgeSet | None = None,
          edge_gates: torch.Tensor | None = None) -> Iterator[None]:
    """Run `model` with node gates (N,) applied at every node location; pruned nodes take `means`.
    Gates of shape (B, 1, N) give every row of the batch its own node set (many candidate circuits
    in one forward). With `edges`, the edge gates over them apply too (see `edge_gated`).

    norm_scales (from record_norm_scales) freezes every RMSNorm's 1/rms at the unpruned model's
    values, so the final norm cannot amplify a shrunken residual."""
    replace = {loc.name: (lambda x, g=gates[..., loc.slice], m=means[loc.slice]: _mix(x, g.to(x.dtype), m.to(x.dtype)))
               for loc in layout.locations}
    with ExitStack() as stack:
        stack.enter_context(model.hooks(replace=replace))
        if norm_scales is not None:
            stack.enter_context(frozen_norms(model, norm_scales))
        if edges is not None and len(edges):
            stack.enter_context(edge_gated(model, layout, edges, edge_gates, means))
        yield


def head_scores(q: torch.Tensor, k: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, H, T, T) float32 attention scores of each head (the model's scaling), -inf above the
    causal diagonal. q, k: (B, T, width) as the q and k hook points see them."""
    B, T, W = q.shape
    D = W // n_head
    qh = q.float().view(B, T, n_head, D).transpose(1, 2)
    kh = k.float().view(B, T, n_head, D).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(D)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, float("-inf"))


def real_key_mass(q: torch.Tensor, k: torch.Tensor, n_head: int, sink_logit: torch.Tensor | None) -> torch.Tensor:
    """(B, T, width) attention weight on the real keys (not the sink) of each query, per channel:
    the attention output of a v channel held at a constant c is c times this. q, k: (B, T, width)."""
    B, T, W = q.shape
    if sink_logit is None:
        return q.new_ones(B, T, W)
    lse = head_scores(q, k, n_head).logsumexp(-1)  # (B, H, T)
    mass = torch.sigmoid(lse - sink_logit.float()[:, None])  # Z / (Z + e^s)
    return mass.transpose(1, 2).repeat_interleave(W // n_head, -1).to(q.dtype)


@contextmanager
def edge_gated(model, layout: NodeLayout, edges: EdgeSet, edge_gates: torch.Tensor,
               ablate_to: torch.Tensor) -> Iterator[None]:
    """Run `model` with edge gates (E,) (or (B, 1, E): one edge set per row of the batch) applied to
    the weights of `edges`; `gated(..., edges=, edge_gates=)` enters it after the node gates, whose
    hooks it must see.

    A pruned weight w from source s to target d passes on w * a_s instead of w * x_s, where a_s is
    what s carries when ablated (`ablate_to`, see sparse_gpt.nodes.ablation_values): the target's
    pre-activation (before its nonlinearity, AbsTopK or hook) is corrected by -w * (x_s - a_s).
    For attn c_proj, whose inputs are v channels mixed by attention, a_s is the attention output
    the channel would have with v_s ablated: a_s times the query's attention weight on real keys.
    Hooks are removed on exit; the model's weights are never touched."""
    by_module: dict[str, list] = {}
    for g in edges.groups:
        by_module.setdefault(g.module, []).append(g)
    qk: dict[str, torch.Tensor] = {}
    handles = []

    def source_values(g, x: torch.Tensor) -> torch.Tensor:
        loc = layout.by_name[g.source]
        a = ablate_to[loc.offset + g.src.to(ablate_to.device)].to(x.dtype)
        if loc.kind != "attn_v":
            return a
        attn = model.get_submodule(g.module.rsplit(".", 1)[0])
        mass = real_key_mass(qk[f"{loc.layer}.attn.q"], qk[f"{loc.layer}.attn.k"], attn.n_head, attn.sink_logit)
        return mass[..., g.src.to(x.device)] * a

    def hook(_m, inp, out, groups):
        x = inp[0]
        for g in groups:
            src = g.src.to(x.device)
            gate = edge_gates[..., g.slice].to(x.dtype)
            delta = (x[..., src] - source_values(g, x)) * (g.weight.to(x.device, x.dtype) * (1 - gate))
            out = out.index_add(-1, (g.row_offset + g.dst).to(x.device), delta, alpha=-1)
        return out

    try:
        for name, groups in by_module.items():
            handles.append(model.get_submodule(name).register_forward_hook(
                lambda m, inp, out, groups=groups: hook(m, inp, out, groups)))
            if name.endswith("attn.c_proj"):
                layer = layout.by_name[groups[0].source].layer
                for part in "qk":
                    hp = f"{layer}.attn.{part}"
                    handles.append(model.hook_point(hp).register_forward_hook(
                        lambda _m, _inp, out, hp=hp: qk.__setitem__(hp, out)))
        yield
    finally:
        for h in handles:
            h.remove()


def _norm_modules(model) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.RMSNorm, nn.LayerNorm))}


@torch.no_grad()
def record_norm_scales(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """1/rms of every norm's input, per sequence and position (B, T, 1), in the unpruned model."""
    scales, handles = {}, []
    for name, m in _norm_modules(model).items():
        if not isinstance(m, nn.RMSNorm):
            raise ValueError("frozen norms need RMSNorm (this model uses LayerNorm)")
        eps = m.eps if m.eps is not None else torch.finfo(torch.float32).eps

        def hook(_m, inp, _out, name=name, eps=eps):
            x = inp[0].float()
            scales[name] = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        handles.append(m.register_forward_hook(hook))
    try:
        model(tokens)
    finally:
        for h in handles:
            h.remove()
    return scales


@contextmanager
def frozen_norms(model, scales: dict[str, torch.Tensor]) -> Iterator[None]:
    handles = []
    try:
        for name, m in _norm_modules(model).items():
            handles.append(m.register_forward_hook(
                lambda mod, inp, _out, s=scales[name]: (inp[0] * s.to(inp[0].dtype)) * mod.weight))
        yield
    finally:
        for h in handles:
            h.remove()
