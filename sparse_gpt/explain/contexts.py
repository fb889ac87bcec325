"""What makes a node fire: its top- and bottom-activating contexts over pretraining text.

One pass over fixed validation windows keeps, for every node of the model at once, the positions of
its `k` highest and `k` lowest activations (a running top-k per node, so memory does not grow with
the text); a second pass gathers the node's activation on the tokens around the first
`n_contexts` of them, so a context can be shaded token by token. The result is cached beside the
checkpoint (node_contexts.safetensors, keyed by the weights' fingerprint and these settings, and
checked against the model when read; see sparse_gpt.tensor_cache), so every later explanation and
viewer page reads it for free. Same checkpoint, same output.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import validation_windows
from ..nodes import NodeLayout
from ..tensor_cache import load_or_compute
from ..tokenizer import decode

CONTEXTS_FILE = "node_contexts.safetensors"


@dataclass(frozen=True)
class ExplainSettings:
    n_tokens: int = 32768   # validation tokens scanned
    k: int = 32             # extreme positions kept per node and side (the token summary counts them)
    n_contexts: int = 8     # of those, how many keep the activations around them
    before: int = 12        # tokens shown before the activating token
    after: int = 4          # and after it (the model cannot see them; they help a reader)

    @property
    def width(self) -> int:
        return self.before + 1 + self.after


@dataclass
class Context:
    tokens: list[str]
    activations: list[float]   # the node's activation at each token (NaN where the window ends)
    focus: int                 # index of the activating token in `tokens`
    value: float


@dataclass
class TokenStat:
    token: str
    count: int                 # how many of the node's top-k positions sit on this token
    mean: float                # the node's mean activation there


@dataclass
class NodeExplanation:
    name: str
    n_tokens: int
    top: list[Context]
    bottom: list[Context]
    top_tokens: list[TokenStat]
    bottom_tokens: list[TokenStat]
    k: int

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{self.name}: activations over {self.n_tokens:,} validation tokens"]
        for side, contexts, stats in (("top", self.top, self.top_tokens), ("bottom", self.bottom, self.bottom_tokens)):
            lines.append(f"{side} activations (the activating token in [[ ]]):")
            lines += [f"  {c.value:+9.4f}  {_context_text(c)}" for c in contexts]
            summary = ", ".join(f"{_visible(s.token)!r} x{s.count} (mean {s.mean:+.3f})" for s in stats[:6])
            lines.append(f"  tokens at the {side} {self.k} positions: {summary}")
        return "\n".join(lines)


def _visible(text: str) -> str:
    return text.replace("\n", "\u21b5").replace("\t", "\u2192")


def _context_text(c: Context) -> str:
    return "".join(f"[[{_visible(t)}]]" if i == c.focus else _visible(t) for i, t in enumerate(c.tokens))


def _acts(cache: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([cache[n].float() for n in names], -1)  # (B, T, N)


def _batch_windows(n_nodes: int, block: int) -> int:
    return max(1, (1 << 25) // (n_nodes * block))  # about 128 MB of fp32 activations per batch


@torch.no_grad()
def compute_node_contexts(model, layout: NodeLayout, windows: torch.Tensor,
                          settings: ExplainSettings = ExplainSettings()) -> dict[str, torch.Tensor]:
    """Per node: the k extreme activations and their positions, and the activations around the first
    n_contexts. Tensors: values/positions (2, k, N) (side 0 = top, descending; side 1 = bottom,
    ascending; positions index windows.flatten()), contexts (2, n_contexts, N, width), windows."""
    s = settings
    device = next(model.parameters()).device
    names = [loc.name for loc in layout.locations]
    W, T = windows.shape
    N = layout.n_nodes
    k = min(s.k, W * T)
    step = _batch_windows(N, T)
    best_v = torch.full((2, k, N), -torch.inf)
    best_p = torch.full((2, k, N), -1, dtype=torch.long)
    for start in range(0, W, step):
        with model.hooks(record=names) as cache:
            model(windows[start:start + step].to(device))
        flat = _acts(cache, names).cpu().reshape(-1, N)
        pos = torch.arange(start * T, start * T + flat.shape[0])[:, None].expand(-1, N)
        for side, sign in enumerate((1.0, -1.0)):  # the bottom is the top of the negated activations
            v = torch.cat([best_v[side], sign * flat])
            p = torch.cat([best_p[side], pos])
            best_v[side], idx = v.topk(k, dim=0)
            best_p[side] = p.gather(0, idx)
    best_v[1] = -best_v[1]

    # second pass: the node's activation on the tokens around each of its first n_contexts positions
    n_ctx = min(s.n_contexts, k)
    want = best_p[:, :n_ctx]                                  # (2, n_ctx, N)
    w_of, t_of = want // T, want % T
    node = torch.arange(N).expand_as(want)
    contexts = torch.full((2, n_ctx, N, s.width), torch.nan)
    offsets = torch.arange(-s.before, s.after + 1)
    for start in range(0, W, step):
        sel = (w_of >= start) & (w_of < start + step)
        if not sel.any():
            continue
        with model.hooks(record=names) as cache:
            model(windows[start:start + step].to(device))
        acts = _acts(cache, names).cpu()                       # (b, T, N)
        acts = torch.nn.functional.pad(acts, (0, 0, s.before, s.after), value=torch.nan)
        Tp = acts.shape[1]
        w, t, n = w_of[sel] - start, t_of[sel] + s.before, node[sel]
        flat_idx = ((w[:, None] * Tp + t[:, None] + offsets[None, :]) * N + n[:, None])
        contexts[sel] = acts.reshape(-1)[flat_idx]
    return {"values": best_v, "positions": best_p, "contexts": contexts.half(),
            "windows": windows.to(torch.int32)}


class NodeContexts:
    """The cached activation records of one model; `explain(name)` reads one node's out of them."""

    def __init__(self, records: dict[str, torch.Tensor], layout: NodeLayout, tokenizer, settings: ExplainSettings):
        self.records, self.layout, self.tokenizer, self.settings = records, layout, tokenizer, settings
        self._flat_tokens = records["windows"].long().flatten()
        self._T = records["windows"].shape[1]
        self._token_text: dict[int, str] = {}

    def _text(self, token_id: int) -> str:
        if token_id not in self._token_text:
            self._token_text[token_id] = decode(self.tokenizer, [token_id])
        return self._token_text[token_id]

    def _context(self, side: int, j: int, i: int) -> Context:
        s = self.settings
        pos = int(self.records["positions"][side, j, i])
        w, t = divmod(pos, self._T)
        lo, hi = max(0, t - s.before), min(self._T, t + s.after + 1)
        ids = self._flat_tokens[w * self._T + lo: w * self._T + hi].tolist()
        acts = self.records["contexts"][side, j, i, lo - (t - s.before): hi - (t - s.before)].float().tolist()
        return Context([self._text(x) for x in ids], acts, t - lo, float(self.records["values"][side, j, i]))

    def _token_stats(self, side: int, i: int) -> list[TokenStat]:
        values = self.records["values"][side, :, i]
        ids = self._flat_tokens[self.records["positions"][side, :, i]]
        stats = []
        for tok in ids.unique():
            hit = ids == tok
            stats.append(TokenStat(self._text(int(tok)), int(hit.sum()), float(values[hit].mean())))
        return sorted(stats, key=lambda st: (-st.count, -abs(st.mean), st.token))

    def explain(self, name: str, n_contexts: int | None = None) -> NodeExplanation:
        """The explanation of the node called `name` (KeyError / IndexError for a bad name)."""
        i = self.layout.node_index(name)
        n = min(n_contexts or self.settings.n_contexts, self.records["contexts"].shape[1])
        return NodeExplanation(
            name=name, n_tokens=self._flat_tokens.numel(),
            top=[self._context(0, j, i) for j in range(n)], bottom=[self._context(1, j, i) for j in range(n)],
            top_tokens=self._token_stats(0, i), bottom_tokens=self._token_stats(1, i),
            k=self.records["values"].shape[1])


def node_contexts(loaded, settings: ExplainSettings = ExplainSettings(), log=print) -> NodeContexts:
    """Activation records of a loaded checkpoint (sparse_gpt.loading.LoadedModel), from the cache
    beside it when it matches, else computed and cached."""
    model, layout = loaded.model, NodeLayout(loaded.model.config)
    key = json.dumps({"fingerprint": loaded.fingerprint, "settings": asdict(settings),
                      "source": loaded.data.source, "path": loaded.data.path, "n_nodes": layout.n_nodes},
                     sort_keys=True)

    def compute():
        windows = validation_windows(loaded.tokenizer, loaded.data, model.config.block_size, settings.n_tokens)
        return compute_node_contexts(model, layout, windows, settings)
    records = load_or_compute(Path(loaded.path) / CONTEXTS_FILE, key, compute, log,
                              f"top-activating contexts of every node over {settings.n_tokens:,} validation tokens",
                              check=lambda t: check_node_contexts(t, layout, settings, model.config.vocab_size))
    return NodeContexts(records, layout, loaded.tokenizer, settings)


def check_node_contexts(records: dict[str, torch.Tensor], layout: NodeLayout, settings: ExplainSettings,
                        vocab_size: int) -> str | None:
    """What is wrong with cached activation records for this model, or None: every shape, and every
    position and token id that NodeContexts indexes with, must fit."""
    want = {"values", "positions", "contexts", "windows"}
    if set(records) != want:
        return f"holds {sorted(records)}, not {sorted(want)}"
    values, positions, contexts, windows = (records[k] for k in ("values", "positions", "contexts", "windows"))
    N = layout.n_nodes
    if windows.dim() != 2 or windows.dtype != torch.int32 or windows.numel() == 0:
        return f"holds windows of shape {tuple(windows.shape)} ({windows.dtype}), not a (W, T) int32 tensor"
    k = min(settings.k, windows.numel())
    if tuple(values.shape) != (2, k, N):
        return f"holds values of shape {tuple(values.shape)}, but this model and these settings need {(2, k, N)}"
    if positions.shape != values.shape or positions.dtype != torch.long:
        return f"holds positions of shape {tuple(positions.shape)} ({positions.dtype}), not {(2, k, N)} (int64)"
    want_contexts = (2, min(settings.n_contexts, k), N, settings.width)
    if tuple(contexts.shape) != want_contexts:
        return f"holds contexts of shape {tuple(contexts.shape)}, but this model and these settings need {want_contexts}"
    if bool(((positions < 0) | (positions >= windows.numel())).any()):
        return f"holds positions outside its {windows.numel():,} tokens"
    if bool(((windows < 0) | (windows >= vocab_size)).any()):
        return f"holds token ids outside the vocabulary of {vocab_size}"
    return None


def explain_node(loaded, name: str, settings: ExplainSettings = ExplainSettings(), log=print) -> NodeExplanation:
    """One node's explanation for a loaded checkpoint (cached per checkpoint)."""
    return node_contexts(loaded, settings, log).explain(name)
