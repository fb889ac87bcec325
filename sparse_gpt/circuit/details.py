"""The numbers the viewer shows when a node is clicked, computed from the model the circuit came from.

Per circuit node: its mean activation at the answer position on each side of the task, the task
loss with only that node ablated (in the full model, and in the circuit, raw: no calibration; a
weight-level circuit keeps only its own weights), and its mean over pretraining text (what it carries
when mean-ablated).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..nodes import NodeLayout
from ..prune.objective import Evaluator
from ..tasks.base import BinaryTask, TaskBatch, encode_pairs
from ..tokenizer import decode
from .artefact import Circuit


@dataclass
class NodeNumbers:
    side_means: list[float]      # mean activation at the answer position, per side of the task
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


def _activations_at_answer(model, layout: NodeLayout, batch: TaskBatch, names: list[str]) -> dict[str, torch.Tensor]:
    """{location: (n, width)} activations at each prompt's answer position, for the locations of `names`."""
    locations = sorted({layout.locate(n)[0] for n in names})
    part = batch.trimmed()
    with model.hooks(record=locations) as cache:
        model(part.tokens)
    rows = torch.arange(len(batch), device=part.tokens.device)
    return {loc: cache[loc][rows, batch.positions].float() for loc in locations}


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
    at_answer = _activations_at_answer(model, layout, batch, circuit.node_names)

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
        nodes[name] = NodeNumbers(side_means=[float(acts[side == s].mean()) for s in (0, 1)],
                                  pretraining_mean=float(node_means[int(idx[k])]), ablated_alone=losses_alone[k],
                                  circuit_without=losses_without[k])
    return NodeDetails(sides=labels, n_prompts=len(batch), baseline=baseline, nodes=nodes)
