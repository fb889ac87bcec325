"""The interactive viewer: node details on the planted circuit, a self-contained page, and the page
driven in headless Chromium (Debian's chromium + chromedriver; CI installs them)."""
import json
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from planted import PlantedQuoteTask, circuit_of, pretraining_windows
from sparse_gpt.circuit import attention_from_answer, node_details
from sparse_gpt.explain import ExplainSettings, NodeContexts, compute_node_contexts
from sparse_gpt.render import MAX_NODES, readable_layout, render_html, render_labelled
from sparse_gpt.render.labelled import node_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from browser import BrowserUnavailable, find_browser, inspect_viewer  # noqa: E402
SETTINGS = ExplainSettings(k=8, n_contexts=4, before=6, after=2)


@pytest.fixture(scope="module")
def evidence(planted):
    """The planted circuit with its node details and contexts: what the viewer and the labelled
    diagram are drawn from."""
    model, tok, task, layout, means, pruner, run = planted
    circuit = circuit_of(model, layout, run)
    contexts = NodeContexts(compute_node_contexts(model, layout, pretraining_windows(n=16), SETTINGS),
                            layout, tok, SETTINGS)
    details = node_details(model, tok, circuit, PlantedQuoteTask(), means, progress=False)
    return circuit, details, contexts


@pytest.fixture(scope="module")
def page(evidence, tmp_path_factory):
    circuit, details, contexts = evidence
    path = render_html(circuit, details, tmp_path_factory.mktemp("viewer") / "circuit.html", contexts)
    return circuit, details, path


def page_data(path: Path) -> dict:
    text = path.read_text()
    return json.loads(re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', text, re.S).group(1))


def test_node_details_show_the_planted_mechanism(page):
    circuit, details, path = page
    assert set(details.nodes) == set(circuit.node_names)
    assert details.sides == ["answer \u00abX\u00bb", "answer \u00abY\u00bb"]
    out = details.nodes["1.attn.resid_delta[4]"]  # the head writes + for X, - for Y
    assert out.side_means[0] > 0.5 > -0.5 > out.side_means[1]
    base = details.baseline
    assert out.ablated_alone > base["full"] + 0.3 and out.circuit_without > base["circuit"] + 0.3
    detector = page_data(path)["details"]["nodes"]["0.mlp.post_act[0]"]["explanation"]
    assert detector["top"][0]["tokens"][detector["top"][0]["focus"]] == '"'
    # at the opening quote each detector fires on its own quote, and v[0] reads the type (+ / -)
    # that at the answer position it cannot see
    at = {name: n.difference_means for name, n in details.nodes.items()}
    assert at["0.mlp.post_act[0]"][0] > 0.5 > at["0.mlp.post_act[0]"][1]
    assert at["0.mlp.post_act[1]"][1] > 0.5 > at["0.mlp.post_act[1]"][0]
    assert at["1.attn.v[0]"][0] > 0.1 > -0.1 > at["1.attn.v[0]"][1]
    assert abs(details.nodes["1.attn.v[0]"].side_means[0]) < 0.1  # at `=` there is no quote to read


def test_attention_from_answer_finds_the_head_that_fetches_the_quote(planted):
    model, tok, task, layout, means, pruner, run = planted
    circuit = circuit_of(model, layout, run)
    heads = attention_from_answer(model, tok, circuit, task, means, layer=1)
    # layer 1 head 0 looks from `=` at the opening quote, in the model and in the circuit
    assert heads[0].on_difference[0] > 0.9 and heads[0].on_difference[1] > 0.9
    assert all(h.on_difference[0] < 0.2 and h.on_sink[0] > 0.4 for h in heads[1:])
    assert all(h.on_difference[0] < 0.2 for h in attention_from_answer(model, tok, circuit, task, means, layer=0))
    # the circuit's number is the circuit's own: without its key channel the head no longer finds it
    keep = run.keep.clone()
    keep[layout.node_index("1.attn.k[0]")] = False
    without_key = circuit_of(model, layout, replace(run, keep=keep))
    assert attention_from_answer(model, tok, without_key, task, means, layer=1)[0].on_difference[1] < 0.5


def test_labelled_diagram_follows_the_flow_and_labels_every_node(evidence, tmp_path):
    circuit, details, contexts = evidence
    lay = readable_layout(circuit)
    y = {name: pos[1] for name, pos in lay.positions.items()}
    # input at the bottom, then the mechanism in order: quote detectors, the head, its write, the answer
    assert y["input"] < y["0.mlp.act_in[8]"] < y["0.mlp.post_act[0]"] < y["0.mlp.resid_delta[1]"]
    assert y["0.mlp.resid_delta[1]"] < y["1.attn.act_in[1]"] < y["1.attn.v[0]"] < y["1.attn.resid_delta[4]"]
    assert y["1.attn.resid_delta[4]"] < y["answer"]
    # the residual stream links each read to the write of its channel, and the final write to the answer
    assert ("0.mlp.resid_delta[1]", "1.attn.act_in[1]", 1) in lay.residual
    assert ("input", "0.mlp.act_in[8]", 8) in lay.residual
    assert ("1.attn.resid_delta[4]", "answer", 4) in lay.residual
    # a box says what the node responds to: the `"` detector fires on `"` in text; the head's write
    # carries the quote type to the answer position (+ for X, - for Y)
    box = node_text("0.mlp.post_act[0]", details, contexts)
    assert box.splitlines()[0] == "0.mlp.post_act[0]" and "fires on '\"'" in box and "loss without it" in box
    assert re.search(r"\u00abX\u00bb \+[1-9]\.\d\d  \u00abY\u00bb -[1-9]", node_text("1.attn.resid_delta[4]", details, contexts))
    paths = render_labelled(circuit, details, contexts, tmp_path / "circuit_labelled")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    svg = paths[1].read_text()
    assert all(n.name in svg for n in circuit.nodes)
    assert all(f"{e.weight:+.2g}" in svg for e in circuit.edges)  # every weight is written on its edge
    big = replace(circuit, nodes=circuit.nodes * (MAX_NODES // len(circuit.nodes) + 1))
    with pytest.raises(ValueError, match="legible up to 40"):
        render_labelled(big, details, contexts, tmp_path / "big")


def test_the_page_is_self_contained(page):
    circuit, _, path = page
    text = path.read_text()
    assert len(re.findall(r'<circle class="node"', text)) == len(circuit.nodes)
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched from a network
    assert "%" + "SCRIPT%" not in text and "use strict" in text  # the template's script is inlined
    assert len(page_data(path)["edges"]) == len(circuit.edges)


def browser_or_skip():
    try:
        find_browser()
    except BrowserUnavailable as e:
        if os.environ.get("SPARSE_GPT_REQUIRE_BROWSER") == "1":  # set by .ci/run: CI must not skip
            raise
        pytest.skip(str(e))


def test_viewer_in_headless_chromium(page, tmp_path):
    browser_or_skip()
    circuit, _, path = page
    shot = tmp_path / "viewer.png"
    report = inspect_viewer(path, click="1.attn.q[0]", screenshot=shot)
    assert report.console_errors == []
    assert report.nodes_drawn == len(circuit.nodes) == 13
    assert report.tooltip.startswith("1.attn.q[0]") and "input weights" in report.tooltip
    assert report.panel_title == "1.attn.q[0]"
    for section in ("Mean activation at the answer position", "Mean activation where the pair's prompts differ",
                    "Task loss (raw) when this node alone is ablated", "Inputs (1)", "1.attn.act_in[2]",
                    "Top-activating contexts"):
        assert section in report.panel_text
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
