"""Bad input to the analysis commands (python -m sparse_gpt.explain / intervene / export / tasks, and
prune_circuit.py): exit status 2, one line naming the problem, no traceback, and the checkpoint and
every other file exactly as they were. Each case runs the command's main in-process
(tests/inprocess.py), and a few of them also through the real command line. Then the faults those commands must survive: a checkpoint
directory they cannot write, and node caches someone rewrote.

Each case is (name, arguments, what the error line must say, setup). Arguments may use the
placeholders RUN (a copy of a trained tiny run) and TMP (the test's temporary directory); setup
prepares TMP.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from inprocess import module_main, run_main, script_main

from sparse_gpt.circuit import Circuit, Provenance
from sparse_gpt.circuit.artefact import checksum
from sparse_gpt.explain import ExplainSettings, node_contexts
from sparse_gpt.explain.contexts import CONTEXTS_FILE
from sparse_gpt.loading import load_any
from sparse_gpt.nodes import MEANS_FILE, CircuitEdge, CircuitNode, NodeLayout, load_or_compute_means
from sparse_gpt.prune.objective import Calibration
from sparse_gpt.prune.pruner import PruneConfig
from sparse_gpt.tensor_cache import fallback_path, tensors_sha256

ROOT = Path(__file__).resolve().parents[1]


def snapshot(path: Path) -> dict[str, str]:
    """Every file and directory under `path` with a hash of its content."""
    return {p.relative_to(path).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def run_dir(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    """A copy of the tiny trained run, so nothing here touches the session's own."""
    dst = tmp_path_factory.mktemp("analysis") / "run"
    shutil.copytree(tiny_checkpoint, dst, ignore=shutil.ignore_patterns("node_*.safetensors"))
    return dst


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The user cache directory points into the test's own temporary directory."""
    return os.environ | {"XDG_CACHE_HOME": str(tmp_path / "xdg")}


def run_module(module: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=env)


# ----- a hand-made circuit.json, re-signed after each edit as someone crafting it would --------

def _circuit_json(node_fields: dict, fields: dict | None = None):
    """A hand-made circuit.json with its first node's `node_fields` and the top-level `fields`
    changed, re-signed so that the checksum passes."""
    def setup(tmp: Path) -> None:
        circuit = Circuit(Provenance("single_double_quote", PruneConfig()), {"n_layer": 2, "d_model": 32},
                          [CircuitNode("0.mlp.post_act[3]", "0.mlp.post_act", 0, "mlp_neuron", 3, 0.5),
                           CircuitNode("1.attn.v[2]", "1.attn.v", 1, "attn_v", 2)],
                          [CircuitEdge("1.attn.v[2]", "0.mlp.post_act[3]", 0.25,
                                       "transformer.h.0.mlp.c_fc.weight")], Calibration(1.0, 0.0))
        d = circuit.to_dict()
        d["nodes"][0] |= node_fields
        d |= fields or {}
        d["checksum"] = checksum(d)
        (tmp / "circuit.json").write_text(json.dumps(d))
    return setup


def _no_setup(tmp: Path) -> None:
    pass


def _a_file(tmp: Path) -> None:
    (tmp / "afile").write_text("not a checkpoint\n")


EXPLAIN = ["sparse_gpt.explain", "--checkpoint", "RUN"]
INTERVENE = ["sparse_gpt.intervene", "--checkpoint", "RUN"]
PROMPT = ["--prompt", "print(x"]
EXPORT = ["sparse_gpt.export", "TMP/circuit.json", "--format", "csv", "--no-labels", "--out", "TMP/out"]
SHOW = ["sparse_gpt.tasks", "show"]
QUOTE_ON_RUN = [*SHOW, "single_double_quote", "--checkpoint", "RUN", "--eval-pairs", "8"]
CASES = [
    # --- explain
    ("explain without a node", EXPLAIN, "the following arguments are required: NODE", _no_setup),
    ("explain unknown option", [*EXPLAIN, "0.mlp.post_act[3]", "--contxts", "3"], "unrecognized arguments",
     _no_setup),
    ("explain checkpoint missing", ["sparse_gpt.explain", "--checkpoint", "TMP/none", "0.mlp.post_act[3]"],
     "no checkpoint at", _no_setup),
    ("explain checkpoint is a file", ["sparse_gpt.explain", "--checkpoint", "TMP/afile", "0.mlp.post_act[3]"],
     "is a file; expected a run directory", _a_file),
    ("explain node name malformed", [*EXPLAIN, "mlp.post_act[3]"], "no node named 'mlp.post_act[3]'",
     _no_setup),
    ("explain node index out of range", [*EXPLAIN, "0.mlp.post_act[3]", "0.mlp.post_act[999]"],
     "index 999 out of range (0.mlp.post_act has 128 nodes)", _no_setup),
    ("explain --tokens 0", [*EXPLAIN, "0.mlp.post_act[3]", "--tokens", "0"], "--tokens: must be at least 1",
     _no_setup),
    ("explain --tokens negative", [*EXPLAIN, "0.mlp.post_act[3]", "--tokens", "-5"],
     "--tokens: must be at least 1", _no_setup),
    ("explain --tokens below one context", [*EXPLAIN, "0.mlp.post_act[3]", "--tokens", "10"],
     "less than one window of the model's context (64 tokens)", _no_setup),
    ("explain --contexts 0", [*EXPLAIN, "0.mlp.post_act[3]", "--contexts", "0"],
     "--contexts: must be at least 1", _no_setup),
    ("explain --contexts not a number", [*EXPLAIN, "0.mlp.post_act[3]", "--contexts", "many"],
     "--contexts: expected a whole number", _no_setup),
    # --- intervene
    ("intervene --set NaN", [*INTERVENE, "--set", "0.attn.v[1]=nan", *PROMPT],
     "'0.attn.v[1]=nan': a node can only be set to a finite number", _no_setup),
    ("intervene --set inf", [*INTERVENE, "--set", "0.attn.v[1]=inf", *PROMPT],
     "'0.attn.v[1]=inf': a node can only be set to a finite number", _no_setup),
    ("intervene --set -inf", [*INTERVENE, "--set", "0.attn.v[1]=-inf", *PROMPT],
     "'0.attn.v[1]=-inf': a node can only be set to a finite number", _no_setup),
    ("intervene --set not a number", [*INTERVENE, "--set", "0.attn.v[1]=high", *PROMPT], "expected NODE=VALUE",
     _no_setup),
    ("intervene --set without =", [*INTERVENE, "--set", "0.attn.v[1]", *PROMPT], "expected NODE=VALUE",
     _no_setup),
    ("intervene nothing to set", [*INTERVENE, *PROMPT], "give --set NODE=VALUE or --ablate NODE", _no_setup),
    ("intervene no prompt", [*INTERVENE, "--ablate", "0.attn.v[1]"], "give --prompt TEXT", _no_setup),
    ("intervene unknown ablation", [*INTERVENE, "--ablate", "0.attn.v[1]", "--ablation", "noise", *PROMPT],
     "--ablation: invalid choice", _no_setup),
    ("intervene unknown task", [*INTERVENE, "--ablate", "0.attn.v[1]", "--task", "nope"], "unknown task 'nope'",
     _no_setup),
    ("intervene --pairs 0", [*INTERVENE, "--ablate", "0.attn.v[1]", "--task", "single_double_quote",
                             "--pairs", "0"], "--pairs: must be at least 1", _no_setup),
    ("intervene --top negative", [*INTERVENE, "--ablate", "0.attn.v[1]", *PROMPT, "--top", "-2"],
     "--top: must be at least 0", _no_setup),
    ("intervene ablated node out of range", [*INTERVENE, "--ablate", "0.mlp.post_act[999]", *PROMPT],
     "index 999 out of range", _no_setup),
    ("intervene set node malformed", [*INTERVENE, "--set", "0.mlp.neuron[1]=2", *PROMPT],
     "no node named '0.mlp.neuron[1]'", _no_setup),
    ("intervene empty prompt", [*INTERVENE, "--set", "0.attn.v[1]=2", "--prompt", ""], "prompt 0 is empty",
     _no_setup),
    ("intervene prompt longer than the context", [*INTERVENE, "--set", "0.attn.v[1]=2", "--prompt",
                                                   "x = 1\n" * 100], "more than the model's context of 64",
     _no_setup),
    ("intervene answer not one token", [*INTERVENE, "--set", "0.attn.v[1]=2", *PROMPT, "--answers",
                                        "abc def", ")"], "is not a single token", _no_setup),
    ("intervene checkpoint missing", ["sparse_gpt.intervene", "--checkpoint", "TMP/none", "--set",
                                      "0.attn.v[1]=2", *PROMPT], "no checkpoint at", _no_setup),
    # --- tasks
    ("tasks unknown command", ["sparse_gpt.tasks", "bogus"], "argument command: invalid choice: 'bogus'",
     _no_setup),
    ("tasks unknown task", [*SHOW, "nope"], "unknown task 'nope'", _no_setup),
    ("tasks --n 0", [*SHOW, "single_double_quote", "--n", "0"], "--n: must be at least 1", _no_setup),
    ("tasks --eval-pairs 0", [*SHOW, "single_double_quote", "--checkpoint", "RUN", "--eval-pairs", "0"],
     "--eval-pairs: must be at least 1", _no_setup),
    ("tasks --seed not a number", [*SHOW, "single_double_quote", "--seed", "x"],
     "--seed: invalid int value: 'x'", _no_setup),
    ("tasks unknown device", [*QUOTE_ON_RUN, "--device", "tpu"], "--device: invalid choice: 'tpu'", _no_setup),
    ("tasks checkpoint missing", [*SHOW, "single_double_quote", "--checkpoint", "TMP/none"], "no checkpoint at",
     _no_setup),
    ("tasks checkpoint is a file", [*SHOW, "single_double_quote", "--checkpoint", "TMP/afile"],
     "is a file; expected a run directory", _a_file),
    ("tasks tokenizer missing", [*SHOW, "single_double_quote", "--tokenizer", "TMP/none"],
     "tokenizer file not found", _no_setup),
    ("tasks tokenizer not a tokenizer", [*SHOW, "single_double_quote", "--tokenizer", "TMP/afile"],
     "is corrupt or not a tokenizer.json", _a_file),
    ("tasks natural source missing", [*SHOW, "single_double_quote", "--split", "natural", "--source", "TMP/none"],
     "none: no such file or directory", _no_setup),
    ("tasks task not posable on the tokenizer", [*SHOW, "class_init", "--checkpoint", "RUN", "--eval-pairs", "8"],
     "task class_init cannot be posed on this tokenizer", _no_setup),
    ("tasks prompt longer than the context", QUOTE_ON_RUN, "does not fit the model's context of 64 tokens",
     _no_setup),
    # --- export arguments
    ("export unknown format", ["sparse_gpt.export", "TMP/circuit.json", "--format", "svg", "--out", "TMP/out"],
     "argument --format: invalid choice: 'svg'", _no_setup),
    ("export without --out", ["sparse_gpt.export", "TMP/circuit.json", "--format", "csv"],
     "the following arguments are required: --out", _no_setup),
    ("export --pairs not a number", [*EXPORT, "--pairs", "two"], "--pairs: expected a whole number, got 'two'",
     _no_setup),
    # --- circuit.json node records (re-signed, so the checksum passes)
    ("circuit node index a string", EXPORT, "'index' should be a whole number >= 0, got '3'",
     _circuit_json({"index": "3"})),
    ("circuit node layer null", EXPORT, "'layer' should be a whole number >= 0, got None",
     _circuit_json({"layer": None})),
    ("circuit node layer a bool", EXPORT, "'layer' should be a whole number >= 0, got True",
     _circuit_json({"layer": True})),
    ("circuit node index negative", EXPORT, "'index' should be a whole number >= 0, got -1",
     _circuit_json({"index": -1})),
    ("circuit node score a string", EXPORT, "'score' should be a number, got 'high'",
     _circuit_json({"score": "high"})),
    ("circuit node name a list", EXPORT, "'name' should be a string, got [5]", _circuit_json({"name": [5]})),
    ("circuit node kind unknown", EXPORT, "'kind' should be one of", _circuit_json({"kind": "neuron"})),
    ("circuit node name disagrees with its index", EXPORT, "is not its location and index, 0.mlp.post_act[7]",
     _circuit_json({"index": 7})),
    ("circuit node layer disagrees with its location", EXPORT,
     "location '0.mlp.post_act' does not agree with layer 1", _circuit_json({"layer": 1})),
    ("circuit node_level_edges negative", EXPORT, "field 'node_level_edges' should be a whole number >= 0, got -3",
     _circuit_json({}, {"node_level_edges": -3})),
    ("circuit edge to a node it does not have", EXPORT, "does not join two of the circuit's nodes",
     _circuit_json({}, {"edges": [{"source": "1.attn.v[2]", "target": "0.mlp.post_act[9]", "weight": 0.5,
                                   "matrix": "transformer.h.0.mlp.c_fc.weight"}]})),
]


def assert_one_clean_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    """Exit status 2 and one `error:` line that says `expected`; no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


def _fill(args: list[str], tmp: Path, run: Path) -> list[str]:
    subs = {"RUN": str(run), "TMP": str(tmp)}
    out = []
    for a in args:
        for key, value in subs.items():
            if a == key or a.startswith(key + "/"):
                a = value + a[len(key):]
        out.append(a)
    return out


# Every case runs in-process (the command's main, from the repository root); these also run through the
# real command line: an argparse error, a missing checkpoint, a bad node name, a task error, a bad
# circuit.json, and prune_circuit.py's argparse and config checks.
END_TO_END = {"explain node index out of range", "intervene --set NaN", "tasks unknown command",
              "tasks checkpoint is a file", "export without --out", "circuit node kind unknown"}
PRUNE_END_TO_END = {"prune --steps 0", "prune --target-loss at chance"}


def _check_case(args, expected, setup, run_dir: Path, tmp_path: Path, run) -> None:
    work = tmp_path / "work"
    work.mkdir()
    setup(work)
    before_run, before_work = snapshot(run_dir), snapshot(work)
    module, *rest = _fill(args, work, run_dir)
    assert_one_clean_line(run(module, rest), expected)
    assert snapshot(run_dir) == before_run, "the checkpoint changed"
    assert snapshot(work) == before_work, "files appeared or changed"
    assert not (tmp_path / "xdg").exists(), "something was cached"


def _in_process(monkeypatch, tmp_path: Path, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return lambda module, args: run_main(module_main(module), args, capsys)


@pytest.mark.parametrize("name, args, expected, setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line(name, args, expected, setup, run_dir: Path, tmp_path: Path, monkeypatch,
                                     capsys):
    _check_case(args, expected, setup, run_dir, tmp_path, _in_process(monkeypatch, tmp_path, capsys))


@pytest.mark.parametrize("name, args, expected, setup", [c for c in CASES if c[0] in END_TO_END],
                         ids=[c[0] for c in CASES if c[0] in END_TO_END])
def test_bad_input_through_the_real_command_line(name, args, expected, setup, run_dir: Path, tmp_path: Path,
                                                 env):
    _check_case(args, expected, setup, run_dir, tmp_path, lambda module, rest: run_module(module, rest, env))


# prune_circuit.py is a script, not a module: its cases run it by path, on the same copied run.
PRUNE_CASES = [
    ("prune --steps 0", ["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    ("prune --search-runs 0", ["--search-runs", "0"], "argument --search-runs: must be at least 1, got 0"),
    ("prune --target-loss at chance", ["--target-loss", "0.7"], "at or above chance (ln 2 = 0.693)"),
    ("prune --target-loss nan", ["--target-loss", "nan"], "target loss must be positive, got nan"),
    ("prune --target-loss negative", ["--target-loss", "-0.1"], "target loss must be positive, got -0.1"),
    ("prune --k-coef negative", ["--k-coef", "-1"], "k_coef must be a positive number, got -1.0"),
    ("prune --lr inf", ["--lr", "inf"], "lr must be a positive number, got inf"),
    ("prune --budget negative", ["--budget", "-1"], "budget must be a non-negative number of minutes"),
    ("prune --search-margin 1", ["--search-margin", "1"], "search_margin must be in [0, 1), got 1.0"),
    ("prune --natural-margin 0.05", ["--natural-margin", "0.05"], "natural_margin must be in [0, 0.05), got 0.05"),
    ("prune --steps not a number", ["--steps", "many"], "argument --steps: expected a whole number, got 'many'"),
]


def _check_prune_case(args, expected, run_dir: Path, tmp_path: Path, run) -> None:
    before = snapshot(run_dir)
    assert_one_clean_line(run(["--checkpoint", str(run_dir), "--task", "single_double_quote", "--no-progress",
                               *args]), expected)
    assert snapshot(run_dir) == before, "the checkpoint changed"
    assert not (tmp_path / "xdg" / "sparse_gpt").exists(), "something was cached"  # matplotlib may cache fonts


@pytest.mark.parametrize("name, args, expected", PRUNE_CASES, ids=[c[0] for c in PRUNE_CASES])
def test_bad_prune_input_is_one_clean_line(name, args, expected, run_dir: Path, tmp_path: Path, monkeypatch,
                                           capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _check_prune_case(args, expected, run_dir, tmp_path,
                      lambda argv: run_main(script_main("prune_circuit.py"), argv, capsys))


@pytest.mark.parametrize("name, args, expected", [c for c in PRUNE_CASES if c[0] in PRUNE_END_TO_END],
                         ids=[c[0] for c in PRUNE_CASES if c[0] in PRUNE_END_TO_END])
def test_bad_prune_input_through_the_real_command_line(name, args, expected, run_dir: Path, tmp_path: Path, env):
    _check_prune_case(args, expected, run_dir, tmp_path, lambda argv: subprocess.run(
        [sys.executable, "prune_circuit.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env))


def test_every_end_to_end_case_exists():
    assert END_TO_END <= {c[0] for c in CASES} and PRUNE_END_TO_END <= {c[0] for c in PRUNE_CASES}


CLEAN_CASES = len(CASES) + len(PRUNE_CASES)


def test_docs_list_every_case():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    missing = [name for name, *_ in CASES + PRUNE_CASES if f"| {name} |" not in doc]
    assert not missing, f"docs/reliability.md lacks rows for {missing}"


# ----- a checkpoint directory that cannot be written -----------------------------------------------

def _make_unwritable(directory: Path) -> str:
    """Stop new files in `directory`, in a way the test's user respects; returns how.

    The tests run as root, which ignores permission bits, so chmod alone proves nothing there. The
    immutable attribute (chattr +i, on ext4, xfs, btrfs) binds root too: creating a file in the
    directory fails with EPERM, as on read-only media. Without it (another file system, or no
    CAP_LINUX_IMMUTABLE) a non-root user gets chmod 555; root gets neither and the test is skipped."""
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0:
        return "chattr"
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return "chmod"
    pytest.skip("running as root without chattr +i: no way to make a directory unwritable for root")


def _make_writable(directory: Path, how: str) -> None:
    if how == "chattr":
        subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o755)


def test_a_read_only_checkpoint_caches_in_the_user_cache_directory(run_dir: Path, tmp_path: Path, env, monkeypatch,
                                                                   capsys):
    """explain and intervene --ablate on a checkpoint whose directory cannot be written: both work,
    their caches go to $XDG_CACHE_HOME/sparse_gpt, the second call (a new process) reads them, and the
    checkpoint is untouched."""
    run = tmp_path / "ro-run"
    shutil.copytree(run_dir, run)
    step = next((run / "checkpoints").glob("step_*"))
    before = snapshot(run)
    explain = ["--checkpoint", str(run), "0.mlp.post_act[3]"]
    ablate = ["--checkpoint", str(run), "--ablate", "1.mlp.post_act[5]", "--prompt", "x = 'abc"]
    how = _make_unwritable(step)
    first = _in_process(monkeypatch, tmp_path, capsys)
    try:
        first_e, again_e = first("sparse_gpt.explain", explain), run_module("sparse_gpt.explain", explain, env)
        first_i, again_i = first("sparse_gpt.intervene", ablate), run_module("sparse_gpt.intervene", ablate, env)
    finally:
        _make_writable(step, how)
    for first, again in ((first_e, again_e), (first_i, again_i)):
        assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
        assert "could not write" in first.stderr and str(tmp_path / "xdg") in first.stderr, first.stderr
        assert again.returncode == 0 and again.stderr == "", again.stderr  # read from the user cache
        assert again.stdout == first.stdout
    cache_dir = tmp_path / "xdg" / "sparse_gpt" / "checkpoint-caches"
    assert sorted(p.name.split("-", 1)[1] for p in cache_dir.iterdir()) == [CONTEXTS_FILE, MEANS_FILE]
    assert snapshot(run) == before


def test_user_cache_names_never_collide(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    a, b = tmp_path / "a" / MEANS_FILE, tmp_path / "b" / MEANS_FILE
    assert fallback_path(a, "k") != fallback_path(b, "k") != fallback_path(b, "other key")
    assert fallback_path(a, "k").parent == tmp_path / "xdg" / "sparse_gpt" / "checkpoint-caches"


def test_a_path_in_the_way_of_the_cache_still_gives_the_answer(run_dir: Path, tmp_path: Path, monkeypatch):
    """Whatever stops the write (here a directory where the cache file goes), the tensors are
    computed, cached in the user cache, and read from there next time."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    loaded = load_any(run)
    (loaded.path / MEANS_FILE).mkdir()
    logs: list[str] = []
    layout = NodeLayout(loaded.model.config)
    args = (loaded.model, layout, loaded.tokenizer, loaded.path, loaded.fingerprint, loaded.data)
    first = load_or_compute_means(*args, n_tokens=4096, log=logs.append)
    assert len(logs) == 2 and "could not write" in logs[1] and "cached in" in logs[1], logs
    again = load_or_compute_means(*args, n_tokens=4096, log=logs.append)
    assert len(logs) == 2 and torch.equal(first, again)


# ----- caches someone rewrote ---------------------------------------------------------------------

@pytest.fixture
def loaded_copy(run_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    return load_any(run)


def _resign(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace a cache's tensors, keeping its key and recording their new checksum."""
    with safe_open(str(path), "pt") as f:
        key = f.metadata()["key"]
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"key": key, "sha256": tensors_sha256(tensors)})


def _means(loaded, log):
    return load_or_compute_means(loaded.model, NodeLayout(loaded.model.config), loaded.tokenizer, loaded.path,
                                 loaded.fingerprint, loaded.data, n_tokens=4096, log=log)


@pytest.mark.parametrize("damage, note", [
    (lambda t: {"means": t["means"][:10]}, "holds means of shape (10,) (torch.float32), but this model has"),
    (lambda t: {"means": torch.full_like(t["means"], float("nan"))}, "holds means that are not finite"),
    (lambda t: {"means": t["means"], "extra": torch.zeros(1)}, "not one tensor 'means'"),
    (None, "does not match the checksum recorded in it"),
    ("garbage", "cannot be read"),
], ids=["wrong shape", "nan", "extra tensor", "edited without re-signing", "garbage bytes"])
def test_a_rewritten_node_means_cache_is_recomputed_with_a_note(loaded_copy, damage, note):
    first = _means(loaded_copy, log=lambda m: None)
    path = loaded_copy.path / MEANS_FILE
    if damage == "garbage":
        path.write_bytes(b"\x08" + bytes(200))
    elif damage is None:  # same tensor names, shapes and metadata, other values
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        save_file({"means": tensors["means"] + 1.0}, str(path), metadata=meta)
    else:
        _resign(path, damage(load_file(str(path))))
    logs: list[str] = []
    again = _means(loaded_copy, log=logs.append)
    assert len(logs) == 1 and logs[0].startswith(f"note: {path} ") and note in logs[0], logs
    assert "recomputing node means" in logs[0]
    assert torch.equal(first, again)
    assert torch.equal(_means(loaded_copy, log=lambda m: pytest.fail(f"recomputed again: {m}")), first)


SMALL = ExplainSettings(n_tokens=2048, k=6, n_contexts=3, before=4, after=2)


@pytest.mark.parametrize("damage, note", [
    (lambda t: t | {"positions": t["positions"] + 10**9}, "holds positions outside its"),
    (lambda t: t | {"windows": t["windows"] + 10**6}, "holds token ids outside the vocabulary"),
    (lambda t: t | {"values": t["values"][:, :, :5]}, "holds values of shape"),
    (lambda t: t | {"contexts": t["contexts"][..., :3]}, "holds contexts of shape"),
    (lambda t: {k: v for k, v in t.items() if k != "windows"}, "holds ['contexts', 'positions', 'values']"),
], ids=["positions out of range", "token ids out of range", "values for fewer nodes", "narrow contexts",
        "windows missing"])
def test_a_rewritten_node_contexts_cache_is_recomputed_with_a_note(loaded_copy, damage, note):
    first = node_contexts(loaded_copy, SMALL, log=lambda m: None).explain("0.mlp.post_act[3]")
    path = loaded_copy.path / CONTEXTS_FILE
    _resign(path, damage(load_file(str(path))))
    logs: list[str] = []
    again = node_contexts(loaded_copy, SMALL, log=logs.append).explain("0.mlp.post_act[3]")
    assert len(logs) == 1 and logs[0].startswith(f"note: {path} ") and note in logs[0], logs
    assert json.dumps(again.to_dict()) == json.dumps(first.to_dict())  # NaN marks a window's end


def test_a_rewritten_cache_through_the_command_line(run_dir: Path, tmp_path: Path, env, monkeypatch, capsys):
    """intervene --ablate on a checkpoint whose node means someone replaced (and re-signed) with
    means for another model: one note, then the same answer as with the real means."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    args = ["--checkpoint", str(run), "--ablate", "1.mlp.post_act[5]", "--prompt", "x = 'abc"]
    clean = _in_process(monkeypatch, tmp_path, capsys)("sparse_gpt.intervene", args)
    assert clean.returncode == 0, clean.stderr
    path = next((run / "checkpoints").glob("step_*")) / MEANS_FILE
    _resign(path, {"means": torch.zeros(7)})
    again = run_module("sparse_gpt.intervene", args, env)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 0 and len(lines) == 1 and "holds means of shape (7,)" in lines[0], again.stderr
    assert again.stdout == clean.stdout
