"""The interactive viewer: node details on the planted circuit, a self-contained page, and the page
driven in headless Chromium (Debian's chromium + chromedriver; CI installs them)."""
import json
import os
import re
import sys
from pathlib import Path

import pytest

from planted import PlantedQuoteTask, circuit_of, pretraining_windows
from sparse_gpt.circuit import node_details
from sparse_gpt.explain import ExplainSettings, NodeContexts, compute_node_contexts
from sparse_gpt.render import render_html

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from browser import BrowserUnavailable, find_browser, inspect_viewer  # noqa: E402
SETTINGS = ExplainSettings(k=8, n_contexts=4, before=6, after=2)


@pytest.fixture(scope="module")
def page(planted, tmp_path_factory):
    model, tok, task, layout, means, pruner, run = planted
    circuit = circuit_of(model, layout, run)
    contexts = NodeContexts(compute_node_contexts(model, layout, pretraining_windows(n=16), SETTINGS),
                            layout, tok, SETTINGS)
    details = node_details(model, tok, circuit, PlantedQuoteTask(), means, progress=False)
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
    for section in ("Mean activation at the answer position", "Task loss (raw) when this node alone is ablated",
                    "Inputs (1)", "1.attn.act_in[2]", "Top-activating contexts"):
        assert section in report.panel_text
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
