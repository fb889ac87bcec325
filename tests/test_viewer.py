"""The interactive viewer: node details on the planted circuit, a self-contained page, and the page
driven in headless Chromium (Debian's chromium + chromedriver; CI installs them)."""
import json
import os
import re
from pathlib import Path

import pytest

from planted import PlantedQuoteTask, circuit_of, pretraining_windows
from sparse_gpt.explain import ExplainSettings, NodeContexts, compute_node_contexts
from sparse_gpt.render import node_details, render_html
from sparse_gpt.render.browser import BrowserUnavailable, find_browser, inspect_viewer

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ExplainSettings(k=8, n_contexts=4, before=6, after=2)


@pytest.fixture(scope="module")
def page(planted, tmp_path_factory):
    model, tok, task, layout, means, pruner, run = planted
    circuit = circuit_of(model, layout, run)
    contexts = NodeContexts(compute_node_contexts(model, layout, pretraining_windows(n=16), SETTINGS),
                            layout, tok, SETTINGS)
    details = node_details(model, tok, circuit, PlantedQuoteTask(), means, contexts, progress=False)
    path = render_html(circuit, details, tmp_path_factory.mktemp("viewer") / "circuit.html")
    return circuit, details, path


def test_node_details_show_the_planted_mechanism(page):
    circuit, details, _ = page
    assert set(details["nodes"]) == {n["name"] for n in circuit["nodes"]}
    assert details["sides"] == ["answer \u00abX\u00bb", "answer \u00abY\u00bb"]
    out = details["nodes"]["1.attn.resid_delta[4]"]  # the head writes + for X, - for Y
    assert out["side_means"][0] > 0.5 > -0.5 > out["side_means"][1]
    base = details["baseline"]
    assert out["ablated_alone"] > base["full"] + 0.3 and out["circuit_without"] > base["circuit"] + 0.3
    detector = details["nodes"]["0.mlp.post_act[0]"]["explanation"]
    assert detector["top"][0]["tokens"][detector["top"][0]["focus"]] == '"'


def test_the_page_is_self_contained(page):
    circuit, _, path = page
    text = path.read_text()
    assert len(re.findall(r'<circle class="node"', text)) == len(circuit["nodes"])
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing fetched from a network
    data = re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', text, re.S).group(1)
    assert len(json.loads(data)["edges"]) == len(circuit["edges"])


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
    assert report.nodes_drawn == len(circuit["nodes"]) == 13
    assert report.tooltip.startswith("1.attn.q[0]") and "input weights" in report.tooltip
    assert report.panel_title == "1.attn.q[0]"
    for section in ("Mean activation at the answer position", "Task loss when this node alone is ablated",
                    "Inputs (1)", "1.attn.act_in[2]", "Top-activating contexts"):
        assert section in report.panel_text
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
