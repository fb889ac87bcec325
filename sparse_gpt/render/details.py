"""What the viewer shows when a node is clicked, computed from the model the circuit came from.

Per circuit node: its mean activation at the answer position on each side of the task, the task
loss with only that node ablated (in the full model, and in the circuit), its mean over pretraining
text (what it carries when ablated) and its top/bottom-activating contexts (sparse_gpt.explain).
"""
from __future__ import annotations

import torch
from tqdm import tqdm

from ..explain import NodeContexts
from ..prune.circuit import keep_mask
from ..prune.nodes import NodeLayout
from ..prune.pruner import Evaluator
from ..tasks.base import BinaryTask, encode_pairs
from ..tokenizer import decode


def _sides(task: BinaryTask, batch, tokenizer) -> tuple[list[str], torch.Tensor]:
    """Labels of the task's two sides and each row's side (0/1). Fixed-answer tasks split by the
    correct answer; tasks whose answers are copied from the prompt split by the pair member."""
    if task.answers is not None:
        first = batch.correct[0]  # every pair has both answers, so row 0's alternative is the other side
        labels = [decode(tokenizer, [int(first)]), decode(tokenizer, [int(batch.alternative[0])])]
        return [f"answer \u00ab{t}\u00bb" for t in labels], (batch.correct != first).long()
    return ["first prompt of each pair", "second prompt of each pair"], torch.arange(len(batch)) % 2


@torch.no_grad()
def node_details(model, tokenizer, circuit: dict, task: BinaryTask, means: torch.Tensor,
                 contexts: NodeContexts | None = None, n_pairs: int = 16, seed: int = 20_011,
                 n_contexts: int = 6, progress: bool = True) -> dict:
    """{"sides", "baseline", "n_prompts", "nodes": {name: {...}}} for circuit.html.

    Two task-loss evaluations per node make this the slow part of the page (~0.12 s per node for
    the CPU model), hence the modest default of 16 pairs."""
    device = next(model.parameters()).device
    layout = NodeLayout(model.config)
    settings = circuit["provenance"]["pruner"]
    node_means = means.to(device)
    ablate_to = torch.zeros_like(node_means) if settings["ablation"] == "zero" else node_means
    batch = encode_pairs(task, task.pairs(n_pairs, seed, "prune"), tokenizer, model.config.block_size).to(device)
    # two length buckets, each trimmed to its longest prompt: a third less padding to run
    ev = Evaluator(model, layout, ablate_to, settings["freeze_norms"], chunk=max(1, (len(batch) + 1) // 2))
    labels, side = _sides(task, batch, tokenizer)
    side = side.to(device)
    keep = keep_mask(circuit, layout).float().to(device)
    cal = circuit["calibration"]
    names = [n["name"] for n in circuit["nodes"]]

    T = int(batch.lengths.max())
    locations = sorted({layout.location_of(layout.node_index(n)).name for n in names})
    with model.hooks(record=locations) as cache:
        model(batch.tokens[:, :T])
    rows = torch.arange(len(batch), device=device)
    at_answer = {loc: cache[loc][rows, batch.positions].float() for loc in locations}  # (n, width)

    baseline = {"full": ev.loss(batch, None), "circuit": ev.loss(batch, keep, cal)}
    nodes = {}
    for name in tqdm(names, desc="node details", disable=not progress, leave=False, dynamic_ncols=True):
        i = layout.node_index(name)
        loc = layout.location_of(i)
        acts = at_answer[loc.name][:, i - loc.offset]
        alone = torch.ones_like(keep)
        alone[i] = 0.0
        without = keep.clone()
        without[i] = 0.0
        nodes[name] = {
            "side_means": [float(acts[side == s].mean()) for s in (0, 1)],
            "pretraining_mean": float(node_means[i]),
            "ablated_alone": ev.loss(batch, alone),
            "circuit_without": ev.loss(batch, without, cal),
            "explanation": contexts.explain(name, n_contexts).to_dict() if contexts is not None else None,
        }
    return {"sides": labels, "n_prompts": len(batch), "baseline": baseline, "nodes": nodes}
