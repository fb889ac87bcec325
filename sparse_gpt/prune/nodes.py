"""The nodes a circuit is made of, and the weight edges between kept nodes (METHOD.md section 3).

Nodes live at the model's hook points: residual reads ({i}.attn.act_in, {i}.mlp.act_in), residual
writes ({i}.attn.resid_delta, {i}.mlp.resid_delta), MLP neurons ({i}.mlp.post_act) and attention
q/k/v channels. All nodes of a model are numbered 0..N-1 in one flat vector, location by location,
so masks and rankings are single tensors and nothing loops over nodes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..config import ModelConfig

# Per layer, in forward order: (hook suffix, kind)
LOCATION_KINDS = (
    ("attn.act_in", "resid_read"), ("attn.q", "attn_q"), ("attn.k", "attn_k"), ("attn.v", "attn_v"),
    ("attn.resid_delta", "resid_write"), ("mlp.act_in", "resid_read"), ("mlp.post_act", "mlp_neuron"),
    ("mlp.resid_delta", "resid_write"),
)
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

    def kept_per_location(self, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """keep: (N,) bool -> {hook name: sorted indices within the location} (non-empty ones only)."""
        out = {}
        for loc in self.locations:
            idx = keep[loc.slice].nonzero().flatten()
            if len(idx):
                out[loc.name] = idx
        return out


def circuit_edges(model, layout: NodeLayout, keep: torch.Tensor) -> list[dict]:
    """Nonzero weights whose two end nodes are both kept (c_fc, mlp c_proj, c_attn, attn c_proj).

    The attention output channel j carries v channel j (mixed across positions, not across channels),
    so the attn c_proj edges start at v channels.
    """
    kept = layout.kept_per_location(keep)
    width = model.config.n_head * model.config.d_head
    edges = []

    def add(matrix_name: str, w: torch.Tensor, src_loc: str, dst_loc: str, row_offset: int = 0):
        src, dst = kept.get(src_loc), kept.get(dst_loc)
        if src is None or dst is None:
            return
        sub = w[(dst + row_offset)[:, None], src[None, :]]  # (dst, src): nn.Linear is (out, in)
        for d, s in sub.nonzero().tolist():
            edges.append({"source": f"{src_loc}[{int(src[s])}]", "target": f"{dst_loc}[{int(dst[d])}]",
                          "weight": float(sub[d, s]), "matrix": matrix_name})

    with torch.no_grad():
        for i, block in enumerate(model.transformer.h):
            c_attn = block.attn.c_attn.weight.detach().float().cpu()
            for j, part in enumerate("qkv"):
                add(f"transformer.h.{i}.attn.c_attn.weight", c_attn, f"{i}.attn.act_in", f"{i}.attn.{part}", j * width)
            add(f"transformer.h.{i}.attn.c_proj.weight", block.attn.c_proj.weight.detach().float().cpu(),
                f"{i}.attn.v", f"{i}.attn.resid_delta")
            add(f"transformer.h.{i}.mlp.c_fc.weight", block.mlp.c_fc.weight.detach().float().cpu(),
                f"{i}.mlp.act_in", f"{i}.mlp.post_act")
            add(f"transformer.h.{i}.mlp.c_proj.weight", block.mlp.c_proj.weight.detach().float().cpu(),
                f"{i}.mlp.post_act", f"{i}.mlp.resid_delta")
    return edges
