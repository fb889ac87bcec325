"""circuit.html: one self-contained page (inline SVG, CSS and script; no network) to explore a circuit.

The diagram uses the same layout as the static picture. Hovering a node shows its name and weights;
clicking it opens a panel with its activations on the task, single-node ablation losses, input and
output edges, and top-activating contexts from pretraining text. Below: task loss against the
number of kept nodes, as the pruner's bisection evaluated it, and the faithfulness curve over the
pruner's ranking (circuit.faithfulness).
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from ..circuit import Circuit, NodeDetails
from ..explain import NodeContexts
from ..fileio import atomic_write_text
from .layout import EDGE_COLOURS, KIND_COLOURS, circuit_layout, edge_count

DX, DY, MARGIN_LEFT, MARGIN = 16.0, 34.0, 150.0, 24.0  # pixels per layout unit (at least), margins
N_CONTEXTS = 6  # top and bottom contexts shown per node


def _finite(obj):
    """JSON has no NaN/inf: they become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _diagram_svg(circuit: Circuit) -> str:
    lay = circuit_layout(circuit)
    top = max(lay.row_labels, default=0.0)
    # labels grow with the drawing, which the page scales down to fit its pane
    row_font = max(10.0, 0.011 * (MARGIN_LEFT + lay.width * DX))
    ch_font, grow = max(7.0, 0.45 * row_font), row_font / 10  # grow: node and edge size with the fonts
    left = max(MARGIN_LEFT, 10 * row_font)  # room for "L3 mlp.resid_delta"
    # rows spread out so a wide circuit still fills a landscape pane instead of a thin strip
    dy = max(DY, 0.55 * lay.width * DX / (top + 2))
    px = lambda x: left + x * DX
    py = lambda y: MARGIN + (top - y) * dy
    width, height = px(lay.width) + MARGIN, py(-1.0) + MARGIN
    out = [f'<svg id="diagram" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
           f'data-width="{width:.0f}" data-height="{height:.0f}">', 
           f'<style>.rowlabel {{ font-size: {row_font:.0f}px }} .chlabel {{ font-size: {ch_font:.0f}px }}</style>']
    for y, label in lay.row_labels.items():
        out.append(f'<line class="row" x1="{left - 10:.0f}" x2="{width - MARGIN:.0f}" y1="{py(y):.1f}" '
                   f'y2="{py(y):.1f}"/><text class="rowlabel" x="{left - 14:.0f}" y="{py(y) + row_font / 3:.1f}">'
                   f'{html.escape(label)}</text>')
    for c, (lo, hi) in lay.channel_span.items():
        x = px(lay.channels.index(c))
        out.append(f'<line class="channel" x1="{x:.1f}" x2="{x:.1f}" y1="{py(hi + 0.4):.1f}" y2="{py(lo - 0.4):.1f}"/>'
                   f'<text class="chlabel" x="{x:.1f}" y="{py(-0.8):.1f}">{c}</text>')
    wmax = max((abs(e.weight) for e in circuit.edges), default=1.0) or 1.0
    for i, e in enumerate(circuit.edges):
        (x1, y1), (x2, y2) = lay.positions[e.source], lay.positions[e.target]
        colour = EDGE_COLOURS["positive" if e.weight > 0 else "negative"]
        out.append(f'<line class="edge" data-i="{i}" x1="{px(x1):.1f}" y1="{py(y1):.1f}" x2="{px(x2):.1f}" '
                   f'y2="{py(y2):.1f}" stroke="{colour}" stroke-width="{grow * (0.4 + 2.6 * abs(e.weight) / wmax):.2f}"/>')
    for n in circuit.nodes:
        x, y = lay.positions[n.name]
        out.append(f'<circle class="node" data-name="{html.escape(n.name)}" cx="{px(x):.1f}" cy="{py(y):.1f}" '
                   f'r="{min(7.5, 5 * grow):.1f}" fill="{KIND_COLOURS[n.kind]}"/>')
    out.append("</svg>")
    return "\n".join(out)


def _bisection_svg(circuit: Circuit) -> str:
    """Held-out task loss against kept nodes (log-log), with the target and the chosen size."""
    pts = sorted((int(k), float(v)) for k, v in circuit.bisection if k >= 1 and math.isfinite(v))
    if not pts:
        return "<p>No bisection points recorded.</p>"
    target = circuit.settings.target_loss
    chosen = len(circuit.nodes)
    w, h, left, bottom, pad = 640.0, 260.0, 56.0, 40.0, 14.0
    floor = 1e-3
    ks = [k for k, _ in pts] + [chosen]
    losses = [max(floor, v) for _, v in pts] + ([target] if target else [])
    kx0, kx1 = math.log10(min(ks)), math.log10(max(ks)) + 1e-9
    ly0, ly1 = math.log10(min(losses)), math.log10(max(losses)) + 1e-9
    if kx1 - kx0 < 0.3:
        kx0, kx1 = kx0 - 0.15, kx1 + 0.15
    if ly1 - ly0 < 0.3:
        ly0, ly1 = ly0 - 0.15, ly1 + 0.15
    sx = lambda k: left + (math.log10(k) - kx0) / (kx1 - kx0) * (w - left - pad)
    sy = lambda v: pad + (ly1 - math.log10(max(floor, v))) / (ly1 - ly0) * (h - bottom - pad)
    out = [f'<svg id="bisection" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.0f} {h:.0f}" width="{w:.0f}" '
           f'height="{h:.0f}">', f'<rect x="{left}" y="{pad}" width="{w - left - pad}" height="{h - bottom - pad}" '
           'class="frame"/>']
    for e in range(math.floor(kx0), math.ceil(kx1) + 1):
        if kx0 <= e <= kx1:
            out.append(f'<text class="tick" x="{sx(10 ** e):.1f}" y="{h - bottom + 16:.1f}">{10 ** e:g}</text>')
    for e in range(math.floor(ly0), math.ceil(ly1) + 1):
        if ly0 <= e <= ly1:
            out.append(f'<text class="tick" x="{left - 6:.1f}" y="{sy(10 ** e) + 4:.1f}" text-anchor="end">'
                       f'{10 ** e:g}</text>')
    out.append(f'<text class="axis" x="{(left + w) / 2:.0f}" y="{h - 6:.0f}">kept nodes (top of the mask ranking)</text>')
    out.append(f'<text class="axis" transform="translate(14 {(h - bottom) / 2:.0f}) rotate(-90)">task loss</text>')
    if target:
        out.append(f'<line class="target" x1="{left}" x2="{w - pad}" y1="{sy(target):.1f}" y2="{sy(target):.1f}"/>'
                   f'<text class="tick" x="{w - pad - 4:.0f}" y="{sy(target) - 5:.1f}" text-anchor="end">'
                   f'target {target:g}</text>')
    out.append(f'<line class="chosen" x1="{sx(chosen):.1f}" x2="{sx(chosen):.1f}" y1="{pad}" y2="{h - bottom}"/>'
               f'<text class="tick" x="{sx(chosen) + 4:.1f}" y="{pad + 12:.0f}" text-anchor="start">'
               f'{chosen} nodes</text>')
    out.append('<polyline class="curve" points="' + " ".join(f"{sx(k):.1f},{sy(v):.1f}" for k, v in pts) + '"/>')
    for k, v in pts:
        out.append(f'<circle class="pt" cx="{sx(k):.1f}" cy="{sy(v):.1f}" r="3"><title>{k} nodes: loss {v:.4f}'
                   '</title></circle>')
    out.append("</svg>")
    return "\n".join(out)


def _faithfulness_svg(circuit: Circuit) -> str:
    """Normalised faithfulness against the share of nodes kept (log x), the circuit marked."""
    curve = circuit.metrics.faithfulness if circuit.metrics is not None else None
    if not curve:
        return "<p>No faithfulness curve recorded.</p>"
    w, h, left, bottom, pad = 640.0, 240.0, 56.0, 40.0, 14.0
    fr = curve["fractions"]
    vals = [v for v in curve["faithfulness"] + [curve["circuit_faithfulness"]] if v is not None and math.isfinite(v)]
    y0, y1 = min([0.0] + vals) - 0.05, max([1.0] + vals) + 0.05
    x0, x1 = math.log10(fr[0]), math.log10(fr[-1])
    sx = lambda f: left + (math.log10(f) - x0) / (x1 - x0) * (w - left - pad)  # noqa: E731
    sy = lambda v: pad + (y1 - v) / (y1 - y0) * (h - bottom - pad)  # noqa: E731
    out = [f'<svg id="faithfulness" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w:.0f} {h:.0f}" '
           f'width="{w:.0f}" height="{h:.0f}">',
           f'<rect x="{left}" y="{pad}" width="{w - left - pad}" height="{h - bottom - pad}" class="frame"/>']
    for f in fr:
        out.append(f'<text class="tick" x="{sx(f):.1f}" y="{h - bottom + 16:.1f}">{100 * f:g}%</text>')
    for v in (0.0, 0.5, 1.0):
        out.append(f'<line class="grid" x1="{left}" x2="{w - pad}" y1="{sy(v):.1f}" y2="{sy(v):.1f}"/>'
                   f'<text class="tick" x="{left - 6:.1f}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
    pts = [(f, v) for f, v in zip(fr, curve["faithfulness"]) if v is not None and math.isfinite(v)]
    out.append('<polyline class="curve" points="' + " ".join(f"{sx(f):.1f},{sy(v):.1f}" for f, v in pts) + '"/>')
    for (f, v), k, loss in zip(pts, curve["nodes"], curve["losses"]):
        out.append(f'<circle class="pt" cx="{sx(f):.1f}" cy="{sy(v):.1f}" r="3"><title>{k} nodes: faithfulness '
                   f'{v:.3f}, loss {loss:.4f}</title></circle>')
    cf, cn = curve["circuit_faithfulness"], curve["circuit_nodes"]
    if cf is not None and math.isfinite(cf) and cn:
        x = max(fr[0], min(1.0, cn / curve["nodes"][-1]))
        out.append(f'<circle class="chosen" cx="{sx(x):.1f}" cy="{sy(cf):.1f}" r="5"><title>the circuit: {cn} nodes, '
                   f'faithfulness {cf:.3f}</title></circle>')
    out.append(f'<text class="axis" x="{(left + w) / 2:.0f}" y="{h - 6:.0f}">share of nodes kept (top of the '
               f'ranking); CPR {curve["cpr"]:.3f}, CMD {curve["cmd"]:.3f}</text>')
    out.append(f'<text class="axis" transform="translate(14 {(h - bottom) / 2:.0f}) rotate(-90)">'
               'normalised faithfulness</text>')
    out.append("</svg>")
    return "\n".join(out)


def _summary(circuit: Circuit, details: NodeDetails | None) -> str:
    m = circuit.metrics
    prov = circuit.provenance
    parts = [f"{len(circuit.nodes)} nodes, {edge_count(circuit)}"]
    if m is not None:
        parts.append(f"circuit loss {m.circuit_uncalibrated['templated'].loss:.3f} raw / {m.circuit['templated'].loss:.3f} "
                     f"calibrated; full model {m.full['templated'].loss:.3f}")
        parts.append(f"circuit ablated: {m.necessity.loss:.3f}; random node sets: {m.random.mean:.3f}")
        parts.append("checks: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in m.checks.items()))
    if details is None:
        parts.append("node details were not computed (no model given)")
    checkpoint, fingerprint = prov.checkpoint or "?", prov.checkpoint_fingerprint or "?"
    return (f"<p class=summary>{html.escape('; '.join(parts))}</p><p class=prov>checkpoint "
            f"{html.escape(checkpoint)} ({html.escape(fingerprint[:12])})</p>")


def _details_data(circuit: Circuit, details: NodeDetails | None, contexts: NodeContexts | None) -> dict | None:
    """What a node's panel shows: details' numbers, and the node's top contexts when `contexts` is given."""
    if details is None:
        return None
    nodes = {name: asdict(numbers) | {"explanation": contexts.explain(name, N_CONTEXTS).to_dict()
                                      if contexts is not None else None}
             for name, numbers in details.nodes.items()}
    return {"sides": details.sides, "n_prompts": details.n_prompts, "baseline": details.baseline, "nodes": nodes}


def _template() -> str:
    """The page template, with its stylesheet and script (package data beside this module) inlined."""
    files = resources.files(__package__) / "templates"
    read = lambda name: (files / name).read_text(encoding="utf-8")  # noqa: E731
    return read("viewer.html").replace("%STYLE%", read("viewer.css")).replace("%SCRIPT%", read("viewer.js"))


def render_html(circuit: Circuit, details: NodeDetails | None, path: str | Path,
                contexts: NodeContexts | None = None) -> Path:
    """Write the viewer page for `circuit` to `path`. `details` (circuit.node_details) fills the node
    panels, `contexts` (explain.node_contexts) adds each node's top- and bottom-activating contexts."""
    data = json.dumps(_finite({"nodes": [n.to_dict() for n in circuit.nodes],
                               "edges": [e.to_dict() for e in circuit.edges],
                               "details": _details_data(circuit, details, contexts), "kinds": KIND_COLOURS}),
                      separators=(",", ":"))
    data = data.replace("<", "\\u003c")  # the JSON cannot close its <script> element
    legend = "".join(f'<span class=key><svg width=10 height=10><circle cx=5 cy=5 r=5 fill="{c}"/></svg>'
                     f'{html.escape(k)}</span>' for k, c in KIND_COLOURS.items())
    page = (_template().replace("%TITLE%", html.escape(f"{circuit.task} circuit"))
            .replace("%SUMMARY%", _summary(circuit, details))
            .replace("%LEGEND%", legend)
            .replace("%DIAGRAM%", _diagram_svg(circuit))
            .replace("%BISECTION%", _bisection_svg(circuit))
            .replace("%FAITHFULNESS%", _faithfulness_svg(circuit))
            .replace("%DATA%", data))
    path = Path(path)
    atomic_write_text(path, page)
    return path
