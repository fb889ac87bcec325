"""Exports of a circuit for other viewers (sparse_gpt.export), on a real trained checkpoint.

The circuit is made by hand from the tiny checkpoint's largest weights (pruning a 20-step model
would find nothing), saved as a real circuit.json, and exported through the command line (its main
called in-process; the CSV export goes through the real `python -m sparse_gpt.export`).
circuit-tracer itself pulls transformers, transformer-lens and nnsight, too heavy for CI, so the
graphs are checked against the required fields of Neuronpedia's graph schema and of
circuit-tracer's graph models (`check_graph`), and against the circuit they come from.
"""
from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from inprocess import Result, module_main, run_main, script_main
from sparse_gpt.circuit import Circuit, Provenance
from sparse_gpt.export import GRAPH_INDEX, check_graph
from sparse_gpt.loading import load_any
from sparse_gpt.nodes import NodeLayout, circuit_edges
from sparse_gpt.prune.objective import Calibration
from sparse_gpt.prune.pruner import PruneConfig

ROOT = Path(__file__).resolve().parents[1]


def _export(capsys, *args) -> Result:
    """`python -m sparse_gpt.export ARGS`, run in-process (tests/inprocess.py)."""
    return run_main(module_main("sparse_gpt.export"), list(map(str, args)), capsys)


def _largest(w: torch.Tensor, n: int) -> list[tuple[int, int]]:
    """(row, column) of the n largest |w| entries."""
    flat = w.abs().flatten().topk(n).indices
    return [divmod(int(i), w.shape[1]) for i in flat]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """configs/tiny.yaml trained for 20 steps with a context long enough for the task prompts
    (its 512-token vocabulary makes them longer than the 64 tokens tiny.yaml has)."""
    out = tmp_path_factory.mktemp("tiny128") / "run"
    proc = run_main(script_main("train.py"), ["--config", "configs/tiny.yaml", "--no-progress", "--out", str(out),
                                              "--steps", "20", "--set", "model.block_size=128"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def circuit_path(checkpoint, tmp_path_factory) -> Path:
    """A circuit of the tiny checkpoint: both ends of each block matrix's 3 largest weights."""
    tiny_checkpoint = checkpoint
    loaded = load_any(tiny_checkpoint)
    model, layout = loaded.model, NodeLayout(loaded.model.config)
    width = model.config.n_head * model.config.d_head
    names = set()
    for i, block in enumerate(model.transformer.h):
        for j, part in enumerate("qkv"):
            w = block.attn.c_attn.weight.detach()[j * width:(j + 1) * width]
            names |= {n for r, c in _largest(w, 3) for n in (f"{i}.attn.act_in[{c}]", f"{i}.attn.{part}[{r}]")}
        for w, src, dst in ((block.attn.c_proj.weight, "attn.v", "attn.resid_delta"),
                            (block.mlp.c_fc.weight, "mlp.act_in", "mlp.post_act"),
                            (block.mlp.c_proj.weight, "mlp.post_act", "mlp.resid_delta")):
            names |= {n for r, c in _largest(w.detach(), 3) for n in (f"{i}.{src}[{c}]", f"{i}.{dst}[{r}]")}
    # a residual channel written by layer 0 and read by layer 1, so the stream's paths show up
    names |= {"0.mlp.resid_delta[3]", "1.attn.act_in[3]", "1.mlp.act_in[3]"}
    keep = layout.keep_mask(sorted(names))
    circuit = Circuit(
        provenance=Provenance(task="single_double_quote", pruner=PruneConfig(),
                              checkpoint=str(tiny_checkpoint), checkpoint_fingerprint=loaded.fingerprint),
        model=asdict(model.config), nodes=layout.circuit_nodes(keep), edges=circuit_edges(model, layout, keep),
        calibration=Calibration(1.0, 0.0, 0.5), bisection=[(len(names), 0.5)])
    assert circuit.edges  # the largest weights join kept nodes
    return circuit.save(tmp_path_factory.mktemp("circuit") / "circuit.json")


@pytest.mark.slow
def test_neuronpedia_graphs_are_valid_and_hold_the_circuit(circuit_path, tmp_path, capsys):
    out = tmp_path / "graphs"
    proc = _export(capsys, circuit_path, "--format", "neuronpedia", "--out", out, "--pairs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "local_server import serve" in proc.stdout
    circuit = Circuit.load(circuit_path)
    loaded = load_any(circuit.provenance.checkpoint)
    index = json.loads((out / GRAPH_INDEX).read_text())
    assert len(index["graphs"]) == 4
    for entry in index["graphs"]:
        graph = json.loads((out / f"{entry['slug']}.json").read_text())
        assert check_graph(graph) == []
        meta = graph["metadata"]
        assert meta["slug"] == entry["slug"] and "".join(meta["prompt_tokens"]) == meta["prompt"]
        by_type = {}
        for node in graph["nodes"]:
            by_type.setdefault(node["feature_type"], []).append(node)
        assert len(by_type["embedding"]) == len(meta["prompt_tokens"])
        logits = by_type["logit"]
        assert len(logits) == 2 and sum(n["is_target_logit"] for n in logits) == 1
        last = len(meta["prompt_tokens"]) - 1
        ours = [n for n in graph["nodes"] if n["feature_type"] not in ("embedding", "logit")]
        assert len(ours) == len(circuit.nodes) and {n["ctx_idx"] for n in ours} == {last}
        assert all("top:" in n["clerp"] for n in ours)  # labels from the explanations
        # the full model's probabilities of the two answers
        ids = [int(n["node_id"].split("_")[1])  # E_<token>_<position>
               for n in sorted(by_type["embedding"], key=lambda n: n["ctx_idx"])]
        with torch.no_grad():
            probs = torch.softmax(loaded.model(torch.tensor([ids]))[0, -1], -1)
        for n in logits:
            assert n["token_prob"] == pytest.approx(float(probs[n["feature"]]), abs=1e-5)
        # every edge of circuit.json is a link, with its weight
        layout = NodeLayout(loaded.model.config)
        node_of = {f"{c.layer}_{layout.node_index(c.name)}_{last}": c.name for c in circuit.nodes}
        links = {(node_of.get(l["source"]), node_of.get(l["target"])): l["weight"] for l in graph["links"]}
        for e in circuit.edges:
            assert links[(e.source, e.target)] == pytest.approx(e.weight)
        # and the residual stream joins layer 0's write of channel 3 to layer 1's reads of it
        gain = float(loaded.model.transformer.h[1].ln_1.weight[3].detach())
        assert links[("0.mlp.resid_delta[3]", "1.attn.act_in[3]")] == pytest.approx(gain)
        assert any(l["target"] == logits[0]["node_id"] for l in graph["links"])


def test_check_graph_names_what_is_wrong(circuit_path, tmp_path, capsys):
    out = tmp_path / "graphs"
    assert _export(capsys, circuit_path, "--format", "neuronpedia", "--out", out, "--pairs", "1",
                   "--no-labels").returncode == 0
    graph = json.loads(next(p for p in out.glob("*.json") if p.name != GRAPH_INDEX).read_text())
    assert check_graph(graph) == []
    cases = [
        (lambda g: g.pop("links"), "graph: missing 'links'"),
        (lambda g: g["metadata"].pop("prompt_tokens"), "metadata: missing 'prompt_tokens'"),
        (lambda g: g["nodes"][0].update(ctx_idx="0"), "node 0: 'ctx_idx' is str"),
        (lambda g: g["nodes"][0].update(ctx_idx=999), "ctx_idx 999 outside"),
        (lambda g: g["links"][0].update(target="nowhere"), "target 'nowhere' is no node"),
        (lambda g: g["nodes"][-1].update(clerp="Output"), "'(p=...)'"),
        (lambda g: g["nodes"].append(dict(g["nodes"][0])), "duplicate node_id"),
        (lambda g: g["qParams"].pop("linkType"), "qParams: missing 'linkType'"),
    ]
    for spoil, message in cases:
        bad = copy.deepcopy(graph)
        spoil(bad)
        assert any(message in p for p in check_graph(bad)), (message, check_graph(bad))


@pytest.mark.slow
def test_openai_viz_data_holds_the_circuit_in_their_layout(circuit_path, tmp_path, capsys):
    proc = _export(capsys, circuit_path, "--format", "openai", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = torch.load(tmp_path / "viz_data.pt", weights_only=True)
    circuit = Circuit.load(circuit_path)
    loaded = load_any(circuit.provenance.checkpoint)
    layout = NodeLayout(loaded.model.config)
    kept = {loc: sorted(n.index for n in circuit.nodes if n.location == loc) for loc in layout.by_name}
    assert {loc: v.tolist() for loc, v in data["circuit_data"].items()} == kept
    assert sum(v.numel() for v in data["circuit_data"].values()) == len(circuit.nodes)
    assert data["num_total_nodes"] == layout.n_nodes
    imp = data["importances"]
    assert {loc: len(v) for loc, v in imp["ch_interv_losses"].items()} == {l: len(v) for l, v in kept.items()}
    assert set(imp["layer_interv_losses"]) == {f"{i}.{p}" for i in range(2) for p in ("attn", "mlp")}
    assert imp["beeg_model_config"]["n_layer"] == 2 and imp["beeg_model_config"]["d_head"] == 16
    docs, acts = imp["task_samples"]
    assert docs.shape[0] == 32 and set(acts) == {loc for loc, v in kept.items() if v}
    weights = {n: p.detach() for n, p in loaded.model.named_parameters()}
    width = loaded.model.config.n_head * loaded.model.config.d_head
    for w, src, tgt, (src_loc, tgt_loc) in imp["pair_data"]:
        assert (src, tgt) == (kept[src_loc], kept[tgt_loc]) and w.shape == (len(src), len(tgt))
        if src_loc.endswith("mlp.act_in") and src and tgt:
            full = weights[f"transformer.h.{src_loc[0]}.mlp.c_fc.weight"]
            assert float(w[0, 0]) == pytest.approx(float(full[tgt[0], src[0]]))
        if tgt_loc.endswith("attn.k") and src and tgt:
            full = weights[f"transformer.h.{src_loc[0]}.attn.c_attn.weight"]
            assert float(w[-1, -1]) == pytest.approx(float(full[width + tgt[-1], src[-1]]))
    # their stored losses are per pair, twice ours per prompt
    assert data["all_loss"][0] == [len(circuit.nodes), pytest.approx(1.0)]
    loc, j = circuit.nodes[0].location, circuit.nodes[0].index
    bottom, top = data["samples"][loc][j][0.001]
    tokens, values, focus = top[0]
    assert tokens.shape == values.shape and values[focus] >= top[-1][1][top[-1][2]]


def test_csv_tables(circuit_path, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparse_gpt.export", str(circuit_path), "--format", "csv",
                           "--out", str(tmp_path), "--no-labels"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    circuit = Circuit.load(circuit_path)
    with open(tmp_path / "nodes.csv", newline="") as f:
        nodes = list(csv.DictReader(f))
    with open(tmp_path / "edges.csv", newline="") as f:
        edges = list(csv.DictReader(f))
    assert [n["name"] for n in nodes] == circuit.node_names
    assert [(e["source"], e["target"], float(e["weight"])) for e in edges] == [
        (e.source, e.target, pytest.approx(e.weight)) for e in circuit.edges]
    assert nodes[0].keys() >= {"location", "layer", "kind", "index", "score", "label"}


def test_bad_input_is_one_line_and_exit_2(circuit_path, tmp_path, capsys):
    missing = _export(capsys, tmp_path / "nope.json", "--format", "csv", "--out", tmp_path / "o")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "no circuit file" in missing.stderr
    (tmp_path / "file").write_text("x")
    not_dir = _export(capsys, circuit_path, "--format", "csv", "--out", tmp_path / "file", "--no-labels")
    assert not_dir.returncode == 2 and "not a directory" in not_dir.stderr
    moved = json.loads(circuit_path.read_text())
    moved["provenance"]["checkpoint"] = str(tmp_path / "gone")
    from sparse_gpt.circuit.artefact import checksum
    moved["checksum"] = checksum(moved)
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    gone = _export(capsys, tmp_path / "moved.json", "--format", "neuronpedia", "--out", tmp_path / "o")
    assert gone.returncode == 2 and "pass --checkpoint" in gone.stderr
    assert "Traceback" not in missing.stderr + not_dir.stderr + gone.stderr
