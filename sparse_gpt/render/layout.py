"""Where every node of a circuit goes in a diagram; computed once, shared by every renderer.

Residual channels are vertical lines (x = 0 .. R-1, one per channel any read or write touches);
residual reads and writes sit on their channel's line. Attention q/k/v channels (grouped by head)
and MLP neurons sit in a band to the right. Rows, bottom to top, per layer: attention reads,
q/k/v, attention writes, MLP reads, neurons, MLP writes.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..circuit import Circuit

ROWS = ("attn.act_in", "attn.qkv", "attn.resid_delta", "mlp.act_in", "mlp.post_act", "mlp.resid_delta")
_QKV_ORDER = {"attn.q": 0, "attn.k": 1, "attn.v": 2}
KIND_COLOURS = {"resid_read": "#4c72b0", "resid_write": "#55a868", "attn_q": "#c44e52", "attn_k": "#dd8452",
                "attn_v": "#8172b3", "mlp_neuron": "#937860"}
EDGE_COLOURS = {"positive": "#d62728", "negative": "#1f77b4"}


@dataclass
class Layout:
    positions: dict[str, tuple[float, float]]   # node name -> (x, y)
    channels: list[int]                         # residual channel of each x in [0, R)
    channel_span: dict[int, tuple[float, float]]  # channel -> (lowest y, highest y) it is used at
    row_labels: dict[float, str]                # y -> "layer 0 attn reads", ...
    width: float


def row_of(node) -> int:
    """The node's row in the computation, counted from layer 0's attention reads (ROWS per layer)."""
    suffix = node.location.split(".", 1)[1]
    return node.layer * len(ROWS) + ROWS.index("attn.qkv" if suffix in _QKV_ORDER else suffix)


def circuit_layout(circuit: Circuit) -> Layout:
    nodes = circuit.nodes
    d_head = circuit.model.get("d_head", 16)
    resid = sorted({n.index for n in nodes if n.kind in ("resid_read", "resid_write")})
    x_of_channel = {c: float(i) for i, c in enumerate(resid)}
    band = len(resid) + 1.0
    positions: dict[str, tuple[float, float]] = {}
    span: dict[int, tuple[float, float]] = {}
    banded: dict[float, list[tuple[tuple, str]]] = {}
    for n in nodes:
        suffix = n.location.split(".", 1)[1]
        y = float(row_of(n))
        if n.kind in ("resid_read", "resid_write"):
            positions[n.name] = (x_of_channel[n.index], y)
            lo, hi = span.get(n.index, (y, y))
            span[n.index] = (min(lo, y), max(hi, y))
        else:
            head = n.index // d_head if suffix in _QKV_ORDER else 0
            key = (head, _QKV_ORDER.get(suffix, 0), n.index)
            banded.setdefault(y, []).append((key, n.name))
    width = band
    for y, items in banded.items():
        for j, (_, name) in enumerate(sorted(items)):
            positions[name] = (band + j, y)
        width = max(width, band + len(items))
    n_layers = 1 + max((n.layer for n in nodes), default=0)
    labels = {float(i * len(ROWS) + r): f"L{i} {row}" for i in range(n_layers) for r, row in enumerate(ROWS)}
    return Layout(positions, resid, span, labels, width)


def edge_count(circuit: Circuit) -> str:
    """'40 edges (weights; 302 between its nodes)' for a weight-level circuit, '302 edges' otherwise."""
    n = len(circuit.edges)
    if circuit.node_level_edges is None or circuit.node_level_edges == n:
        return f"{n} edges"
    return f"{n} edges (weights; {circuit.node_level_edges} between its nodes)"
