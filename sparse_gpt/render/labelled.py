"""A small circuit drawn to be read: every node a box saying what it is and what it responds to,
every weight labelled with its value, input tokens at the bottom and the answer at the top.

The boxes need the model's evidence: circuit.node_details (each node's mean activation on each side
of the task, and the circuit's loss without it) and explain.NodeContexts (the tokens it fires on in
pretraining text), so the pipeline draws this beside circuit.html. Past MAX_NODES the boxes crowd
each other out and no ordering keeps the picture legible; larger circuits get circuit.png only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from ..circuit import Circuit, NodeDetails
from ..explain import NodeContexts
from ..fileio import atomic_save_figure
from .layout import EDGE_COLOURS, KIND_COLOURS, ROWS, edge_count, row_of

MAX_NODES = 40
_ROW_NAMES = ("attention reads", "attention q / k / v", "attention writes", "MLP reads", "MLP neurons",
              "MLP writes")
assert len(_ROW_NAMES) == len(ROWS)


@dataclass
class ReadableLayout:
    positions: dict[str, tuple[float, float]]   # node -> (x, y); y 0 is the input, the top row the answer
    row_names: dict[int, str]                    # y -> 'layer 1 attention q / k / v'
    residual: list[tuple[str, str, int]]         # (earlier write or 'input', later read or 'answer', channel)
    width: int                                   # most nodes in one row
    top: int                                     # y of the answer


def _residual_links(circuit: Circuit) -> list[tuple[str, str, int]]:
    """Residual-stream links: each read of a channel from the circuit's earlier writes to it (or from
    the token embeddings when none), and each write nothing later reads to the unembedding."""
    links = []
    reads = [n for n in circuit.nodes if n.kind == "resid_read"]
    writes = [n for n in circuit.nodes if n.kind == "resid_write"]
    for r in reads:
        sources = [w.name for w in writes if w.index == r.index and row_of(w) < row_of(r)]
        links += [(s, r.name, r.index) for s in sources or ["input"]]
    for w in writes:
        if not any(r.index == w.index and row_of(r) > row_of(w) for r in reads):
            links.append((w.name, "answer", w.index))
    return links


def readable_layout(circuit: Circuit, sweeps: int = 4) -> ReadableLayout:
    """Rows follow the computation (only rows that hold a node). Within a row, nodes are ordered by
    the mean x of their neighbours (weights and residual links) in the rows below, then above,
    alternately for a few sweeps (the barycentre heuristic of layered graph drawing), which
    removes most edge crossings."""
    rows: dict[int, list[str]] = {}
    for n in sorted(circuit.nodes, key=lambda n: n.index):
        rows.setdefault(row_of(n), []).append(n.name)
    residual = _residual_links(circuit)
    links = [(e.source, e.target) for e in circuit.edges] + [(s, t) for s, t, _ in residual]
    below: dict[str, list[str]] = {}
    above: dict[str, list[str]] = {}
    for source, target in links:
        if source != "input" and target != "answer":
            below.setdefault(target, []).append(source)
            above.setdefault(source, []).append(target)
    width = max((len(v) for v in rows.values()), default=1)
    keys = sorted(rows)
    x: dict[str, float] = {}

    def place(key: int) -> None:
        start = (width - len(rows[key])) / 2
        x.update({name: start + j for j, name in enumerate(rows[key])})

    for key in keys:
        place(key)
    for sweep in range(sweeps):
        neighbours, order = (below, keys) if sweep % 2 == 0 else (above, keys[::-1])
        for key in order:
            def centre(name: str) -> float:
                xs = [x[m] for m in neighbours.get(name, [])]
                return sum(xs) / len(xs) if xs else x[name]
            rows[key].sort(key=centre)  # stable: a node without neighbours there keeps its place
            place(key)
    positions = {name: (x[name], float(y)) for y, key in enumerate(keys, start=1) for name in rows[key]}
    row_names = {y: f"layer {key // len(ROWS)} {_ROW_NAMES[key % len(ROWS)]}" for y, key in enumerate(keys, start=1)}
    top = len(keys) + 1
    positions |= {"input": ((width - 1) / 2, 0.0), "answer": ((width - 1) / 2, float(top))}
    return ReadableLayout(positions, row_names, residual, width, top)


def side_names(details: NodeDetails) -> list[str]:
    """Short names of the task's two sides for the boxes: the answer token where the side is one
    ('answer «'»' -> '«'»'), else A and B (explained in the title)."""
    if all(side.startswith("answer ") for side in details.sides):
        return [side.removeprefix("answer ") for side in details.sides]
    return ["A", "B"]


def _token(text: str, most: int = 8) -> str:
    text = repr(text.replace("\n", "\u21b5"))
    return text if len(text) <= most + 2 else text[:most + 1] + "\u2026'"


def node_text(name: str, details: NodeDetails, contexts: NodeContexts | None) -> str:
    """The box of one node: its name, its mean activation on each side of the task, what it fires on
    in pretraining text, and the circuit's raw loss without it."""
    numbers = details.nodes[name]
    lines = [name, "  ".join(f"{s} {m:+.2f}" for s, m in zip(side_names(details), numbers.side_means))]
    if contexts is not None:
        lines.append("fires on " + " ".join(_token(t.token) for t in contexts.explain(name, 1).top_tokens[:3]))
    lines.append(f"loss without it {numbers.circuit_without:.2f}")
    return "\n".join(lines)


def _draw_edges(ax, circuit: Circuit, lay: ReadableLayout, half: float) -> None:
    wmax = max((abs(e.weight) for e in circuit.edges), default=1.0) or 1.0
    for i, e in enumerate(circuit.edges):
        (x0, y0), (x1, y1) = lay.positions[e.source], lay.positions[e.target]
        colour = EDGE_COLOURS["positive" if e.weight > 0 else "negative"]
        ax.plot([x0, x1], [y0 + half, y1 - half], color=colour, lw=0.6 + 2.4 * abs(e.weight) / wmax, alpha=0.7,
                zorder=1)
        t = 0.3 + 0.45 * ((0.618 * i) % 1)  # labels staggered along their edges, so that few collide
        ax.text(x0 + t * (x1 - x0), y0 + half + t * (y1 - y0 - 2 * half), f"{e.weight:+.2g}", fontsize=5.5,
                color=colour, ha="center", va="center", zorder=3,
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})
    for source, target, channel in lay.residual:
        (x0, y0), (x1, y1) = lay.positions[source], lay.positions[target]
        ax.plot([x0, x1], [y0 + (half if source != "input" else 0.15), y1 - (half if target != "answer" else 0.15)],
                color="#999999", lw=0.8, ls=":", zorder=0)
    heads = {}  # q and k channels of one head pair up: their product is the attention score
    for n in circuit.nodes:
        if n.kind in ("attn_q", "attn_k"):
            heads.setdefault((n.layer, n.index), {})[n.kind] = n.name
    for pair in heads.values():
        if len(pair) == 2:
            (x0, y0), (x1, y1) = lay.positions[pair["attn_q"]], lay.positions[pair["attn_k"]]
            ax.annotate("", (x1, y1 - half), (x0, y0 - half), zorder=0,
                        arrowprops={"arrowstyle": "-", "color": KIND_COLOURS["attn_q"], "lw": 0.8, "ls": "--",
                                    "connectionstyle": "arc3,rad=0.4"})


def render_labelled(circuit: Circuit, details: NodeDetails, contexts: NodeContexts | None,
                    out_prefix: str | Path) -> list[Path]:
    """Write OUT_PREFIX.png and OUT_PREFIX.svg; returns their paths. Refuses circuits of more than
    MAX_NODES nodes (ValueError): their boxes would overlap."""
    if len(circuit.nodes) > MAX_NODES:
        raise ValueError(f"{len(circuit.nodes)} nodes: a diagram with every node labelled stays legible up to "
                         f"{MAX_NODES}")
    lay = readable_layout(circuit)
    fig = Figure(figsize=(max(9.0, 2.0 * lay.width + 2.0), 1.15 * (lay.top + 1) + 0.8))
    ax = fig.subplots()
    half = 0.24  # half a box's height, in rows
    _draw_edges(ax, circuit, lay, half)
    kinds = {n.name: n.kind for n in circuit.nodes}
    for name, kind in kinds.items():
        ax.text(*lay.positions[name], node_text(name, details, contexts), ha="center", va="center", fontsize=5.5,
                zorder=2, linespacing=1.25,
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": KIND_COLOURS[kind], "lw": 1.2})
    names = side_names(details)
    ends = {"input": "input tokens (embeddings)", "answer": "answer: " + " vs ".join(names) + " (unembedding)"}
    for name, text in ends.items():
        ax.text(*lay.positions[name], text, ha="center", va="center", fontsize=7, zorder=2,
                bbox={"boxstyle": "round,pad=0.4", "fc": "#eeeeee", "ec": "#777777"})
    for y, label in lay.row_names.items():
        ax.text(-0.9, y, label, ha="right", va="center", fontsize=6.5, color="#555555")
    ax.set_xlim(-2.6, lay.width + 0.2)
    ax.set_ylim(-0.6, lay.top + 0.6)
    ax.axis("off")
    m = circuit.metrics
    losses = "" if m is None else (f"; raw loss {m.circuit_uncalibrated['templated'].loss:.3f} "
                                   f"(full model {m.full['templated'].loss:.3f})")
    legend = ", ".join(f"{k} ({c})" for k, c in (("box edge", "node kind"), ("red", "positive weight"),
                                                  ("blue", "negative"), ("dotted", "residual stream"),
                                                  ("dashed", "q·k pair")))
    sides = "" if names != ["A", "B"] else f" (A: {details.sides[0]}, B: {details.sides[1]})"
    ax.set_title(f"{circuit.task}: {len(circuit.nodes)} nodes, {edge_count(circuit)}{losses}\n"
                 f"each box: node, mean activation at the answer on each side{sides} over {details.n_prompts} "
                 f"prompts, what it fires on in pretraining text, circuit loss without it\n{legend}", fontsize=7.5)
    fig.tight_layout()
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    return [atomic_save_figure(fig, out_prefix.with_suffix(f".{ext}"), dpi=170) for ext in ("png", "svg")]
