"""A GPT-2-like decoder for weight-sparse training, as in Gao et al. 2025.

Pre-norm blocks, RMSNorm, many 16-wide heads, untied embeddings, optional attention sink, bigram
table and AbsTopK activation sparsity. Every activation a circuit is made of passes through a
HookPoint named as in OpenAI's release ({i}.attn.q, {i}.mlp.post_act, final_resid, ...), so the
pruner and the viewer can read or replace it without touching this file.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .sink_attention import sink_attention
from . import topk_triton
from .topk import keep_mask


class HookPoint(nn.Module):
    """Identity module marking a named activation; hooks are attached by GPT.hooks()."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def abs_topk_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k entries of largest magnitude along the last dim (signs kept), zero the rest:
    torch.topk + scatter, the reference the threshold version below is tested against."""
    if k >= x.shape[-1]:
        return x
    idx = x.abs().topk(k, dim=-1, sorted=False).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def _row_keep_mask(x: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    """Bool mask of exactly k entries per row (last dim) by the shared exact top-k rule (sparse_gpt.topk):
    |x| above the row's k-th largest |x|, ties at that value filled in index order. Works in x's
    dtype (no fp32 copy of bf16 activations); no host-device sync on the GPU."""
    W = x.shape[-1]
    a = x.detach().abs()
    return keep_mask(a.reshape(-1, W), k, method).view(a.shape)


def _use_triton(x: torch.Tensor, method: str) -> bool:
    """The one-kernel Triton AbsTopK: the default on the GPU where it takes the input."""
    if not ((method == "triton" or (method == "auto" and x.is_cuda)) and topk_triton.supported(x)):
        return False
    # tried once per dtype outside compiled code (where the first eager step has already tried it)
    return torch.compiler.is_compiling() or topk_triton.works(x.dtype, str(x.device))


class _AbsTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, method: str) -> torch.Tensor:
        if _use_triton(x, method):
            out, keep = topk_triton.abs_topk_rows(x, k)
        else:
            keep = _row_keep_mask(x, k, "auto" if method == "triton" else method)
            out = torch.where(keep, x, x.new_zeros(()))
        ctx.save_for_backward(keep)  # a bool per entry: less memory than k int64 indices per row
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, grad.new_zeros(())), None, None


def abs_topk(x: torch.Tensor, k: int, method: str = "auto") -> torch.Tensor:
    """Keep the k entries of largest magnitude along the last dim (signs kept), zero the rest.

    The same entries as abs_topk_reference (ties aside), found by a per-row threshold instead of
    topk + scatter; the gradient passes through the kept entries only. method: "triton" (one
    kernel per call, sparse_gpt.topk_triton; with "auto" the default on the GPU) or how the
    threshold is found (sparse_gpt.topk.METHODS)."""
    if k >= x.shape[-1]:
        return x
    return _AbsTopK.apply(x, k, method)


class AbsTopK(nn.Module):
    def __init__(self, afrac: float | None, width: int):
        super().__init__()
        self.k = width if afrac is None else max(1, int(afrac * width))
        # "reference": the torch.topk + scatter version; else a sparse_gpt.topk threshold method
        # (benchmarks compare them)
        self.method = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "reference":
            return abs_topk_reference(x, self.k)
        return abs_topk(x, self.k, self.method)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def _norm(cfg: ModelConfig) -> nn.Module:
    # RMSNorm keeps zero privileged: a channel that is zero stays zero (the paper's choice over LayerNorm).
    return nn.RMSNorm(cfg.d_model) if cfg.norm == "rms" else nn.LayerNorm(cfg.d_model, bias=cfg.bias)


def _act_sparsity(cfg: ModelConfig, location: str, width: int) -> nn.Module:
    if cfg.afrac is not None and location in cfg.afrac_locations:
        return AbsTopK(cfg.afrac, width)
    return nn.Identity()


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        width = cfg.n_head * cfg.d_head
        self.c_attn = nn.Linear(cfg.d_model, 3 * width, bias=cfg.bias)
        self.c_proj = nn.Linear(width, cfg.d_model, bias=cfg.bias)
        # A sink is an extra key/value slot with k = v = 0 whose score is a learned per-head logit;
        # it lets a head attend "nowhere", which thresholding heads need.
        self.sink_logit = nn.Parameter(torch.zeros(cfg.n_head)) if cfg.attn_sink else None
        # None: the flash kernel on CUDA, the masked path elsewhere. The flash path is exact but rounds
        # differently in float32; on CPU the masked path reproduces earlier runs bit for bit (the main
        # job's model only just solves its quote task, so rounding decides whether it does).
        # True / False force one path (benchmarks compare the two).
        self.flash_sink: bool | None = None
        self.sparse_q = _act_sparsity(cfg, "q", width)
        self.sparse_k = _act_sparsity(cfg, "k", width)
        self.sparse_v = _act_sparsity(cfg, "v", width)
        self.sparse_out = _act_sparsity(cfg, "attn_out", cfg.d_model)
        self.hook_q = HookPoint(f"{layer}.attn.q")
        self.hook_k = HookPoint(f"{layer}.attn.k")
        self.hook_v = HookPoint(f"{layer}.attn.v")
        self.hook_resid_delta = HookPoint(f"{layer}.attn.resid_delta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).chunk(3, dim=-1)  # each (B, T, nh*hs)
        q = self.hook_q(self.sparse_q(q))
        k = self.hook_k(self.sparse_k(k))
        v = self.hook_v(self.sparse_v(v))
        q = q.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, nh, T, hs)
        if self.sink_logit is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            flash = q.is_cuda if self.flash_sink is None else self.flash_sink
            y = sink_attention(q, k, v, self.sink_logit, flash=flash)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.d_head)  # (B, T, nh*hs)
        return self.hook_resid_delta(self.sparse_out(self.c_proj(y)))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.mlp_width, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.d_model, bias=cfg.bias)
        self.act = nn.GELU() if cfg.activation == "gelu" else nn.ReLU()
        self.sparse_neuron = _act_sparsity(cfg, "mlp_neuron", cfg.mlp_width)
        self.sparse_out = _act_sparsity(cfg, "mlp_out", cfg.d_model)
        self.hook_post_act = HookPoint(f"{layer}.mlp.post_act")
        self.hook_resid_delta = HookPoint(f"{layer}.mlp.resid_delta")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hook_post_act(self.sparse_neuron(self.act(self.c_fc(x))))  # (B, T, d_mlp)
        return self.hook_resid_delta(self.sparse_out(self.c_proj(h)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = _norm(cfg)
        self.sparse_attn_in = _act_sparsity(cfg, "attn_in", cfg.d_model)
        self.hook_attn_in = HookPoint(f"{layer}.attn.act_in")
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = _norm(cfg)
        self.sparse_mlp_in = _act_sparsity(cfg, "mlp_in", cfg.d_model)
        self.hook_mlp_in = HookPoint(f"{layer}.mlp.act_in")
        self.mlp = MLP(cfg, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.hook_attn_in(self.sparse_attn_in(self.ln_1(x))))
        x = x + self.mlp(self.hook_mlp_in(self.sparse_mlp_in(self.ln_2(x))))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.d_model),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=_norm(cfg),
        ))
        if cfg.pos_emb == "learned":
            self.transformer["wpe"] = nn.Embedding(cfg.block_size, cfg.d_model)
        self.hook_final_resid = HookPoint("final_resid")
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # Dense table of bigram logits: frees the sparse weights from memorising bigram statistics.
        self.bigram_table = nn.Parameter(torch.zeros(cfg.vocab_size, cfg.vocab_size)) if cfg.bigram_table else None
        # Constant logit offsets (OpenAI's checkpoints carry one); zeros for models trained here.
        self.register_buffer("final_logits_bias", torch.zeros(cfg.vocab_size))
        self.hook_points: dict[str, HookPoint] = {
            m.name: m for m in self.modules() if isinstance(m, HookPoint)}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.endswith("sink_logit") or name == "bigram_table":
                nn.init.zeros_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name or "ln_f" in name:
                nn.init.ones_(p)
            elif name.endswith("c_proj.weight"):
                # Residual-path outputs scaled down so the residual stream's variance does not
                # grow with depth (GPT-2's choice, kept by the paper).
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer))
            else:
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab); with positions (B,), only the logits at
        those positions, (B, vocab) (the pruner scores one position per prompt: this skips the
        unembedding everywhere else)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than the context ({self.config.block_size})")
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device))
        for block in self.transformer.h:
            x = block(x)
        x = self.hook_final_resid(x)
        if positions is not None:
            rows = torch.arange(B, device=idx.device)
            x, idx = x[rows, positions], idx[rows, positions]  # (B, C), (B,)
        # The offset goes in as the matmul's bias: one fused op instead of a pass over (B, T, vocab).
        logits = F.linear(self.transformer.ln_f(x), self.lm_head.weight, self.final_logits_bias)
        if self.bigram_table is not None:
            logits = logits + self.bigram_table[idx]
        return logits

    # ----- hooks -------------------------------------------------------------------------------

    def hook_point(self, name: str) -> HookPoint:
        try:
            return self.hook_points[name]
        except KeyError:
            import difflib
            close = difflib.get_close_matches(name, list(self.hook_points), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"no activation named {name!r}{hint}; this model has "
                           f"{len(self.hook_points)}, e.g. '0.attn.q', '0.mlp.post_act', 'final_resid'") from None

    @contextmanager
    def hooks(self, record: Iterable[str] = (),
              replace: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
              ) -> Iterator[dict[str, torch.Tensor]]:
        """Record and/or replace named activations for the forwards run inside the block.

        `replace[name](x)` returns the activation the model continues with; `record` names are stored
        (after any replacement, not detached) in the yielded dict. Hooks are removed on exit, also
        when the block raises.
        """
        cache: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name, fn in (replace or {}).items():
                handles.append(self.hook_point(name).register_forward_hook(
                    lambda _m, _inp, out, fn=fn: fn(out)))
            for name in record:
                handles.append(self.hook_point(name).register_forward_hook(
                    lambda _m, _inp, out, name=name: cache.__setitem__(name, out)))
            yield cache
        finally:
            for h in handles:
                h.remove()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
