"""Attribution-graph JSON for Neuronpedia and circuit-tracer's local viewer.

One graph per representative prompt of the circuit's task (the first pairs the pruner drew, both
prompts of each, as the model sees them: sparse_gpt.tasks.encode_pair). A graph is the circuit laid
out on that prompt:

- an `embedding` node per prompt token (layer "E");
- every circuit node at the answer position (the prompt's last token), its layer the model layer,
  its feature id the node's number in the model's node layout, `activation` its value on this
  prompt and `clerp` its label from the explanations; `feature_type` says which kind of node it is
  (resid_read, attn_q, attn_k, attn_v, resid_write, mlp_neuron);
- a `logit` node for each of the two answer tokens, with the full model's probability.

Links are weights, not attributions: every edge of circuit.json (the weight between two kept
nodes), plus the residual stream's paths between kept nodes, each weighted by what lies on it: a
write to a later read of the same channel by that read's norm gain, the answer token's embedding
to a read by embedding value times gain, and a write to an answer logit by the final norm's gain
times the unembedding. Attention's mixing across positions has no weight, so q/k/v channels sit at
the answer position like every other node.

The directory also gets `graph-metadata.json`, the index circuit-tracer's local viewer lists
graphs from. `check_graph` checks a graph against the fields the format requires.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..tasks import encode_pair, get_task
from ..tokenizer import decode
from .common import ExportError, ExportInput

GRAPH_INDEX = "graph-metadata.json"

# Required fields of the format and their JSON types (Neuronpedia's graph schema); circuit-tracer's
# reader also requires metadata.transcoder_list and every qParams field.
_REQUIRED = {
    "": {"metadata": dict, "qParams": dict, "nodes": list, "links": list},
    "metadata": {"slug": str, "scan": str, "prompt_tokens": list, "prompt": str,
                 "transcoder_list": list},
    "qParams": {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str,
                "sg_pos": str},
    "node": {"node_id": str, "feature": (int, type(None)), "layer": (str, int), "ctx_idx": int,
             "feature_type": str, "jsNodeId": str, "clerp": str},
    "link": {"source": str, "target": str, "weight": (int, float)},
}
_OPTIONAL_NUMBERS = ("influence", "activation", "token_prob")


def _typed(obj: dict, spec: dict, where: str) -> list[str]:
    problems = []
    for key, kind in spec.items():
        if key not in obj:
            problems.append(f"{where}: missing {key!r}")
        elif not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            problems.append(f"{where}: {key!r} is {type(obj[key]).__name__}")
    return problems


def check_graph(graph: Any) -> list[str]:
    """What keeps `graph` from being a valid attribution graph (empty when nothing does): required
    fields and their types, links between existing nodes, prompt tokens as strings, context
    indices inside the prompt, and the `(p=...)` that the viewers read a logit's probability from."""
    if not isinstance(graph, dict):
        return [f"a graph is a JSON object, got {type(graph).__name__}"]
    problems = _typed(graph, _REQUIRED[""], "graph")
    if problems:
        return problems
    problems += _typed(graph["metadata"], _REQUIRED["metadata"], "metadata")
    problems += _typed(graph["qParams"], _REQUIRED["qParams"], "qParams")
    tokens = graph["metadata"].get("prompt_tokens", [])
    if not all(isinstance(t, str) for t in tokens):
        problems.append("metadata: prompt_tokens must all be strings")
    ids = set()
    for i, node in enumerate(graph["nodes"]):
        where = f"node {i}"
        if not isinstance(node, dict):
            problems.append(f"{where}: not an object")
            continue
        problems += _typed(node, _REQUIRED["node"], where)
        for key in _OPTIONAL_NUMBERS:
            if node.get(key) is not None and not isinstance(node[key], (int, float)):
                problems.append(f"{where}: {key!r} must be a number or null")
        if isinstance(node.get("ctx_idx"), int) and not 0 <= node["ctx_idx"] < len(tokens):
            problems.append(f"{where}: ctx_idx {node['ctx_idx']} outside the prompt's "
                            f"{len(tokens)} tokens")
        if node.get("feature_type") == "logit" and "(p=" not in str(node.get("clerp")):
            problems.append(f"{where}: a logit's clerp must say its probability as '(p=...)'")
        if node.get("node_id") in ids:
            problems.append(f"{where}: duplicate node_id {node['node_id']!r}")
        ids.add(node.get("node_id"))
    for i, link in enumerate(graph["links"]):
        if not isinstance(link, dict):
            problems.append(f"link {i}: not an object")
            continue
        problems += _typed(link, _REQUIRED["link"], f"link {i}")
        for end in ("source", "target"):
            if isinstance(link.get(end), str) and link[end] not in ids:
                problems.append(f"link {i}: {end} {link[end]!r} is no node of the graph")
    return problems


# ----- building ------------------------------------------------------------------------------------


def _scan(inp: ExportInput) -> str:
    """The model id the viewers group graphs by."""
    return f"sparse_gpt-{inp.loaded.path.name}-{inp.loaded.fingerprint[:8]}"


def _prompts(inp: ExportInput, n_pairs: int) -> list[tuple[str, list[int], int, int]]:
    """(slug suffix, prompt ids, answer id, alternative id) of the representative prompts."""
    try:
        task = get_task(inp.circuit.task)
    except KeyError as e:
        raise ExportError(f"the circuit's task {inp.circuit.task!r} is not a registered task "
                          f"({e}); only the csv format needs no task") from None
    block = inp.loaded.model.config.block_size
    out = []
    for i, pair in enumerate(task.pairs(4 * n_pairs, inp.circuit.settings.seed, "prune")):
        try:
            encoded = encode_pair(task, pair, inp.loaded.tokenizer, block)
        except ValueError:
            continue  # a pair this tokenizer cannot pose; the next one will do
        out += [(f"{i}{side}", e.prompt_ids, e.answer_id, e.alternative_id)
                for side, e in zip("ab", encoded)]
        if len(out) == 2 * n_pairs:
            break
    return out


def _node(node_id: str, feature: int | None, layer: str, pos: int, feature_type: str,
          js_id: str, clerp: str, **extra) -> dict:
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": pos,
            "feature_type": feature_type, "jsNodeId": js_id, "clerp": clerp, **extra}


@torch.no_grad()
def _graph(inp: ExportInput, slug: str, ids: list[int], answer: int, alternative: int,
           labels: dict[str, str]) -> dict:
    model, layout, tok = inp.loaded.model, inp.layout, inp.loaded.tokenizer
    cfg = model.config
    device = next(model.parameters()).device
    names = inp.circuit.node_names
    locations = sorted({layout.locate(n)[0] for n in names})
    with model.hooks(record=locations) as cache:
        logits = model(torch.tensor([ids], device=device))[0, -1].float()
    probs = torch.softmax(logits, -1)
    pos = len(ids) - 1
    tokens = [decode(tok, [i]) for i in ids]

    nodes = [_node(f"E_{t}_{p}", p, "E", p, "embedding", f"E_{t}-{p}", tokens[p])
             for p, t in enumerate(ids)]
    node_id = {}
    for n in inp.circuit.nodes:
        flat = layout.node_index(n.name)
        node_id[n.name] = f"{n.layer}_{flat}_{pos}"
        value = float(cache[n.location][0, pos, n.index])
        nodes.append(_node(node_id[n.name], flat, str(n.layer), pos, n.kind, f"{n.layer}_{flat}-0",
                           labels.get(n.name, n.name), activation=value, influence=None))
    logit_layer = str(cfg.n_layer + 1)
    logit_id = {}
    for t in (answer, alternative):
        logit_id[t] = f"{logit_layer}_{t}_{pos}"
        p = float(probs[t])
        nodes.append(_node(logit_id[t], t, logit_layer, pos, "logit", f"L_{t}-{pos}",
                           f"Output {decode(tok, [t])!r} (p={p:.3f})", token_prob=p,
                           is_target_logit=t == answer))

    links = [{"source": node_id[e.source], "target": node_id[e.target], "weight": e.weight}
             for e in inp.circuit.edges]
    links += _residual_links(inp, node_id, f"E_{ids[-1]}_{pos}", ids[-1], logit_id)
    return {
        "metadata": {
            "slug": slug, "scan": _scan(inp), "prompt_tokens": tokens, "prompt": decode(tok, ids),
            "transcoder_list": [], "schema_version": 1,
            "info": {"description": f"{inp.circuit.task} circuit of {inp.loaded.path} "
                                    f"({len(names)} nodes); links are weights, not attributions",
                     "generator": {"name": "sparse_gpt", "version": __version__},
                     "create_time_ms": int(time.time() * 1000)},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                    "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def _gain(norm: torch.nn.Module, channel: int) -> float:
    return float(norm.weight[channel]) if getattr(norm, "weight", None) is not None else 1.0


def _residual_links(inp: ExportInput, node_id: dict[str, str], embed_id: str, token: int,
                    logit_id: dict[int, str]) -> list[dict]:
    """The residual stream's paths between kept nodes, each weighted by what lies on it."""
    model = inp.loaded.model
    blocks = model.transformer.h
    # Reads in forward order: (order, channel, name, norm); attention reads before the MLP's.
    reads, writes = [], []
    for n in inp.circuit.nodes:
        part = n.location.split(".")[1]
        order = 2 * n.layer + (part == "mlp")
        if n.kind == "resid_read":
            norm = blocks[n.layer].ln_1 if part == "attn" else blocks[n.layer].ln_2
            reads.append((order, n.index, n.name, norm))
        elif n.kind == "resid_write":
            writes.append((order, n.index, n.name))
    embedding = model.transformer.wte.weight
    links = []
    for _, c, name, norm in reads:
        value = float(embedding[token, c]) * _gain(norm, c)
        if value:
            links.append({"source": embed_id, "target": node_id[name], "weight": value})
    for w_order, c, w_name in writes:
        links += [{"source": node_id[w_name], "target": node_id[r_name], "weight": _gain(norm, c)}
                  for r_order, rc, r_name, norm in reads if rc == c and r_order > w_order]
        for t, target in logit_id.items():
            value = _gain(model.transformer.ln_f, c) * float(model.lm_head.weight[t, c])
            if value:
                links.append({"source": node_id[w_name], "target": target, "weight": value})
    return links


def neuronpedia_graphs(inp: ExportInput, labels: dict[str, str], n_pairs: int = 2) -> list[dict]:
    """The circuit as attribution graphs, one per representative prompt (both prompts of the
    first `n_pairs` pairs the task poses on this tokenizer)."""
    prompts = _prompts(inp, n_pairs)
    if not prompts:
        raise ExportError(f"task {inp.circuit.task} has no pair this checkpoint's tokenizer can pose")
    base = f"{inp.circuit.task}-{inp.loaded.fingerprint[:8]}"
    return [_graph(inp, f"{base}-{suffix}", ids, answer, alternative, labels)
            for suffix, ids, answer, alternative in prompts]


def write_neuronpedia(graphs: list[dict], out: Path) -> list[Path]:
    """Write each graph as `<slug>.json` and list them in `graph-metadata.json` (kept entries of
    other slugs already there); refuse a graph that fails check_graph."""
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / GRAPH_INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"graphs": []}
    written = []
    for graph in graphs:
        problems = check_graph(graph)
        if problems:
            raise ExportError(f"graph {graph['metadata'].get('slug')} is not valid: {problems[0]}")
        path = out / f"{graph['metadata']['slug']}.json"
        path.write_text(json.dumps(graph), encoding="utf-8")
        written.append(path)
        entry = {k: v for k, v in graph["metadata"].items() if k != "info"}
        index["graphs"] = [g for g in index["graphs"] if g.get("slug") != entry["slug"]] + [entry]
    index_path.write_text(json.dumps(index, indent=1), encoding="utf-8")
    return written
