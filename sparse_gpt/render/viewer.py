"""circuit.html: one self-contained page (inline SVG, CSS and script; no network) to explore a circuit.

The diagram uses the same layout as the static picture. Hovering a node shows its name and weights;
clicking it opens a panel with its activations on the task, single-node ablation losses, input and
output edges, and top-activating contexts from pretraining text. Below: task loss against the
number of kept nodes, as the pruner's bisection evaluated it.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ..fileio import atomic_write_text
from .layout import EDGE_COLOURS, KIND_COLOURS, circuit_layout

DX, DY, MARGIN_LEFT, MARGIN = 16.0, 34.0, 150.0, 24.0  # pixels per layout unit (at least), margins


def _finite(obj):
    """JSON has no NaN/inf: they become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _diagram_svg(circuit: dict) -> str:
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
    wmax = max((abs(e["weight"]) for e in circuit["edges"]), default=1.0) or 1.0
    for i, e in enumerate(circuit["edges"]):
        (x1, y1), (x2, y2) = lay.positions[e["source"]], lay.positions[e["target"]]
        colour = EDGE_COLOURS["positive" if e["weight"] > 0 else "negative"]
        out.append(f'<line class="edge" data-i="{i}" x1="{px(x1):.1f}" y1="{py(y1):.1f}" x2="{px(x2):.1f}" '
                   f'y2="{py(y2):.1f}" stroke="{colour}" stroke-width="{grow * (0.4 + 2.6 * abs(e["weight"]) / wmax):.2f}"/>')
    for n in circuit["nodes"]:
        x, y = lay.positions[n["name"]]
        out.append(f'<circle class="node" data-name="{html.escape(n["name"])}" cx="{px(x):.1f}" cy="{py(y):.1f}" '
                   f'r="{min(7.5, 5 * grow):.1f}" fill="{KIND_COLOURS[n["kind"]]}"/>')
    out.append("</svg>")
    return "\n".join(out)


def _bisection_svg(circuit: dict) -> str:
    """Held-out task loss against kept nodes (log-log), with the target and the chosen size."""
    pts = sorted((int(k), float(v)) for k, v in circuit["bisection"] if k >= 1 and math.isfinite(v))
    if not pts:
        return "<p>No bisection points recorded.</p>"
    target = circuit["provenance"].get("pruner", {}).get("target_loss")
    chosen = len(circuit["nodes"])
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


def _summary(circuit: dict, details: dict | None) -> str:
    m = circuit.get("metrics", {})
    prov = circuit["provenance"]
    parts = [f"{len(circuit['nodes'])} nodes, {len(circuit['edges'])} edges"]
    if "circuit_templated" in m:
        parts.append(f"circuit loss {m['circuit_uncalibrated_templated']['loss']:.3f} raw / "
                     f"{m['circuit_templated']['loss']:.3f} calibrated; full model {m['full_templated']['loss']:.3f}")
    if "necessity" in m:
        parts.append(f"circuit ablated: {m['necessity']['loss']:.3f}; random node sets: {m['random']['mean']:.3f}")
    if "checks" in m:
        parts.append("checks: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in m["checks"].items()))
    if details is None:
        parts.append("node details were not computed (no model given)")
    return (f"<p class=summary>{html.escape('; '.join(parts))}</p><p class=prov>checkpoint "
            f"{html.escape(str(prov.get('checkpoint', '?')))} ({html.escape(str(prov.get('checkpoint_fingerprint', '?'))[:12])})"
            f"</p>")


def render_html(circuit: dict, details: dict | None, path: str | Path) -> Path:
    """Write the viewer page for `circuit` (with node_details' output, or None) to `path`."""
    task = circuit["provenance"].get("task", "?")
    data = json.dumps(_finite({"nodes": circuit["nodes"], "edges": circuit["edges"], "details": details,
                               "kinds": KIND_COLOURS}), separators=(",", ":"))
    data = data.replace("<", "\\u003c")  # the JSON cannot close its <script> element
    legend = "".join(f'<span class=key><svg width=10 height=10><circle cx=5 cy=5 r=5 fill="{c}"/></svg>'
                     f'{html.escape(k)}</span>' for k, c in KIND_COLOURS.items())
    page = (_TEMPLATE.replace("%TITLE%", html.escape(f"{task} circuit"))
            .replace("%SUMMARY%", _summary(circuit, details))
            .replace("%LEGEND%", legend)
            .replace("%DIAGRAM%", _diagram_svg(circuit))
            .replace("%BISECTION%", _bisection_svg(circuit))
            .replace("%DATA%", data))
    path = Path(path)
    atomic_write_text(path, page)
    return path


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title>
<link rel="icon" href="data:,">
<style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
header { padding: 8px 16px; border-bottom: 1px solid #ddd; }
h1 { font-size: 18px; margin: 0 0 4px; }
.summary, .prov { margin: 2px 0; } .prov { color: #777; font-size: 11px; }
.key { margin-right: 12px; white-space: nowrap; } .key svg { margin-right: 4px; }
#tools { margin-top: 6px; } #tools input { width: 220px; }
main { display: flex; height: 70vh; }
#canvas { flex: 1; overflow: hidden; border-right: 1px solid #ddd; cursor: grab; }
#diagram { width: 100%; height: 100%; }
#panel { width: 440px; overflow-y: auto; padding: 8px 14px; display: none; }
#panel.open { display: block; }
#panel h2 { font-size: 15px; margin: 4px 0; } #panel h3 { font-size: 13px; margin: 12px 0 4px; }
#panel table { border-collapse: collapse; } #panel td { padding: 1px 8px 1px 0; }
.close { float: right; cursor: pointer; border: none; background: none; font-size: 18px; }
.edge { opacity: 0.5; } .channel { stroke: #ccc; stroke-width: 1; } .row { stroke: #f0f0f0; }
.rowlabel { fill: #888; text-anchor: end; } .chlabel { fill: #aaa; text-anchor: middle; }
.node { stroke: #fff; stroke-width: 1; cursor: pointer; } .node:hover { stroke: #000; stroke-width: 2; }
svg.focus .edge { opacity: 0.06; } svg.focus .node { opacity: 0.25; }
svg.focus .edge.hl { opacity: 0.95; } svg.focus .node.hl { opacity: 1; }
.node.selected { stroke: #000; stroke-width: 2.5; opacity: 1; }
#tooltip { position: fixed; pointer-events: none; background: #fff; border: 1px solid #aaa; padding: 4px 6px;
  font-size: 12px; display: none; max-width: 360px; box-shadow: 0 1px 4px rgba(0,0,0,.2); }
.ctx { font: 12px/1.7 ui-monospace, monospace; white-space: pre; margin: 2px 0; overflow-x: auto; }
.ctx .tok { border-radius: 2px; } .ctx .focus { outline: 1.5px solid #000; }
.ctx .val { display: inline-block; width: 64px; color: #555; }
a.nodelink { color: #1a5fb4; cursor: pointer; text-decoration: none; } a.nodelink:hover { text-decoration: underline; }
.bar { display: inline-block; height: 9px; vertical-align: middle; }
#bottom { padding: 8px 16px; } #bisection .frame { fill: none; stroke: #ccc; }
#bisection .curve { fill: none; stroke: #444; } #bisection .pt { fill: #444; }
#bisection .target { stroke: #d62728; stroke-dasharray: 4 3; } #bisection .chosen { stroke: #2ca02c; }
#bisection .tick { font-size: 10px; fill: #555; text-anchor: middle; } #bisection .axis { font-size: 11px; text-anchor: middle; }
</style></head><body>
<header><h1>%TITLE%</h1>%SUMMARY%
<div>%LEGEND% <span class=key>edges: red positive, blue negative, width ~ |weight|; residual channels are the vertical lines</span></div>
<div id="tools"><input id="search" list="names" placeholder="node name, e.g. 0.mlp.post_act[3]">
<datalist id="names"></datalist> <button id="reset">reset view</button>
<span style="color:#777">scroll to zoom, drag to pan, click a node for details</span></div></header>
<main><div id="canvas">%DIAGRAM%</div><aside id="panel"></aside></main>
<section id="bottom"><h3>Task loss against the number of kept nodes (the pruner's bisection, held-out prompts)</h3>%BISECTION%</section>
<div id="tooltip"></div>
<script type="application/json" id="viewer-data">%DATA%</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("viewer-data").textContent);
const svg = document.getElementById("diagram");
const panel = document.getElementById("panel"), tooltip = document.getElementById("tooltip");
const byName = new Map(D.nodes.map(n => [n.name, n]));
const inEdges = new Map(), outEdges = new Map();
D.edges.forEach((e, i) => {
  e.i = i;
  if (!inEdges.has(e.target)) inEdges.set(e.target, []);
  if (!outEdges.has(e.source)) outEdges.set(e.source, []);
  inEdges.get(e.target).push(e); outEdges.get(e.source).push(e);
});
const circles = new Map();
svg.querySelectorAll("circle.node").forEach(c => circles.set(c.dataset.name, c));
const edgeLines = Array.from(svg.querySelectorAll("line.edge"));
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (x, d = 3) => (x === null || x === undefined) ? "-" : Number(x).toFixed(d);
const byAbs = list => (list || []).slice().sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
const link = name => `<a class="nodelink" data-name="${esc(name)}">${esc(name)}</a>`;
const visible = t => t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");

// ---- hover: name and weights
function tooltipHtml(name) {
  const ins = byAbs(inEdges.get(name)), outs = byAbs(outEdges.get(name));
  const rows = (list, arrow, key) => list.slice(0, 6).map(e => `${arrow} ${esc(e[key])}: ${fmt(e.weight, 4)}`).join("<br>");
  let s = `<b>${esc(name)}</b> (${esc(byName.get(name).kind)})`;
  if (ins.length) s += `<br>${ins.length} input weights<br>` + rows(ins, "\u2190", "source");
  if (outs.length) s += `<br>${outs.length} output weights<br>` + rows(outs, "\u2192", "target");
  if (!ins.length && !outs.length) s += "<br>no weights to other circuit nodes";
  return s;
}
svg.addEventListener("mouseover", ev => {
  const c = ev.target.closest("circle.node");
  if (!c) return;
  tooltip.innerHTML = tooltipHtml(c.dataset.name);
  tooltip.style.display = "block";
});
svg.addEventListener("mousemove", ev => {
  tooltip.style.left = (ev.clientX + 14) + "px"; tooltip.style.top = (ev.clientY + 10) + "px";
});
svg.addEventListener("mouseout", ev => { if (ev.target.closest("circle.node")) tooltip.style.display = "none"; });

// ---- click: the node panel
function contextHtml(c, scale) {
  const toks = c.tokens.map((t, i) => {
    const a = c.activations[i];
    const alpha = (a === null || !scale) ? 0 : 0.8 * Math.min(1, Math.abs(a) / scale);  // text stays legible
    const rgb = (a !== null && a < 0) ? "31,119,180" : "214,39,40";
    return `<span class="tok${i === c.focus ? " focus" : ""}" style="background:rgba(${rgb},${alpha.toFixed(2)})" ` +
      `title="${a === null ? "" : fmt(a, 4)}">${esc(visible(t))}</span>`;
  }).join("");
  return `<div class="ctx"><span class="val">${fmt(c.value, 3)}</span>${toks}</div>`;
}
function contextsHtml(list) {
  const scale = Math.max(1e-9, ...list.flatMap(c => c.activations.filter(a => a !== null).map(Math.abs)));
  return list.map(c => contextHtml(c, scale)).join("");
}
function tokensHtml(stats, k) {
  return stats.slice(0, 8).map(s => `<code>${esc(JSON.stringify(visible(s.token)))}</code> &times;${s.count}`).join(", ") +
    ` <span style="color:#777">(of the ${k} extreme positions)</span>`;
}
function edgeTable(list, key, title) {
  if (!list.length) return `<h3>${title}</h3><p>none in the circuit</p>`;
  const wmax = Math.max(...list.map(e => Math.abs(e.weight)));
  return `<h3>${title} (${list.length})</h3><table>` + list.map(e =>
    `<tr><td>${link(e[key])}</td><td>${fmt(e.weight, 4)}</td><td><span class="bar" style="width:${(60 * Math.abs(e.weight) / wmax).toFixed(0)}px;` +
    `background:${e.weight > 0 ? "#d62728" : "#1f77b4"}"></span></td></tr>`).join("") + "</table>";
}
function openPanel(name) {
  const n = byName.get(name);
  if (!n) return;
  const det = D.details && D.details.nodes[name];
  let s = `<button class="close" title="close">\u00d7</button><h2>${esc(name)}</h2>` +
    `<div>${esc(n.kind)}, layer ${n.layer}, index ${n.index}${n.score !== undefined ? `, mask score ${fmt(n.score)}` : ""}</div>`;
  if (det) {
    const sides = D.details.sides, b = D.details.baseline;
    s += `<h3>Mean activation at the answer position</h3><table>` +
      sides.map((label, i) => `<tr><td>${esc(label)}</td><td>${fmt(det.side_means[i], 4)}</td></tr>`).join("") +
      `<tr><td>pretraining text (its ablation value)</td><td>${fmt(det.pretraining_mean, 4)}</td></tr></table>` +
      `<h3>Task loss when this node alone is ablated</h3><table>` +
      `<tr><td>full model minus this node</td><td>${fmt(det.ablated_alone)}</td><td>(full model ${fmt(b.full)})</td></tr>` +
      `<tr><td>circuit minus this node</td><td>${fmt(det.circuit_without)}</td><td>(circuit ${fmt(b.circuit)})</td></tr></table>` +
      `<div style="color:#777">on ${D.details.n_prompts} templated prompts</div>`;
  }
  s += edgeTable(byAbs(inEdges.get(name)), "source", "Inputs") + edgeTable(byAbs(outEdges.get(name)), "target", "Outputs");
  if (n.kind === "attn_q" || n.kind === "attn_k")
    s += `<div style="color:#777">q and k channels have no output weights: they act through the attention pattern ` +
      `(q channel i meets k channel i of the same head)</div>`;
  const ex = det && det.explanation;
  if (ex) {
    s += `<h3>Top-activating contexts (${ex.n_tokens.toLocaleString()} pretraining tokens)</h3>` + contextsHtml(ex.top) +
      `<div>tokens: ${tokensHtml(ex.top_tokens, ex.k)}</div>` +
      `<h3>Bottom-activating contexts</h3>` + contextsHtml(ex.bottom) + `<div>tokens: ${tokensHtml(ex.bottom_tokens, ex.k)}</div>`;
  }
  panel.innerHTML = s;
  panel.classList.add("open");
  panel.scrollTop = 0;
  highlight(name);
}
function highlight(name) {
  svg.classList.toggle("focus", !!name);
  circles.forEach(c => c.classList.remove("hl", "selected"));
  edgeLines.forEach(l => l.classList.remove("hl"));
  if (!name) return;
  const touching = (inEdges.get(name) || []).concat(outEdges.get(name) || []);
  touching.forEach(e => {
    edgeLines[e.i].classList.add("hl");
    circles.get(e.source).classList.add("hl"); circles.get(e.target).classList.add("hl");
  });
  circles.get(name).classList.add("hl", "selected");
}
panel.addEventListener("click", ev => {
  if (ev.target.closest(".close")) { panel.classList.remove("open"); highlight(null); return; }
  const a = ev.target.closest("a.nodelink");
  if (a) openPanel(a.dataset.name);
});
const search = document.getElementById("search");
document.getElementById("names").innerHTML = D.nodes.map(n => `<option value="${esc(n.name)}">`).join("");
search.addEventListener("change", () => { if (byName.has(search.value)) openPanel(search.value); });

// ---- zoom and pan by the viewBox
const full = [0, 0, Number(svg.dataset.width), Number(svg.dataset.height)];
let box = full.slice(), drag = null;
const setBox = () => svg.setAttribute("viewBox", box.map(v => v.toFixed(1)).join(" "));
function toSvg(ev) {
  const p = svg.createSVGPoint(); p.x = ev.clientX; p.y = ev.clientY;
  return p.matrixTransform(svg.getScreenCTM().inverse());
}
svg.addEventListener("wheel", ev => {
  ev.preventDefault();
  const p = toSvg(ev), f = ev.deltaY > 0 ? 1.15 : 1 / 1.15;
  box = [p.x - (p.x - box[0]) * f, p.y - (p.y - box[1]) * f, box[2] * f, box[3] * f];
  setBox();
}, {passive: false});
svg.addEventListener("pointerdown", ev => { drag = {x: ev.clientX, y: ev.clientY, box: box.slice(), moved: false}; });
window.addEventListener("pointermove", ev => {
  if (!drag) return;
  const k = box[2] / svg.clientWidth, dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
  if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
  box = [drag.box[0] - dx * k, drag.box[1] - dy * k, box[2], box[3]];
  if (drag.moved) setBox();
});
window.addEventListener("pointerup", () => { setTimeout(() => { drag = null; }, 0); });
svg.addEventListener("click", ev => {
  if (drag && drag.moved) return;
  const c = ev.target.closest("circle.node");
  if (c) openPanel(c.dataset.name);
});
document.getElementById("reset").addEventListener("click", () => { box = full.slice(); setBox(); });
</script></body></html>
"""
