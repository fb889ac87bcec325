"""The nodes a circuit is made of: their addresses, their mean activations, and the weights between them.

Nodes live at the model's hook points: residual reads ({i}.attn.act_in, {i}.mlp.act_in), residual
writes ({i}.attn.resid_delta, {i}.mlp.resid_delta), MLP neurons ({i}.mlp.post_act) and attention
q/k/v channels. All nodes of a model are numbered 0..N-1 in one flat vector, location by location,
so masks and rankings are single tensors and nothing loops over nodes.

What a pruned or ablated node carries (its mean over pretraining text, or zero) is decided here, in
`ablation_values`, for the pruner, the validation, the viewer and the interventions alike.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import DataConfig, ModelConfig
from .data import validation_windows
from .tensor_cache import load_or_compute

# Per layer, in forward order: (hook suffix, kind)
LOCATION_KINDS = (
    ("attn.act_in", "resid_read"), ("attn.q", "attn_q"), ("attn.k", "attn_k"), ("attn.v", "attn_v"),
    ("attn.resid_delta", "resid_write"), ("mlp.act_in", "resid_read"), ("mlp.post_act", "mlp_neuron"),
    ("mlp.resid_delta", "resid_write"),
)
ABLATIONS = ("mean", "zero")
MEANS_FILE = "node_means.safetensors"
_NAME = re.compile(r"^(\d+)\.(attn|mlp)\.(\w+)\[(\d+)\]$")


@dataclass(frozen=True)
class Location:
    name: str       # hook name, e.g. "3.attn.q"
    layer: int
    kind: str
    width: int
    offset: int     # index of this location's first node in the flat node vector

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.width)


@dataclass(frozen=True)
class CircuitNode:
    """One node of a circuit, as circuit.json records it."""
    name: str                    # '0.mlp.post_act[12]'
    location: str                # '0.mlp.post_act'
    layer: int
    kind: str                    # resid_read | resid_write | attn_q | attn_k | attn_v | mlp_neuron
    index: int                   # within its location
    score: float | None = None   # the mask's ranking score (absent in hand-made circuits)

    def to_dict(self) -> dict:
        d = {"name": self.name, "location": self.location, "layer": self.layer, "kind": self.kind,
             "index": self.index}
        return d if self.score is None else d | {"score": self.score}


@dataclass(frozen=True)
class CircuitEdge:
    """A nonzero weight between two kept nodes: source feeds target through `matrix`."""
    source: str
    target: str
    weight: float
    matrix: str      # parameter name, e.g. 'transformer.h.0.mlp.c_fc.weight'

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "weight": self.weight, "matrix": self.matrix}


class NodeLayout:
    """Numbering of every node of a model; names are '{hook}[{index}]', e.g. '0.mlp.post_act[12]'."""

    def __init__(self, cfg: ModelConfig):
        self.config = cfg
        widths = {"resid_read": cfg.d_model, "resid_write": cfg.d_model, "mlp_neuron": cfg.mlp_width,
                  "attn_q": cfg.n_head * cfg.d_head, "attn_k": cfg.n_head * cfg.d_head,
                  "attn_v": cfg.n_head * cfg.d_head}
        self.locations: list[Location] = []
        offset = 0
        for layer in range(cfg.n_layer):
            for suffix, kind in LOCATION_KINDS:
                self.locations.append(Location(f"{layer}.{suffix}", layer, kind, widths[kind], offset))
                offset += widths[kind]
        self.n_nodes = offset
        self.by_name = {loc.name: loc for loc in self.locations}

    def node_name(self, i: int) -> str:
        loc = self.location_of(i)
        return f"{loc.name}[{i - loc.offset}]"

    def location_of(self, i: int) -> Location:
        if not 0 <= i < self.n_nodes:
            raise IndexError(f"node {i} out of range: this model has {self.n_nodes} nodes")
        for loc in self.locations:
            if i < loc.offset + loc.width:
                return loc
        raise AssertionError("unreachable")

    def node_index(self, name: str) -> int:
        m = _NAME.match(name)
        loc = self.by_name.get(name.split("[")[0]) if m else None
        if loc is None:
            raise KeyError(f"no node named {name!r}; names look like '0.mlp.post_act[12]' "
                           f"with a location among: {', '.join(s for s, _ in LOCATION_KINDS)}")
        idx = int(m.group(4))
        if idx >= loc.width:
            raise IndexError(f"node {name!r}: index {idx} out of range ({loc.name} has {loc.width} nodes)")
        return loc.offset + idx

    def locate(self, name: str) -> tuple[str, int]:
        """(hook name, index within it) of a node; a bad name raises KeyError / IndexError naming it."""
        i = self.node_index(name)
        loc = self.location_of(i)
        return loc.name, i - loc.offset

    def kept_per_location(self, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """keep: (N,) bool -> {hook name: sorted indices within the location} (non-empty ones only)."""
        out = {}
        for loc in self.locations:
            idx = keep[loc.slice].nonzero().flatten()
            if len(idx):
                out[loc.name] = idx
        return out

    def circuit_nodes(self, keep: torch.Tensor, scores: torch.Tensor | None = None) -> list[CircuitNode]:
        """The kept nodes as records, location by location, with their ranking scores."""
        out = []
        for loc_name, idx in self.kept_per_location(keep).items():
            loc = self.by_name[loc_name]
            for i in idx.tolist():
                score = float(scores[loc.offset + i]) if scores is not None else None
                out.append(CircuitNode(f"{loc_name}[{i}]", loc_name, loc.layer, loc.kind, i, score))
        return out

    def keep_mask(self, names) -> torch.Tensor:
        """(N,) bool mask of the nodes called `names`."""
        keep = torch.zeros(self.n_nodes, dtype=torch.bool)
        for name in names:
            keep[self.node_index(name)] = True
        return keep


# ----- weights between kept nodes ----------------------------------------------------------------

# (module path under transformer.h.{i}, source location, target location, part of c_attn or None)
_MATRICES = (("attn.c_attn", "attn.act_in", "attn.q", 0), ("attn.c_attn", "attn.act_in", "attn.k", 1),
             ("attn.c_attn", "attn.act_in", "attn.v", 2), ("attn.c_proj", "attn.v", "attn.resid_delta", None),
             ("mlp.c_fc", "mlp.act_in", "mlp.post_act", None), ("mlp.c_proj", "mlp.post_act", "mlp.resid_delta", None))


@dataclass(frozen=True)
class EdgeGroup:
    """The edges of one weight matrix between two node locations, as index vectors."""
    module: str          # the nn.Linear, e.g. 'transformer.h.0.mlp.c_fc'
    source: str          # source location, e.g. '0.mlp.act_in' (the matrix's input columns)
    target: str          # target location, e.g. '0.mlp.post_act'
    row_offset: int      # the target's first row in the matrix (q, k and v share c_attn)
    src: torch.Tensor    # (E_g,) source index within its location
    dst: torch.Tensor    # (E_g,) target index within its location
    weight: torch.Tensor  # (E_g,) the weights, float32
    offset: int          # index of this group's first edge in the flat edge vector

    @property
    def matrix(self) -> str:
        return f"{self.module}.weight"

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + len(self.src))


class EdgeSet:
    """Every nonzero weight whose two end nodes are kept, numbered 0..E-1 in one flat vector
    (layer by layer: c_attn's q, k, v rows, attn c_proj, mlp c_fc, mlp c_proj; within a matrix,
    target-major), so an edge mask is one tensor. The attention output channel j carries v channel j
    (mixed across positions, not across channels), so the attn c_proj edges start at v channels."""

    def __init__(self, groups: list[EdgeGroup]):
        self.groups = groups
        self.n_edges = sum(len(g.src) for g in groups)

    def __len__(self) -> int:
        return self.n_edges

    def records(self, keep: torch.Tensor | None = None) -> list[CircuitEdge]:
        """The edges as records, in edge order; with `keep` ((E,) bool), only the kept ones."""
        out = []
        for g in self.groups:
            on = None if keep is None else keep[g.slice].tolist()
            for j, (s, d, w) in enumerate(zip(g.src.tolist(), g.dst.tolist(), g.weight.tolist())):
                if on is None or on[j]:
                    out.append(CircuitEdge(f"{g.source}[{s}]", f"{g.target}[{d}]", w, g.matrix))
        return out

    def mask_of(self, records) -> torch.Tensor:
        """(E,) bool: which edges `records` (CircuitEdge or dicts with source, target, matrix) list.
        A record that is not one of these edges raises KeyError naming it."""
        index = {(e.source, e.target, e.matrix): i for i, e in enumerate(self.records())}
        keep = torch.zeros(self.n_edges, dtype=torch.bool)
        for r in records:
            key = (r.source, r.target, r.matrix) if isinstance(r, CircuitEdge) else (r["source"], r["target"], r["matrix"])
            if key not in index:
                raise KeyError(f"edge {key[0]} -> {key[1]} ({key[2]}) is not a nonzero weight between the "
                               "circuit's nodes in this model")
            keep[index[key]] = True
        return keep

    def node_degrees(self, layout: NodeLayout, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) number of kept edges into and out of every node, for an edge mask `keep` (E,)."""
        into = torch.zeros(layout.n_nodes, dtype=torch.long)
        out = torch.zeros(layout.n_nodes, dtype=torch.long)
        for g in self.groups:
            on = keep[g.slice].cpu()
            into.index_add_(0, layout.by_name[g.target].offset + g.dst, on.long())
            out.index_add_(0, layout.by_name[g.source].offset + g.src, on.long())
        return into, out


def edge_set(model, layout: NodeLayout, keep: torch.Tensor) -> EdgeSet:
    """The EdgeSet of the nonzero weights between the nodes `keep` ((N,) bool) keeps."""
    kept = layout.kept_per_location(keep.cpu())
    width = model.config.n_head * model.config.d_head
    groups, offset = [], 0
    with torch.no_grad():
        for i in range(model.config.n_layer):
            for module, src_suffix, dst_suffix, part in _MATRICES:
                src_loc, dst_loc = f"{i}.{src_suffix}", f"{i}.{dst_suffix}"
                src, dst = kept.get(src_loc), kept.get(dst_loc)
                if src is None or dst is None:
                    continue
                name = f"transformer.h.{i}.{module}"
                w = model.get_submodule(name).weight.detach().float().cpu()
                row_offset = 0 if part is None else part * width
                sub = w[(dst + row_offset)[:, None], src[None, :]]  # (dst, src): nn.Linear is (out, in)
                d, s = sub.nonzero().unbind(1)
                if len(d):
                    groups.append(EdgeGroup(name, src_loc, dst_loc, row_offset, src[s], dst[d], sub[d, s], offset))
                    offset += len(d)
    return EdgeSet(groups)


def circuit_edges(model, layout: NodeLayout, keep: torch.Tensor, edge_keep: torch.Tensor | None = None
                  ) -> list[CircuitEdge]:
    """Nonzero weights whose two end nodes are both kept (c_attn, attn c_proj, mlp c_fc, mlp c_proj);
    with `edge_keep` (a mask over edge_set(model, layout, keep)), only the weights it keeps."""
    return edge_set(model, layout, keep).records(edge_keep)


# ----- what an ablated node carries ----------------------------------------------------------------

def ablation_values(ablation: str, means: torch.Tensor) -> torch.Tensor:
    """(N,) value every node carries when pruned or ablated: its mean over pretraining text
    (ablation 'mean') or zero ('zero')."""
    if ablation == "mean":
        return means
    if ablation == "zero":
        return torch.zeros_like(means)
    raise ValueError(f"ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")


@torch.no_grad()
def compute_node_means(model, layout: NodeLayout, windows: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """(N,) mean of every node's activation over all positions of `windows`."""
    device = next(model.parameters()).device
    sums = torch.zeros(layout.n_nodes, dtype=torch.float64)
    count = 0
    names = [loc.name for loc in layout.locations]
    for start in range(0, len(windows), batch):
        x = windows[start:start + batch].to(device)
        with model.hooks(record=names) as cache:
            model(x)
        sums += torch.cat([cache[n].double().sum((0, 1)).cpu() for n in names])
        count += x.numel()
    return (sums / count).float()


def load_or_compute_means(model, layout: NodeLayout, tokenizer, cache_dir: Path, fingerprint: str,
                          data_cfg: DataConfig, n_tokens: int = 65536, log=print) -> torch.Tensor:
    """Node means from cache_dir/node_means.safetensors if it matches `fingerprint`, else computed
    on `n_tokens` of validation text and written there (a stale cache is never used)."""
    key = json.dumps({"fingerprint": fingerprint, "n_tokens": n_tokens, "source": data_cfg.source,
                      "path": data_cfg.path, "n_nodes": layout.n_nodes}, sort_keys=True)

    def compute():
        windows = validation_windows(tokenizer, data_cfg, model.config.block_size, n_tokens)
        return {"means": compute_node_means(model, layout, windows)}
    return load_or_compute(Path(cache_dir) / MEANS_FILE, key, compute, log,
                           f"node means over {n_tokens:,} validation tokens",
                           check=lambda t: check_node_means(t, layout))["means"]


def check_node_means(tensors: dict[str, torch.Tensor], layout: NodeLayout) -> str | None:
    """What is wrong with cached node means for this layout, or None."""
    means = tensors.get("means")
    if set(tensors) != {"means"} or means is None:
        return f"holds {sorted(tensors)}, not one tensor 'means'"
    if means.dtype != torch.float32 or tuple(means.shape) != (layout.n_nodes,):
        return (f"holds means of shape {tuple(means.shape)} ({means.dtype}), but this model has "
                f"{layout.n_nodes} nodes (float32)")
    if not bool(torch.isfinite(means).all()):
        return "holds means that are not finite"
    return None
