"""The numbers the viewer shows when a node is clicked, computed from the model the circuit came from.

Per circuit node: its mean activation at the answer position on each side of the task, the task
loss with only that node ablated (in the full model, and in the circuit, raw: no calibration; a
weight-level circuit keeps only its own weights), and its mean over pretraining text (what it carries
when mean-ablated); and its mean activation per side at the token where a pair's prompts differ (the
opening quote of the quote task), where a value or key channel that reads the same at the answer
carries the difference. Per attention head: where it looks from the answer position.
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..nodes import NodeLayout
from ..prune.masks import gated, head_scores, record_norm_scales
from ..prune.objective import Evaluator
from ..tasks.base import BinaryTask, TaskBatch, encode_pairs
from ..tokenizer import decode
from .artefact import Circuit


@dataclass
class NodeNumbers:
    side_means: list[float]      # mean activation at the answer position, per side of the task
    difference_means: list[float] | None  # the same at the token where a pair's prompts differ (None: they
                                          # do not differ before the answer)
    pretraining_mean: float
    ablated_alone: float         # task loss of the full model without this node
    circuit_without: float       # raw (uncalibrated) task loss of the circuit without this node


@dataclass
class NodeDetails:
    sides: list[str]             # what the two sides of the task are
    n_prompts: int
    baseline: dict[str, float]   # {"full": loss, "circuit": raw loss}
    nodes: dict[str, NodeNumbers]


def _sides(task: BinaryTask, batch: TaskBatch, tokenizer) -> tuple[list[str], torch.Tensor]:
    """Labels of the task's two sides and each row's side (0/1). Fixed-answer tasks split by the
    correct answer; tasks whose answers are copied from the prompt split by the pair member."""
    if task.answers is not None:
        first = batch.correct[0]  # every pair has both answers, so row 0's alternative is the other side
        labels = [decode(tokenizer, [int(first)]), decode(tokenizer, [int(batch.alternative[0])])]
        return [f"answer \u00ab{t}\u00bb" for t in labels], (batch.correct != first).long()
    return ["first prompt of each pair", "second prompt of each pair"], torch.arange(len(batch)) % 2


def _activations_at(model, layout: NodeLayout, batch: TaskBatch, names: list[str],
                    positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """{location: (n, width)} activations at one position per prompt, for the locations of `names`."""
    locations = sorted({layout.locate(n)[0] for n in names})
    part = batch.trimmed()
    with model.hooks(record=locations) as cache:
        model(part.tokens)
    rows = torch.arange(len(batch), device=part.tokens.device)
    return {loc: cache[loc][rows, positions].float() for loc in locations}


def _pair_difference(batch: TaskBatch) -> torch.Tensor:
    """(N,) per row, the first position where its prompt and its pair partner's differ (-1: none
    before the answer position, or no partner)."""
    out = torch.full((len(batch),), -1, dtype=torch.long)
    rows_of = {}
    for r, pid in enumerate(batch.pair_ids.tolist()):
        rows_of.setdefault(pid, []).append(r)
    for pid, rows in rows_of.items():
        if pid < 0 or len(rows) != 2:
            continue
        a, b = rows
        n = int(min(batch.positions[a], batch.positions[b])) + 1
        differ = (batch.tokens[a, :n] != batch.tokens[b, :n]).nonzero()
        if len(differ):
            out[a] = out[b] = int(differ[0, 0])
    return out


@torch.no_grad()
def node_details(model, tokenizer, circuit: Circuit, task: BinaryTask, means: torch.Tensor, n_pairs: int = 16,
                 seed: int = 20_011, progress: bool = True) -> NodeDetails:
    """Per-node numbers for circuit.html (`means`: the nodes' means over pretraining text).

    Two task-loss evaluations per node make this the slow part of the page, hence the modest
    default of 16 pairs; they run as node sets batched into a few large forwards."""
    device = next(model.parameters()).device
    layout = NodeLayout(model.config)
    node_means = means.to(device)
    batch = encode_pairs(task, task.pairs(n_pairs, seed, "prune"), tokenizer, model.config.block_size).to(device)
    # two length buckets, each trimmed to its longest prompt: a third less padding to run
    chunk = max(1, (len(batch) + 1) // 2)
    ev = Evaluator(model, layout, circuit.ablation_values(node_means), circuit.settings.freeze_norms, chunk=chunk)
    # the circuit and the circuit without a node: under the circuit's own weights (the weights of
    # an ablated node carry nothing, so one edge mask serves every node set inside the circuit)
    edges, edge_keep = circuit.edge_mask(model, layout)
    cev = Evaluator(model, layout, circuit.ablation_values(node_means), circuit.settings.freeze_norms, chunk=chunk,
                    edges=edges, edge_gates=edge_keep.float().to(device))
    labels, side = _sides(task, batch, tokenizer)
    side = side.to(device)
    keep = circuit.keep_mask(layout).float().to(device)
    at_answer = _activations_at(model, layout, batch, circuit.node_names, batch.positions)
    # values and keys are read where the prompts differ (the opening quote), not at the answer
    where = _pair_difference(batch).to(device)
    differ = where >= 0
    at_difference = (_activations_at(model, layout, batch.select(differ), circuit.node_names, where[differ])
                     if differ.any() else None)

    # raw losses: the circuit is judged without its calibration, and so is every node in it
    baseline = {"full": ev.loss(batch, None), "circuit": cev.loss(batch, keep)}
    names = circuit.node_names
    idx = torch.tensor([layout.node_index(n) for n in names], dtype=torch.long, device=device)
    rows = torch.arange(len(names), device=device)
    alone = torch.ones(len(names), len(keep), device=device)
    alone[rows, idx] = 0.0
    without = keep.repeat(len(names), 1)
    without[rows, idx] = 0.0
    # every node's two ablations as node sets, many per forward (the same losses as one at a time)
    losses_alone, losses_without = [], []
    step = 16
    for start in tqdm(range(0, len(names), step), desc="node details", disable=not progress, leave=False,
                      dynamic_ncols=True):
        losses_alone += ev.losses_many(batch, alone[start:start + step]).tolist()
        losses_without += cev.losses_many(batch, without[start:start + step]).tolist()
    nodes = {}
    for k, name in enumerate(names):
        loc, j = layout.locate(name)
        acts = at_answer[loc][:, j]
        diff = None
        if at_difference is not None:
            d, d_side = at_difference[loc][:, j], side[differ]
            diff = [float(d[d_side == s].mean()) for s in (0, 1)]
        nodes[name] = NodeNumbers(side_means=[float(acts[side == s].mean()) for s in (0, 1)], difference_means=diff,
                                  pretraining_mean=float(node_means[int(idx[k])]), ablated_alone=losses_alone[k],
                                  circuit_without=losses_without[k])
    return NodeDetails(sides=labels, n_prompts=len(batch), baseline=baseline, nodes=nodes)


@dataclass
class HeadAttention:
    """Mean attention of one head from the answer position, in the full model and in the circuit,
    on the token where the two prompts of a pair differ (e.g. the opening quote) and on the sink."""
    on_difference: tuple[float, float]   # (full model, circuit)
    on_sink: tuple[float, float]


@torch.no_grad()
def attention_from_answer(model, tokenizer, circuit: Circuit, task: BinaryTask, means: torch.Tensor, layer: int,
                          n_pairs: int = 64, seed: int = 20_011) -> list[HeadAttention]:
    """Where each head of `layer` attends from the answer position, full model against circuit.

    The circuit runs as the validation runs it (its nodes and weights, the rest at their ablation
    values), so a head whose q/k channels the circuit keeps shows whether the circuit still looks
    where the model does. Rows whose pair does not differ before the answer are left out."""
    device = next(model.parameters()).device
    layout = NodeLayout(model.config)
    attn = model.get_submodule(f"transformer.h.{layer}.attn")
    batch = encode_pairs(task, task.pairs(n_pairs, seed, "prune"), tokenizer, model.config.block_size).trimmed()
    where = _pair_difference(batch)
    batch = batch.select(where >= 0)
    where = where[where >= 0].to(device)
    batch = batch.to(device)
    edges, edge_keep = circuit.edge_mask(model, layout)
    keep = circuit.keep_mask(layout).float().to(device)

    def probs(circuit_run: bool) -> torch.Tensor:
        """(N, H, T + 1) attention of the answer position; the last slot is the sink."""
        with ExitStack() as stack:
            if circuit_run:
                scales = record_norm_scales(model, batch.tokens) if circuit.settings.freeze_norms else None
                stack.enter_context(gated(model, layout, keep, circuit.ablation_values(means.to(device)), scales,
                                          edges, edge_keep.float().to(device)))
            # entered after the circuit's gating, so it records q and k as the circuit has them
            got = stack.enter_context(model.hooks(record=[f"{layer}.attn.q", f"{layer}.attn.k"]))
            model(batch.tokens)
        scores = head_scores(got[f"{layer}.attn.q"], got[f"{layer}.attn.k"], attn.n_head)  # (N, H, T, T)
        rows = torch.arange(len(batch), device=device)
        at = scores[rows, :, batch.positions]  # (N, H, T)
        sink = (attn.sink_logit.float() if attn.sink_logit is not None
                else at.new_full((attn.n_head,), float("-inf")))
        return torch.cat([at, sink.expand(len(batch), -1)[..., None]], -1).softmax(-1)

    full, circ = probs(False), probs(True)
    rows = torch.arange(len(batch), device=device)
    return [HeadAttention(on_difference=(float(full[rows, h, where].mean()), float(circ[rows, h, where].mean())),
                          on_sink=(float(full[:, h, -1].mean()), float(circ[:, h, -1].mean())))
            for h in range(attn.n_head)]
