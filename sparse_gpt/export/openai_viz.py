"""The circuit as the `viz_data.pt` dictionary OpenAI's circuit viewer (their Streamlit app) reads.

Keys, as their viewer reads them:
- `circuit_data`: {location: LongTensor of kept node indices}, every location of the model;
- `prune_config`: our pruner settings (their viewer shows it as JSON);
- `importances`: `ch_interv_losses` {location: [task loss with that node ablated from the
  circuit, per kept node]}, `layer_interv_losses` {"{i}.attn" / "{i}.mlp": task loss with that
  part's circuit nodes ablated}, `pair_data` = `pair_data_connections` [[W (src kept x tgt kept),
  src indices, tgt indices, (src location, tgt location)] for every weight matrix inside a block],
  `loss` (full model), `interv_loss` (circuit), `beeg_model_config` (their GPTConfig fields) and
  `task_samples` (prompt tokens, zero-padded, and {location: {index: activations (prompt, position)}});
- `samples`: {location: {index: {fraction: (bottom, top)}}}, each a list of (tokens, activations,
  focus) snippets; the explanations' extreme contexts (the top and bottom 32 of 32,768 validation
  tokens, about 0.1%) fill fraction 0.001, the other fractions stay empty;
- `all_loss`: the bisection's (kept nodes, loss) pairs, then (circuit size, circuit loss) last;
- `num_total_nodes`: the model's node count.

Their viewer stores every task loss as the sum of the two prompts' cross-entropies of a pair, twice
our mean per prompt, and halves what it shows; so every loss here is written doubled too.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import torch

from ..circuit import node_details
from ..fileio import atomic_write_bytes
from ..nodes import load_or_compute_means
from ..prune.objective import Evaluator
from ..tasks import encode_pairs, get_task
from ..tokenizer import eot_id
from .common import ExportError, ExportInput

VIZ_FILE = "viz_data.pt"
# Their stored losses are per pair (two prompts summed); ours are per prompt.
_THEIR_LOSS = 2.0
# Pairs scored for the losses and the task samples (node_details' default batch).
N_PAIRS, SEED = 16, 20_011
FRACTIONS = (0.001, 0.01, 0.1, 0.5)
_LOCTYPES_THEIRS = {"attn_in": "attn_in", "q": "attn_q", "k": "attn_k", "v": "attn_v",
                    "attn_out": "attn_out", "mlp_in": "mlp_in", "mlp_neuron": "mlp_neuron",
                    "mlp_out": "mlp_out"}


def their_config(cfg, tokenizer_name: str = "tinypython_2k") -> dict:
    """Our ModelConfig as the fields of their GPTConfig."""
    locs = ",".join(_LOCTYPES_THEIRS[loc] for loc in cfg.afrac_locations)
    return {"block_size": cfg.block_size, "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "d_head": cfg.d_head, "d_model": cfg.d_model, "dropout": 0.0,
            "bias": cfg.bias, "ln_bias": cfg.bias, "rms_norm": cfg.norm == "rms",
            "residual_activation_type": "identity", "activation_type": cfg.activation,
            "afrac": cfg.afrac, "afrac_loctypes": locs, "tied_unembed": False,
            "tokenizer_name": tokenizer_name, "d_mlp": cfg.mlp_width,
            "enable_bigram_table": cfg.bigram_table, "learnable_bigram_table": cfg.bigram_table,
            "sink": cfg.attn_sink}


def _pairs_in_blocks(n_layer: int) -> list[tuple[str, str, str, int]]:
    """(src location, tgt location, parameter, row offset part) of every matrix inside a block."""
    out = []
    for i in range(n_layer):
        out += [(f"{i}.attn.act_in", f"{i}.attn.{p}", "c_attn", j) for j, p in enumerate("qkv")]
        out += [(f"{i}.attn.v", f"{i}.attn.resid_delta", "attn_proj", 0),
                (f"{i}.mlp.act_in", f"{i}.mlp.post_act", "c_fc", 0),
                (f"{i}.mlp.post_act", f"{i}.mlp.resid_delta", "mlp_proj", 0)]
    return out


def _pair_data(inp: ExportInput, kept: dict[str, torch.Tensor]) -> list[list]:
    model = inp.loaded.model
    width = model.config.n_head * model.config.d_head
    out = []
    for src, tgt, param, part in _pairs_in_blocks(model.config.n_layer):
        block = model.transformer.h[int(src.split(".")[0])]
        w = {"c_attn": block.attn.c_attn, "attn_proj": block.attn.c_proj, "c_fc": block.mlp.c_fc,
             "mlp_proj": block.mlp.c_proj}[param].weight.detach().float().cpu()
        s, t = kept[src], kept[tgt]
        sub = w[(t + part * width)[:, None], s[None, :]].T.contiguous()  # (src kept, tgt kept)
        out.append([sub, s.tolist(), t.tolist(), (src, tgt)])
    return out


def _snippets(contexts, inp: ExportInput, i: int, side: int, eot: int) -> list[tuple]:
    """(tokens, activations, focus) of one node's extreme contexts on one side, all as wide as
    the explanation's window (tokens past a window's end are end-of-text with activation 0)."""
    records, s = contexts.records, contexts.settings
    windows = records["windows"].long()
    T = windows.shape[1]
    out = []
    for j in range(records["contexts"].shape[1]):
        w, t = divmod(int(records["positions"][side, j, i]), T)
        lo = t - s.before
        ids = torch.full((s.width,), eot, dtype=torch.long)
        for k in range(s.width):
            if 0 <= lo + k < T:
                ids[k] = windows[w, lo + k]
        # clone: a view would carry its whole records tensor into the saved file
        acts = records["contexts"][side, j, i].float().nan_to_num(0.0).clone()
        out.append((ids, acts, s.before))
    return out


def _layer_losses(inp: ExportInput, means: torch.Tensor, batch, keep: torch.Tensor) -> dict[str, float]:
    """Task loss (theirs: doubled, raw like the per-node losses beside it) with each layer's
    attention or MLP nodes ablated from the circuit."""
    circuit, layout, model = inp.circuit, inp.layout, inp.loaded.model
    device = next(model.parameters()).device
    edges, edge_keep = circuit.edge_mask(model, layout)  # the circuit's own weights (all, at node level)
    ev = Evaluator(model, layout, circuit.ablation_values(means.to(device)), circuit.settings.freeze_norms,
                   edges=edges, edge_gates=edge_keep.float().to(device))
    gates = keep.float().to(device)
    losses = {}
    for i in range(model.config.n_layer):
        for part in ("attn", "mlp"):
            off = gates.clone()
            for loc in layout.locations:
                if loc.name.startswith(f"{i}.{part}."):
                    off[loc.slice] = 0.0
            losses[f"{i}.{part}"] = _THEIR_LOSS * ev.loss(batch, off)
    return losses


def _task_samples(model, batch, kept: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """The task prompts (zero-padded) and each kept node's activations on them."""
    part = batch.trimmed()
    with model.hooks(record=[loc for loc, idx in kept.items() if len(idx)]) as cache:
        model(part.tokens)
    positions = torch.arange(part.tokens.shape[1], device=part.tokens.device)
    docs = torch.where(positions[None, :] < part.lengths[:, None], part.tokens, 0).cpu()
    acts = {loc: {j: cache[loc][:, :, j].float().cpu().clone() for j in idx.tolist()}
            for loc, idx in kept.items() if len(idx)}
    return docs, acts


def _samples(inp: ExportInput, contexts, kept: dict[str, torch.Tensor]) -> dict:
    """Each kept node's extreme contexts at the first fraction; the other fractions stay empty."""
    samples: dict = {loc: {} for loc in kept}
    if contexts is None:
        return samples
    eot = eot_id(inp.loaded.tokenizer)
    for loc, idx in kept.items():
        for j in idx.tolist():
            flat = inp.layout.node_index(f"{loc}[{j}]")
            bottom, top = (_snippets(contexts, inp, flat, side, eot) for side in (1, 0))
            samples[loc][j] = {f: ((bottom, top) if f == FRACTIONS[0] else ([], [])) for f in FRACTIONS}
    return samples


@torch.no_grad()
def viz_data(inp: ExportInput, contexts=None, log=print) -> dict:
    """The viz_data dictionary of the circuit (see the module docstring). `contexts` are the
    checkpoint's explanation records (sparse_gpt.explain.contexts.node_contexts), for `samples`;
    without them `samples` is empty."""
    circuit, layout, loaded = inp.circuit, inp.layout, inp.loaded
    model, tok = loaded.model, loaded.tokenizer
    try:
        task = get_task(circuit.task)
    except KeyError as e:
        raise ExportError(f"the circuit's task {circuit.task!r} is not a registered task ({e})") from None
    means = load_or_compute_means(model, layout, tok, loaded.path, loaded.fingerprint, loaded.data,
                                  log=log)
    details = node_details(model, tok, circuit, task, means, n_pairs=N_PAIRS, seed=SEED,
                           progress=False)
    keep = circuit.keep_mask(layout)
    kept = {loc.name: keep[loc.slice].nonzero().flatten() for loc in layout.locations}
    batch = encode_pairs(task, task.pairs(N_PAIRS, SEED, "prune"), tok,
                         model.config.block_size).to(next(model.parameters()).device)
    ch_losses = {loc: [_THEIR_LOSS * details.nodes[f"{loc}[{j}]"].circuit_without for j in idx.tolist()]
                 for loc, idx in kept.items()}
    pair_data = _pair_data(inp, kept)
    circuit_loss = details.baseline["circuit"]
    return {
        "circuit_data": {loc: idx.cpu() for loc, idx in kept.items()},
        "prune_config": dataclasses.asdict(circuit.settings),
        "importances": {
            "ch_interv_losses": ch_losses, "layer_interv_losses": _layer_losses(inp, means, batch, keep),
            "pair_data": pair_data, "pair_data_connections": pair_data,
            "loss": _THEIR_LOSS * details.baseline["full"],
            "interv_loss": _THEIR_LOSS * circuit_loss,
            "beeg_model_config": their_config(model.config),
            "task_samples": _task_samples(model, batch, kept),
        },
        "samples": _samples(inp, contexts, kept),
        "all_loss": [[k, _THEIR_LOSS * loss] for k, loss in circuit.bisection]
        + [[len(circuit.nodes), _THEIR_LOSS * circuit_loss]],
        "num_total_nodes": layout.n_nodes,
    }


def write_openai(data: dict, out: Path) -> Path:
    """Write `viz_data.pt` into `out` (atomically; loadable with torch.load(weights_only=True))."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(data, buf)
    path = out / VIZ_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path
