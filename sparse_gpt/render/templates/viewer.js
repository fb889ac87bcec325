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
      (det.difference_means ? `<h3>Mean activation where the pair's prompts differ</h3><table>` +
        sides.map((label, i) => `<tr><td>${esc(label)}</td><td>${fmt(det.difference_means[i], 4)}</td></tr>`).join("") +
        `</table>` : "") +
      `<h3>Task loss (raw) when this node alone is ablated</h3><table>` +
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
