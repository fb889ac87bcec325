"""The README's main command, shortened: train cpu-small for a few steps, then prune the quote circuit."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inprocess import run_main, script_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_main_job_shortened(tmp_path):
    out = tmp_path / "run"
    # 10 steps (two evaluations, two checkpoints) prove the training stage. The circuit stage runs the
    # real job's budgeted search for one trial on a target any model meets; its 3-second budget is
    # spent by then, so refinement makes its first greedy pass but skips the retraining (15 s of CPU
    # time; the planted-circuit tests cover it), then validation, pictures and the viewer as usual.
    env = dict(os.environ, PRUNE_ARGS="--steps 10 --search-runs 1 --budget 0.05 --no-control --target-loss 5 "
                                      "--allow-chance-target --no-progress")
    proc = subprocess.run(["bash", "scripts/main.sh", "--out", str(out), "--steps", "10", "--no-progress",
                           "--set", "train.eval_interval=5", "--set", "train.ckpt_interval=5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "done: val loss" in proc.stdout and "unigram baseline" in proc.stdout
    assert "single_double_quote" in proc.stdout and "necessity" in proc.stdout  # the circuit table
    circuit_dir = out / "circuits" / "single_double_quote"
    circuit = json.loads((circuit_dir / "circuit.json").read_text())
    assert circuit["schema"] == "sparse_gpt.circuit/1" and circuit["metrics"]["nodes"] > 0
    # the artefact records how the circuit shrank, stage by stage, ending at its own size
    stages = circuit["metrics"]["stages"]
    assert stages[0]["stage"] == "trained" and [s["stage"] for s in stages][-2:] == ["greedy", "edges"]
    assert stages[-1]["nodes"] == circuit["metrics"]["nodes"] and "nodes by stage: trained" in proc.stderr
    page = (circuit_dir / "circuit.html").read_text()
    assert page.count('<circle class="node"') == circuit["metrics"]["nodes"] and "Top-activating" in page
    assert (circuit_dir / "circuit.png").exists() and (circuit_dir / "circuit.svg").exists()
    # the labelled diagram is drawn exactly when the circuit is small enough to read
    assert (circuit_dir / "circuit_labelled.png").exists() == (circuit["metrics"]["nodes"] <= 40)
    # re-rendering finds the checkpoint through circuit.json and reuses the cached explanations
    (circuit_dir / "circuit.html").unlink()
    proc = subprocess.run([sys.executable, "-m", "sparse_gpt.render", str(circuit_dir / "circuit.json"),
                           "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (circuit_dir / "circuit.html").exists() and "computing" not in proc.stderr
    # the seed-study table reads the run behind the circuit through circuit.json
    spread = [sys.executable, "tools/circuit_spread.py", str(circuit_dir / "circuit.json")]
    proc = subprocess.run(spread, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if "step_000010" in line).split(" | ")
    assert row[1:4] == ["0", "10", "auto"] and row[5] == str(circuit["metrics"]["nodes"])
    assert "of 1;" in proc.stdout and f"all 1: nodes median {circuit['metrics']['nodes']} " in proc.stdout
    proc = subprocess.run(spread + [str(tmp_path / "missing.json")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: no circuit file at {tmp_path / 'missing.json'}"


def test_prune_cli_errors(tmp_path, capsys):
    prune = script_main("prune_circuit.py")  # in-process (tests/inprocess.py)
    run = ["--checkpoint", str(tmp_path / "nowhere"), "--task"]
    proc = run_main(prune, run + ["single_double_quote"], capsys)
    assert proc.returncode == 2 and "nowhere" in proc.stderr
    proc = run_main(prune, run + ["quote_closing"], capsys)
    assert proc.returncode == 2 and "single_double_quote" in proc.stderr  # lists / suggests valid names
