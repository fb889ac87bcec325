"""Training end to end: loss goes down, resume after SIGKILL is exact, DDP matches one process."""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from inprocess import run_main, script_main
from sparse_gpt import load_model
from sparse_gpt.checkpoint import latest_checkpoint, load_state_dict
from sparse_gpt.config import config_from_dict, parse_config_yaml
from sparse_gpt.data import prepare_data
from sparse_gpt.trainer import evaluate

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def run_train(capsys, *args, check=True):
    """train.py --config configs/tiny.yaml ARGS, its main called in-process (tests/inprocess.py)."""
    proc = run_main(script_main("train.py"), ["--config", str(TINY), "--no-progress", *map(str, args)], capsys)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_train_process(*args, check=True):
    """The same through a real `python train.py`: for runs compared bit for bit with other processes'."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(TINY), "--no-progress", *map(str, args)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(latest_checkpoint(run_dir))


def test_tiny_run_lowers_val_loss_and_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    run_train(capsys, "--out", out, "--steps", 40)
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert vals[-1] < summary["unigram_val_loss"] < records[0]["train_loss"]
    assert records[-1]["step"] == 40
    timed = [r for r in records if "tokens_per_s" in r]
    assert timed and all(r["tokens_per_s"] > 0 and r["mfu"] is None for r in timed)  # no bf16 peak on CPU
    for f in ("loss.png", "schedule.png", "config.yaml"):
        assert (out / f).stat().st_size > 0
    # the sparse tensors end at exactly their targets
    for row in summary["nonzeros"]:
        assert row["nonzero"] == row["target"], row
    model, tok = load_model(out)
    ids = tok.encode("def f(x):\n    return x").ids
    assert model(torch.tensor([ids])).shape == (1, len(ids), model.config.vocab_size)


def test_resume_after_kill_is_bit_exact(tmp_path):
    steps = 60
    common = ["--steps", steps, "--set", "train.ckpt_interval=10", "--set", "train.eval_interval=30"]
    run_train_process("--out", tmp_path / "straight", *common)

    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(TINY), "--no-progress", "--out", str(killed),
           *map(str, common)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        ck = latest_checkpoint(killed) if (killed / "checkpoints").exists() else None
        if ck is not None and int(ck.name.split("_")[1]) >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = int(latest_checkpoint(killed).name.split("_")[1])
    assert step_at_kill < steps, "the run finished before it could be killed"

    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(killed), "--resume", "--no-progress",
                           "--steps", str(steps)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    a, b = final_weights(tmp_path / "straight"), final_weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # metrics continue without duplicated steps
    steps_logged = [json.loads(l)["step"] for l in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))


def test_ddp_two_processes_match_one(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    common = ["--config", str(TINY), "--no-progress", "--steps", "6", "--device", "cpu",
              "--set", "train.ckpt_interval=6", "--set", "train.eval_interval=6"]
    one = subprocess.run([sys.executable, "train.py", "--out", str(tmp_path / "one"), *common],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "train.py",
                          "--out", str(tmp_path / "two"), *common],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for k in a:
        # same global batch; only the order of the gradient reduction differs
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def _all_finite(ckpt_dir: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_state_dict(ckpt_dir).values() if t.is_floating_point())


def test_divergence_stops_and_names_a_checkpoint_that_is_really_good(tmp_path, capsys):
    # Diverges within a few steps; with a checkpoint every step, the last ones saved are close to it.
    proc = run_train(capsys, "--out", tmp_path / "a", "--steps", 30, "--set", "train.lr=1e3", "--set", "train.ckpt_interval=1",
                     "--set", "train.warmup_frac=0", check=False)
    assert proc.returncode == 2 and "not finite" in proc.stderr, proc.stderr
    named = Path(re.search(r"last good checkpoint is (\S+)", proc.stderr).group(1))
    assert named == latest_checkpoint(tmp_path / "a") and _all_finite(named)
    assert all(_all_finite(d) for d in (tmp_path / "a" / "checkpoints").glob("step_*"))


def test_nan_loss_at_the_first_step_saves_nothing(tmp_path, capsys):
    proc = run_train(capsys, "--out", tmp_path, "--steps", 30, "--set", "train.lr=1e30", "--set", "train.ckpt_interval=1",
                     check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "training loss is" in proc.stderr or "not finite" in proc.stderr
    assert "no checkpoint was written yet" in proc.stderr
    assert latest_checkpoint(tmp_path) is None


def test_bad_config_errors(tmp_path, capsys):
    proc = run_train(capsys, "--out", tmp_path, "--set", "train.learning_rat=1", check=False)
    assert proc.returncode == 2 and "train.learning_rat" in proc.stderr
    proc = run_train(capsys, "--out", tmp_path, "--set", "sparsity.matrix_density=0.001", check=False)
    assert proc.returncode == 2 and "neuron floor" in proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layers: 2\n")
    proc = subprocess.run([sys.executable, "train.py", "--config", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "did you mean 'n_layer'" in proc.stderr


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    run_train(capsys, "--out", tmp_path, "--steps", 5, "--set", "train.ckpt_interval=5")
    proc = run_train(capsys, "--out", tmp_path, "--resume", "--steps", 10, "--set", "model.d_model=64", check=False)
    assert proc.returncode == 2 and "model.d_model" in proc.stderr


def test_resume_refuses_a_changed_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    src = Path(__file__).resolve().parents[1] / "sparse_gpt"
    for f in sorted(src.glob("*.py")):
        (corpus / f.name).write_text(f.read_text())
    common = ["--set", "data.source=files", "--set", f"data.path={corpus}", "--set", "data.max_bytes=null",
              "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.val_fraction=0.3",
              "--set", "train.ckpt_interval=4"]
    run_train(capsys, "--out", tmp_path / "run", "--steps", 4, *common)
    (corpus / "model.py").write_text((corpus / "model.py").read_text() + "\n# edited\n")
    proc = run_train(capsys, "--out", tmp_path / "run", "--resume", "--steps", 8, *common, check=False)
    assert proc.returncode == 2 and "corpus/tokenizer differ" in proc.stderr


def test_dense_baseline_run_completes_with_plots(tmp_path, capsys):
    """Density 1 is the same code with no top-k: the run, its summary and its plots all work."""
    run_train(capsys, "--out", tmp_path, "--steps", 6, "--set", "sparsity.matrix_density=1.0",
              "--set", "sparsity.embed_density=1.0", "--set", "train.ckpt_interval=6",
              "--set", "train.eval_interval=6")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["nonzeros"] == [] and (tmp_path / "schedule.png").stat().st_size > 0
    weights = final_weights(tmp_path)
    assert int(weights["transformer.h.0.mlp.c_fc.weight"].count_nonzero()) == weights[
        "transformer.h.0.mlp.c_fc.weight"].numel()


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_native_bf16_is_warned_about(tmp_path, capsys, monkeypatch, native):
    """Emulated bf16 is slower than float32: a user who asks for it on such a CPU is told, once."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    proc = run_train(capsys, "--out", tmp_path, "--steps", 2, "--set", "train.dtype=bf16",
                     "--set", "train.eval_interval=2", "--set", "train.ckpt_interval=2")
    assert proc.stderr.count("without native bf16") == (0 if native else 1)


def test_train_leaves_the_callers_config_alone(tmp_path):
    import copy

    from sparse_gpt.config import load_config
    from sparse_gpt.trainer import train

    cfg = load_config(TINY, ["train.steps=2", "train.eval_interval=2", "train.ckpt_interval=2",
                             f"data.cache_dir={ROOT / '.cache' / 'sparse_gpt'}"])
    before = copy.deepcopy(cfg)
    train(cfg, tmp_path / "run", progress=False)
    assert cfg == before
    # The run's vocabulary is the tokenizer's: it goes to the run's config.yaml, not into `cfg`.
    import yaml
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["model"]["vocab_size"] == 512 != cfg.model.vocab_size


def test_importing_plots_leaves_the_matplotlib_backend_alone():
    code = ("import matplotlib; matplotlib.use('pdf'); import sparse_gpt.plots, sparse_gpt.trainer; "
            "print(matplotlib.get_backend())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "pdf", proc.stderr


FAST = ["--set", "train.eval_interval=2", "--set", "train.log_interval=2"]


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_training_into_an_existing_run_is_refused_until_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    run_train(capsys, "--out", out, "--steps", 4, "--set", "train.ckpt_interval=2", *FAST)
    first = final_weights(out)
    refused = run_train(capsys, "--out", out, "--steps", 4, "--set", "train.seed=5", check=False)
    assert refused.returncode == 2 and "already holds a run" in refused.stderr
    assert all(torch.equal(first[k], v) for k, v in final_weights(out).items())
    (out / "notes.txt").write_text("mine")  # not the run's: --overwrite leaves it alone
    done = run_train(capsys, "--out", out, "--steps", 4, "--set", "train.seed=5", "--set", "train.ckpt_interval=2",
                     "--overwrite", *FAST)
    assert "overwriting the run" in done.stdout
    assert not all(torch.equal(first[k], v) for k, v in final_weights(out).items())
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["LATEST", "step_000002", "step_000004"]
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert (out / "notes.txt").read_text() == "mine"


def test_a_second_run_into_the_same_directory_is_refused_while_the_first_runs(tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(TINY), "--no-progress", "--out", str(out),
           "--steps", "100000", "--set", "train.ckpt_interval=1000"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: (out / "metrics.jsonl").exists(), first), first.stderr
        second = run_train(capsys, "--out", out, "--steps", 4, check=False)
        assert second.returncode == 2
        assert second.stderr.strip() == (f"error: {out} is in use by another training run (pid {first.pid}); "
                                         "wait for it to finish or give another --out")
        resumed = run_train(capsys, "--out", out, "--resume", "--steps", 100001, check=False)
        assert resumed.returncode == 2 and f"pid {first.pid}" in resumed.stderr
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()
        first.wait()


def _interrupt(out, sig, steps):
    """Start a run, send `sig` once it is a few steps in; return the line it ended with."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(TINY), "--no-progress", "--out", str(out),
           "--steps", str(steps), "--set", "train.ckpt_interval=1000", *FAST]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    assert _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"stopped by {sig.name} after step ") and "--resume" in line, stderr
    step = int(re.search(r"after step (\d+)", line).group(1))
    assert 3 <= step < steps and latest_checkpoint(out).name == f"step_{step:06d}"
    assert f"python train.py --out {out} --resume" in line
    return line


@pytest.mark.slow
def test_sigint_and_sigterm_stop_at_a_step_with_a_checkpoint_and_resume_exactly(tmp_path):
    steps = 40
    _interrupt(tmp_path / "int", signal.SIGINT, steps)
    line = _interrupt(tmp_path / "term", signal.SIGTERM, steps)
    python, *rest = line.split("continue with: ")[1].split()
    resumed = subprocess.run([sys.executable, *rest], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    straight = tmp_path / "straight"
    run_train_process("--out", straight, "--steps", steps, "--set", "train.ckpt_interval=1000", *FAST)
    a, b = final_weights(straight), final_weights(tmp_path / "term")
    assert all(torch.equal(a[k], b[k]) for k in a)
    logged = [json.loads(l)["step"] for l in (tmp_path / "term" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1))


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    out = tmp_path / "run"
    run_train(capsys, "--out", out, "--steps", 4, "--set", "train.ckpt_interval=2", *FAST)
    (out / "checkpoints" / "LATEST").write_text("step_000002\n")  # as if killed after step 3
    lines = (out / "metrics.jsonl").read_text().splitlines()[:3]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[2][:17])  # power cut mid-line
    proc = run_train(capsys, "--out", out, "--resume", "--steps", 6, "--set", "train.ckpt_interval=2", *FAST)
    assert "dropped its last line, which was cut short" in proc.stderr
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))


def test_which_config_is_used_is_said(tmp_path):
    not_a_dir = tmp_path / "file"  # refused right after the config is read: nothing is trained
    not_a_dir.write_text("")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set here\n")
    proc = subprocess.run([sys.executable, "train.py", "--config", str(empty), "--out", str(not_a_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert f"config: {empty} is empty: every setting is the built-in default" in proc.stdout
    assert proc.returncode == 2 and "is a file" in proc.stderr
    proc = subprocess.run([sys.executable, "train.py", "--out", str(not_a_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert "config: the built-in defaults (no config file given)" in proc.stdout and proc.returncode == 2
    proc = subprocess.run([sys.executable, "train.py", "--config", str(TINY), "--out", str(not_a_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith(f"config: {TINY}\n") and proc.returncode == 2


def test_runs_that_differ_only_in_seed_are_validated_on_the_same_batches(tmp_path, capsys):
    """Seed studies compare validation losses across runs, so the batches must not follow train.seed."""
    out = tmp_path / "run"
    run_train(capsys, "--out", out, "--steps", 20, "--set", "train.seed=3")
    cfg = config_from_dict(parse_config_yaml((out / "config.yaml").read_text(), "config.yaml"))
    model, _ = load_model(out)
    data = prepare_data(cfg.data, log=lambda *a, **k: None)
    losses = [evaluate(model, data, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed)),
                       "cpu", nullcontext()) for seed in (0, 1, 3)]
    assert losses[0] == losses[1] == losses[2]
    recorded = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][-1]["val_loss"]
    assert losses[2] == pytest.approx(recorded, abs=1e-6)  # what the run logged is that same number
