"""The whole circuit, across all layers and at weight level, as PNG and SVG (matplotlib).

Drawn on a bare matplotlib Figure (no pyplot, no global backend switch), so importing this module
changes nothing for the caller.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ..circuit import Circuit
from ..fileio import atomic_save_figure
from .layout import EDGE_COLOURS, KIND_COLOURS, Layout, circuit_layout, edge_count


def _title(circuit: Circuit) -> str:
    m = circuit.metrics
    losses = ""
    if m is not None:
        losses = f"; full loss {m.full['templated'].loss:.3f}, circuit loss {m.circuit_uncalibrated['templated'].loss:.3f}"
    return (f"{circuit.task}: {len(circuit.nodes)} nodes, {edge_count(circuit)}{losses}\n"
            "residual channels as vertical lines; edges red = positive, blue = negative, width ~ |weight|")


def _draw(ax, circuit: Circuit, lay: Layout) -> None:
    many = len(circuit.nodes) > 60
    for c, (lo, hi) in lay.channel_span.items():  # residual channels
        x = lay.channels.index(c)
        ax.plot([x, x], [lo - 0.4, hi + 0.4], color="#bbbbbb", lw=1, zorder=0)
        ax.text(x, -0.9, str(c), ha="center", va="top", fontsize=6, color="#777777")
    edges = circuit.edges
    if edges:
        wmax = max(abs(e.weight) for e in edges) or 1.0
        segs = [(lay.positions[e.source], lay.positions[e.target]) for e in edges]
        colours = [EDGE_COLOURS["positive" if e.weight > 0 else "negative"] for e in edges]
        widths = [0.3 + 2.2 * abs(e.weight) / wmax for e in edges]
        ax.add_collection(LineCollection(segs, colors=colours, linewidths=widths, alpha=0.4, zorder=1))
    for kind, colour in KIND_COLOURS.items():
        pts = [lay.positions[n.name] for n in circuit.nodes if n.kind == kind]
        if pts:
            ax.scatter(*zip(*pts), s=30 if many else 40, color=colour, label=kind, zorder=2, edgecolors="white",
                       linewidths=0.5)
    if not many:
        for n in circuit.nodes:
            ax.annotate(n.name, lay.positions[n.name], xytext=(3, 3), textcoords="offset points", fontsize=6)


def _draw_faithfulness(ax, curve: dict) -> None:
    """The faithfulness curve over the node ranking (log x), with the circuit's own point."""
    xs = [100 * f for f in curve["fractions"]]
    ax.plot(xs, curve["faithfulness"], "o-", color="#444444", ms=3, lw=1)
    ax.axhline(1.0, color="#999999", lw=0.8, ls=":")
    ax.axhline(0.0, color="#999999", lw=0.8, ls=":")
    n_total = curve["nodes"][-1]
    ax.plot([100 * curve["circuit_nodes"] / n_total], [curve["circuit_faithfulness"]], "*", color="#2ca02c", ms=10,
            label=f"circuit ({curve['circuit_nodes']} nodes)")
    ax.set_xscale("log")
    ax.set_xlabel("% of nodes kept (pruner's ranking)", fontsize=7)
    ax.set_ylabel("normalised faithfulness", fontsize=7)
    ax.set_title(f"faithfulness: CPR {curve['cpr']:.3f}, CMD {curve['cmd']:.3f}", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, frameon=False, loc="lower right")


def render_static(circuit: Circuit, out_prefix: str | Path) -> list[Path]:
    """Write OUT_PREFIX.png and OUT_PREFIX.svg; returns their paths."""
    lay = circuit_layout(circuit)
    fig_w = min(40.0, 4 + 0.22 * lay.width)
    rows = max((y for _, y in lay.positions.values()), default=0) + 1
    fig_h = min(30.0, max(2 + 0.45 * rows, 0.45 * fig_w))  # a wide circuit gets taller rows, not a strip
    curve = circuit.metrics.faithfulness if circuit.metrics is not None else None
    if curve:
        side = max(3.5, fig_w / 4)  # the curve stays legible beside a wide diagram
        fig = Figure(figsize=(fig_w + side + 1, max(fig_h, 4.0)))
        ax, cax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [fig_w, side]})
        _draw_faithfulness(cax, curve)
        cax.set_box_aspect(0.8)
    else:
        fig = Figure(figsize=(fig_w, fig_h))
        ax = fig.subplots()
    _draw(ax, circuit, lay)
    ax.set_yticks(list(lay.row_labels), list(lay.row_labels.values()), fontsize=7)
    ax.set_xticks([])
    ax.set_xlim(-1, lay.width + 1)
    ax.set_ylim(-1.5, max(lay.row_labels, default=0) + 1)
    ax.set_title(_title(circuit), fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0) if not curve else (0.0, -0.02), fontsize=7, frameon=False,
              ncol=1 if not curve else 6)
    fig.tight_layout()
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    return [atomic_save_figure(fig, out_prefix.with_suffix(f".{ext}"), dpi=150) for ext in ("png", "svg")]
