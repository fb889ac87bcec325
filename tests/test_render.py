"""The static circuit diagram: one shared layout, every node drawn, PNG and SVG written."""
import os
import subprocess
import sys
from pathlib import Path

from inprocess import module_main, run_main
from planted import PLANTED_NODES, circuit_of
from sparse_gpt.render import circuit_layout, render_static

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_renderer_leaves_matplotlib_alone():
    """Drawing uses bare Figures: importing sparse_gpt.render switches no backend and opens no pyplot."""
    code = ("import matplotlib; before = matplotlib.get_backend(); import sparse_gpt.render, sys; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
            "assert matplotlib.get_backend() == before")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, MPLBACKEND="svg"))
    assert proc.returncode == 0, proc.stderr


def test_layout_places_every_node_on_its_row_and_channel(planted):
    model, tok, task, layout, means, pruner, run = planted
    circuit = circuit_of(model, layout, run)
    lay = circuit_layout(circuit)
    assert set(lay.positions) == PLANTED_NODES
    # a residual write and the later read of the same channel share the channel's vertical line
    assert lay.positions["0.mlp.resid_delta[0]"][0] == lay.positions["1.attn.act_in[0]"][0]
    assert lay.positions["0.mlp.resid_delta[1]"][0] == lay.positions["1.attn.act_in[1]"][0]
    # later layers are drawn higher; q/k/v sit in the band right of the residual channels
    assert lay.positions["1.attn.q[0]"][1] > lay.positions["0.mlp.post_act[0]"][1]
    assert lay.positions["1.attn.q[0]"][0] > max(x for x, _ in (lay.positions[n] for n in PLANTED_NODES
                                                                if "act_in" in n or "resid_delta" in n))


def test_render_writes_png_and_svg_and_the_cli_rerenders(planted, tmp_path, capsys):
    model, tok, task, layout, means, pruner, run = planted
    circuit = circuit_of(model, layout, run)
    paths = render_static(circuit, tmp_path / "circuit")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)
    assert (tmp_path / "circuit.png").read_bytes()[:4] == b"\x89PNG"
    assert "1.attn.q[0]" in (tmp_path / "circuit.svg").read_text()  # labels are drawn for small circuits
    assert not list(tmp_path.glob(".*"))  # saved atomically: no temp files left behind
    path = circuit.save(tmp_path / "again" / "circuit.json")
    # the command's main in-process (tests/inprocess.py); the main-job test runs the real command line
    render = module_main("sparse_gpt.render")
    proc = run_main(render, [str(path), "--static-only"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again" / "circuit.png").exists()
    # circuit.html needs the model for its node panels: this artefact names no checkpoint
    proc = run_main(render, [str(path)], capsys)
    assert proc.returncode == 2 and "circuit.html not written" in proc.stderr and "--static-only" in proc.stderr
    proc = run_main(render, [str(tmp_path / "missing.json")], capsys)
    assert proc.returncode == 2 and "no circuit file" in proc.stderr


def test_the_faithfulness_curve_is_drawn_in_both_pictures(planted, tmp_path):
    from sparse_gpt.circuit import evaluate_circuit
    from sparse_gpt.render import render_html
    model, tok, task, layout, means, pruner, run = planted
    circuit = circuit_of(model, layout, run)
    circuit.metrics = evaluate_circuit(model, circuit, task, tok, means, n_pairs=16, n_random=2, scores=run.scores)
    render_static(circuit, tmp_path / "circuit")
    svg = (tmp_path / "circuit.svg").read_text()
    assert "normalised faithfulness" in svg and f"CPR {circuit.metrics.faithfulness['cpr']:.3f}" in svg
    page = render_html(circuit, None, tmp_path / "circuit.html").read_text()
    assert '<svg id="faithfulness"' in page and page.count('<circle class="pt"') >= 10
