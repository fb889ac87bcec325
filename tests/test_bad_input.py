"""Bad input to train.py: exit status 2, one line naming the problem, no traceback, and the run
directory exactly as it was. Each case runs train.py's main in-process (tests/inprocess.py), and a
few of them also through the real command line.

Each case is (name, arguments, what the error line must say, setup). Arguments may use the
placeholders RUN (a copy of a finished 4-step run), NEW (a directory that does not exist yet),
TMP (the test's temporary directory) and TINY (configs/tiny.yaml); setup prepares TMP or RUN.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inprocess import run_main, script_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
FAST = ["--no-progress", "--set", "train.ckpt_interval=2", "--set", "train.eval_interval=2",
        "--set", "train.log_interval=2"]


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args]


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def snapshot(path: Path) -> dict[str, str]:
    """Every file and directory under `path` with a hash of its content.

    The content of a run's .lock is left out: it records the pid of whichever process last took the
    lock (a refused run that got as far as checking the checkpoint under the lock writes its own),
    which is bookkeeping, not run data. That the file exists is still compared."""
    if not path.exists():
        return {}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = "lock" if p.name == ".lock" else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny run trained to its end (step 4), with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = run_main(script_main("train.py"), ["--config", str(TINY), "--out", str(out), "--steps", "4", *FAST])
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    return dst


# ----- helpers that damage things ------------------------------------------------------------

def resign(ckpt: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint file and recompute checksums.json, as someone crafting it would."""
    (ckpt / name).write_bytes(data)
    manifest = json.loads((ckpt / "checksums.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (ckpt / "checksums.json").write_text(json.dumps(manifest))


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()


class _CreatesFileOnLoad:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_train_state(tmp: Path, run: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"step": 4, "optimizer": _CreatesFileOnLoad(str(tmp / "pwned")), "rng": {}}, buffer)
    ckpt = latest(run)
    (run / "checkpoints" / "LATEST").write_text("step_000002\n")  # resume from an earlier one
    resign(run / "checkpoints" / "step_000002", "train_state.pt", buffer.getvalue())
    assert ckpt.exists()


def _write(name: str, text: str):
    def setup(tmp: Path, run: Path) -> None:
        (tmp / name).write_text(text)
    return setup


def _resign_config(text: bytes):
    def setup(tmp: Path, run: Path) -> None:
        (run / "checkpoints" / "LATEST").write_text("step_000002\n")
        resign(run / "checkpoints" / "step_000002", "config.yaml", text)
    return setup


def _flip_byte(tmp: Path, run: Path) -> None:
    path = run / "checkpoints" / "step_000002" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    (run / "checkpoints" / "LATEST").write_text("step_000002\n")


def _latest_to_missing(tmp: Path, run: Path) -> None:
    (run / "checkpoints" / "LATEST").write_text("step_000008\n")


def _latest_garbage(tmp: Path, run: Path) -> None:
    (run / "checkpoints" / "LATEST").write_text("../../etc\n")


def _resign_meta(tmp: Path, run: Path) -> None:
    (run / "checkpoints" / "LATEST").write_text("step_000002\n")
    resign(run / "checkpoints" / "step_000002", "meta.json", b"[1, 2")


def _metrics_middle_garbage(tmp: Path, run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = "{not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "checkpoints" / "LATEST").write_text("step_000002\n")


def _empty_corpus_dir(tmp: Path, run: Path) -> None:
    (tmp / "empty").mkdir()


def _out_parent_file(tmp: Path, run: Path) -> None:
    (tmp / "afile").write_text("not a directory\n")


def _no_setup(tmp: Path, run: Path) -> None:
    pass


CFG = ["--config", "TINY", "--out", "NEW", *FAST]
CASES = [
    # --- the command line and the config file
    ("no --config or --out", [], "give --config", _no_setup),
    ("unknown option", [*CFG, "--stpes", "3"], "unrecognized arguments", _no_setup),
    ("--steps not a number", [*CFG, "--steps", "ten"], "--steps: invalid int value", _no_setup),
    ("--resume with --overwrite", [*CFG, "--resume", "--overwrite"], "not allowed with", _no_setup),
    ("--device unknown", [*CFG, "--device", "tpu"], "--device: invalid choice", _no_setup),
    ("config file missing", ["--config", "TMP/nope.yaml", "--out", "NEW"], "config file not found",
     _no_setup),
    ("config is a directory", ["--config", "TMP", "--out", "NEW"], "it is a directory", _no_setup),
    ("config not YAML", ["--config", "TMP/bad.yaml", "--out", "NEW"], "not valid YAML",
     _write("bad.yaml", "model: [1, 2\n")),
    ("config is a list", ["--config", "TMP/bad.yaml", "--out", "NEW"], "holds a list",
     _write("bad.yaml", "- a\n- b\n")),
    ("config is a scalar", ["--config", "TMP/bad.yaml", "--out", "NEW"], "holds an int",
     _write("bad.yaml", "5\n")),
    ("config section not a mapping", ["--config", "TMP/bad.yaml", "--out", "NEW"],
     "train must be a mapping", _write("bad.yaml", "train: 5\n")),
    ("config key typo", ["--config", "TMP/bad.yaml", "--out", "NEW"], "did you mean 'n_layer'",
     _write("bad.yaml", "model:\n  n_layers: 2\n")),
    ("config not UTF-8", ["--config", "TMP/bad.yaml", "--out", "NEW"], "cannot read it as text",
     lambda tmp, run: (tmp / "bad.yaml").write_bytes(b"model:\n  norm: \xff\xfe\n")),
    ("--set without =", [*CFG, "--set", "train.lr"], "must look like key.path=value", _no_setup),
    ("--set value not YAML", [*CFG, "--set", "train.lr=[1,"], "not valid YAML", _no_setup),
    ("--set empty key part", [*CFG, "--set", "train..lr=1"], "is not a key path", _no_setup),
    ("--set section to a value", [*CFG, "--set", "train=5", "--steps", "2"], "train is an int value",
     _no_setup),
    ("--set section to a value alone", [*CFG, "--set", "train=5"], "train must be a mapping", _no_setup),
    ("--set below a value", [*CFG, "--set", "train.lr.x=5"], "train.lr is a float value", _no_setup),
    ("--set unknown section", [*CFG, "--set", "optim.lr=1"], "unknown config key 'optim'", _no_setup),
    ("--set wrong type", [*CFG, "--set", "train.lr=fast"], "train.lr must be a number", _no_setup),
    ("--set bool as int", [*CFG, "--set", "train.steps=true"], "train.steps must be an integer",
     _no_setup),
    ("lr NaN", [*CFG, "--set", "train.lr=.nan"], "train.lr must be a positive number", _no_setup),
    ("lr zero", [*CFG, "--set", "train.lr=0"], "train.lr must be a positive number", _no_setup),
    ("--steps 0", [*CFG, "--steps", "0"], "train.steps must be positive", _no_setup),
    ("--steps negative", [*CFG, "--steps", "-5"], "train.steps must be positive", _no_setup),
    ("beta1 >= 1", [*CFG, "--set", "train.beta1=1.5"], "train.beta1 must be in [0, 1)", _no_setup),
    ("beta2 < 0", [*CFG, "--set", "train.beta2=-0.1"], "train.beta2 must be in [0, 1)", _no_setup),
    ("eps negative", [*CFG, "--set", "train.eps=-1"], "train.eps must be a number >= 0", _no_setup),
    ("weight decay inf", [*CFG, "--set", "train.weight_decay=.inf"], "train.weight_decay must be",
     _no_setup),
    ("d_mlp zero", [*CFG, "--set", "model.d_mlp=0"], "model.d_mlp must be positive", _no_setup),
    ("d_model not a multiple of d_head", [*CFG, "--set", "model.d_model=30"],
     "must be a multiple of model.d_head", _no_setup),
    ("density above 1", [*CFG, "--set", "sparsity.matrix_density=2"],
     "sparsity.matrix_density must be in (0, 1]", _no_setup),
    ("density below the neuron floor", [*CFG, "--set", "sparsity.matrix_density=0.001"],
     "neuron floor", _no_setup),
    ("embed density keeps no weight", [*CFG, "--set", "sparsity.embed_density=0.00001"],
     "sparsity.embed_density=1e-05 keeps 0 of 16384 weights in transformer.wte.weight (an embedding)",
     _no_setup),
    ("d_mlp 1 leaves a sparse bias no weight", [*CFG, "--set", "model.d_mlp=1"],
     "mlp.c_fc.bias (a bias, sparse because sparsity.sparsify_biases is on)", _no_setup),
    ("anneal end before start", [*CFG, "--set", "sparsity.anneal_start=0.9",
                                 "--set", "sparsity.anneal_end=0.1"], "anneal_start <=", _no_setup),
    ("val_fraction 1", [*CFG, "--set", "data.val_fraction=1"], "data.val_fraction must be in (0, 1)",
     _no_setup),
    ("vocab too small", [*CFG, "--set", "data.vocab_size=100"], "data.vocab_size must be >= 260",
     _no_setup),
    ("batch not divisible by accumulation", [*CFG, "--set", "train.grad_accum=3"],
     "must be divisible by train.grad_accum", _no_setup),
    ("unknown activation location", [*CFG, "--set", "model.afrac_locations=[mlp_inn]"],
     "did you mean 'mlp_in'", _no_setup),
    ("unknown data source", [*CFG, "--set", "data.source=web"], "data.source must be", _no_setup),
    ("files source without a path", [*CFG, "--set", "data.source=files"], "needs data.path",
     _no_setup),
    # --- the data
    ("corpus path missing", [*CFG, "--set", "data.source=files", "--set", "data.path=TMP/none"],
     "neither a directory nor a glob", _no_setup),
    ("corpus directory empty", [*CFG, "--set", "data.source=files", "--set", "data.path=TMP/empty"],
     "empty corpus", _empty_corpus_dir),
    ("corpus smaller than one document", [*CFG, "--set", "data.max_bytes=10"], "empty corpus",
     _no_setup),
    # --- the output directory
    ("--out is a file", ["--config", "TINY", "--out", "TMP/afile", *FAST], "is a file, not a directory",
     _out_parent_file),
    ("--out below a file", ["--config", "TINY", "--out", "TMP/afile/run", *FAST],
     "is a file, not a directory", _out_parent_file),
    ("--out holds a finished run", ["--config", "TINY", "--out", "RUN", "--steps", "4", *FAST],
     "already holds a run (its latest checkpoint is step_000004); pass --resume", _no_setup),
    ("--out holds a run, other seed", ["--config", "TINY", "--out", "RUN", "--steps", "4",
                                       "--set", "train.seed=5", *FAST], "already holds a run", _no_setup),
    ("--out in use by another run", ["--config", "TINY", "--out", "RUN", "--steps", "6", "--resume",
                                     *FAST], "in use by another training run (pid", "lock"),
    # --- resuming
    ("--resume where no run is", ["--out", "NEW", "--resume"], "holds no run to resume", _no_setup),
    ("--resume with no checkpoint", ["--config", "TINY", "--out", "TMP", "--resume", *FAST],
     "no checkpoint under", _no_setup),
    ("--resume a finished run", ["--out", "RUN", "--resume"], "already finished", _no_setup),
    ("--resume with fewer steps", ["--out", "RUN", "--resume", "--steps", "3"], "has gone past that",
     _no_setup),
    ("--resume with another config", ["--config", "TINY", "--out", "RUN", "--resume", "--steps", "6",
                                      "--set", "model.d_model=64", *FAST], "model.d_model: 32 -> 64",
     _no_setup),
    ("--resume a malicious train state", ["--out", "RUN", "--resume", "--steps", "6"],
     "train_state.pt was refused", _malicious_train_state),
    ("--resume a re-signed config that is a list", ["--out", "RUN", "--resume", "--steps", "6"],
     "holds a config.yaml that is not a valid config", _resign_config(b"- 1\n- 2\n")),
    ("--resume a re-signed config that is not YAML", ["--out", "RUN", "--resume", "--steps", "6"],
     "not valid YAML", _resign_config(b"model: [1\n")),
    ("--resume a re-signed config with a bad value", ["--out", "RUN", "--resume", "--steps", "6"],
     "model.n_layer must be positive", _resign_config(b"model:\n  n_layer: 0\n")),
    ("--resume a re-signed meta.json", ["--out", "RUN", "--resume", "--steps", "6"],
     "no readable meta.json", _resign_meta),
    ("--resume a corrupt checkpoint", ["--out", "RUN", "--resume", "--steps", "6"],
     "model.safetensors is corrupt", _flip_byte),
    ("--resume with LATEST naming a missing checkpoint", ["--out", "RUN", "--resume", "--steps", "6"],
     "does not exist", _latest_to_missing),
    ("--resume with LATEST not a step name", ["--out", "RUN", "--resume", "--steps", "6"],
     "should name a step_NNNNNN directory", _latest_garbage),
    ("--resume with a damaged metrics line", ["--out", "RUN", "--resume", "--steps", "6"],
     "metrics.jsonl line 2 is not a JSON record", _metrics_middle_garbage),
]


def _fill(args: list[str], tmp: Path, run: Path) -> list[str]:
    """Replace the placeholders: whole arguments, leading path parts, and values after '='."""
    subs = {"RUN": str(run), "NEW": str(tmp / "new-run"), "TMP": str(tmp), "TINY": str(TINY)}
    out = []
    for a in args:
        for key, value in subs.items():
            if a == key or a.startswith(key + "/"):
                a = value + a[len(key):]
            a = a.replace("=" + key, "=" + value)
        out.append(a)
    return out


# Every case runs in-process (train.py's main, from the repository root); these also run through the
# real command line, one per kind of failure: argparse, the config, the run directory, the lock
# another process holds, a checkpoint refused while resuming.
END_TO_END = {"unknown option", "config key typo", "--out holds a finished run", "--out in use by another run",
              "--resume a malicious train state"}


def _check_case(name, args, expected, setup, run_copy: Path, tmp_path: Path, run) -> None:
    work = tmp_path / "work"
    work.mkdir()
    lock_fd = None
    if setup == "lock":
        # Another process holding the run, as a live train.py would (flock also excludes a second
        # open of the file in this process).
        lock_fd = os.open(run_copy / ".lock", os.O_RDWR)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        expected = f"{expected} {os.getpid()})"
    else:
        setup(work, run_copy)
    before_run, before_work = snapshot(run_copy), snapshot(work)
    try:
        proc = run(_fill(args, work, run_copy))
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert snapshot(run_copy) == before_run, "the run directory changed"
    assert snapshot(work) == before_work, "files appeared or changed"
    assert not (work / "pwned").exists()


@pytest.mark.parametrize("name, args, expected, setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line(name, args, expected, setup, run_copy: Path, tmp_path: Path, capsys):
    _check_case(name, args, expected, setup, run_copy, tmp_path,
                lambda argv: run_main(script_main("train.py"), argv, capsys))


@pytest.mark.parametrize("name, args, expected, setup", [c for c in CASES if c[0] in END_TO_END],
                         ids=[c[0] for c in CASES if c[0] in END_TO_END])
def test_bad_input_through_the_real_command_line(name, args, expected, setup, run_copy: Path, tmp_path: Path):
    _check_case(name, args, expected, setup, run_copy, tmp_path, run_cli)


def test_every_end_to_end_case_exists():
    assert END_TO_END <= {c[0] for c in CASES}


CLEAN_CASES = len(CASES)


# ----- faults while training -----------------------------------------------------------------

def test_a_file_size_limit_while_training_is_one_line_naming_the_file(tmp_path: Path):
    """A full disk, simulated with a file size limit (what a process sees: writes fail with an
    OSError), mid-run: one line saying where and what, and the last checkpoint stays loadable."""
    out = tmp_path / "run"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # checkpoints are ~50 kB

    proc = subprocess.run(train_cmd("--config", str(TINY), "--out", str(out), "--steps", "4", *FAST),
                          cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: cannot read or write a file (") and "File too large" in lines[0]
    assert not (out / "checkpoints" / "LATEST").exists()
    assert not [p for p in (out / "checkpoints").iterdir()], "a partial checkpoint was left behind"


def test_a_read_only_output_directory_is_one_line(tmp_path: Path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        proc = run_cli(["--config", str(TINY), "--out", str(out / "run"), "--steps", "2", *FAST])
    finally:
        out.chmod(0o700)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Permission denied" in proc.stderr


def test_docs_list_every_case():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    missing = [name for name, *_ in CASES if f"| {name.replace('|', chr(92) + '|')} |" not in doc]
    assert not missing, f"docs/reliability.md lacks rows for {missing}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path: Path):
    proc = run_cli(["--config", str(TINY), "--out", str(tmp_path / "run"), "--device", "cuda"])
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: device 'cuda' requested but torch sees no CUDA GPU (use --device cpu)"], proc.stderr
    assert not (tmp_path / "run").exists()
