#!/usr/bin/env python3
"""Sweep variants of configs/cpu-small.yaml side by side, for choosing the README model.

Each variant is configs/cpu-small.yaml with a few `--set` overrides whose 2-core CPU cost stays
within the main job's training budget (the `cpu_cost` column: measured cost relative to today's
cpu-small, from short interleaved CPU runs). On a GPU machine all variants train at once, one
process each (fp32, one CPU thread each, the GPU shared), so a sweep that would take hours on 2
cores takes minutes. For every final checkpoint it then measures:

  - validation loss (the trainer's summary.json);
  - the full model's quote-task loss and two-way accuracy: on the pruner's held-out pairs (what the
    pruner compares with its 0.15 target), on the validation's templated pairs (the "full loss" of
    prune_circuit.py's table) and on the held-out templates, plus natural examples mined from the
    validation split of the corpus;
  - if time allows, the pruned circuit's size (prune_circuit.py, one search run).

A wall budget is enforced: at `--budget` seconds every process still running is killed and the
report says how far it got (its last logged step and validation loss). One JSON and a printed table
go to --results (default $RESULTS_DIR, else bench/results).

    RESULTS_DIR=/tmp/out bash bench/sweep_cpu_small.sh               # GPU machine, every variant
    DEVICE=cpu STEPS=5 ONLY=base,lr03 bash bench/sweep_cpu_small.sh   # smoke test of the script

The GPU's kernels and Python's standard library (the corpus) differ from a 2-core CPU machine's,
so absolute numbers differ from a CPU run's; the sweep ranks configs, a CPU run confirms the winner.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The library is imported from the checkout (a GPU machine gets the tree, not an installed package).
sys.path.insert(0, str(ROOT))
TASK = "single_double_quote"


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...] = ()
    cpu_cost: float = 1.0      # 2-core CPU training time relative to today's cpu-small (measured)
    why: str = ""


# cpu_cost = (CPU seconds per token relative to the control) x (tokens relative to the control).
# The per-token figures were measured on the 2-core CPU machine (busy, one thread, CPU time), every
# shape's training step (forward, backward, Adam, weight top-k) timed interleaved with the
# control's, two runs of 8 and 10 steps each (mean of the two medians): L2 0.60, L3 0.80, d96 0.68,
# L3 d112 0.66, L2 d160 0.78, L6 d96 0.94, batch 16 0.96, matrices 1/8 0.99, dense 0.97, d192 1.83,
# d256 3.06. The budget is 8 minutes against the control's ~7.2: cost <= ~1.1.
VARIANTS: tuple[Variant, ...] = (
    Variant("base", (), 1.00, "today's cpu-small (control)"),
    Variant("base_s1", ("train.seed=1",), 1.00, "the control with another seed: the noise floor"),
    Variant("base970", ("train.steps=970",), 1.08, "the control's shape at the budget's cost"),
    Variant("lr03", ("train.lr=0.03",), 1.00, "higher peak LR"),
    Variant("lr01", ("train.lr=0.01",), 1.00, "lower peak LR"),
    Variant("anneal03", ("sparsity.anneal_end=0.3",), 1.00, "final density reached at 30% instead of 50%"),
    Variant("dens8", ("sparsity.matrix_density=0.125",), 1.00, "matrices keep 1/8"),
    Variant("emb50", ("sparsity.embed_density=0.5",), 1.00, "embeddings, unembedding, biases keep 1/2"),
    Variant("b16x1900", ("train.batch_size=16", "train.steps=1900"), 1.01, "half the batch, 2x the updates"),
    Variant("L3x1200", ("model.n_layer=3", "train.steps=1200"), 1.07, "3 layers, more tokens"),
    Variant("L2x1600", ("model.n_layer=2", "train.steps=1600"), 1.07, "2 layers, more tokens"),
    Variant("d96x1400", ("model.d_model=96", "train.steps=1400"), 1.06, "narrower, more tokens"),
    Variant("L3d112x1450", ("model.n_layer=3", "model.d_model=112", "train.steps=1450"), 1.07,
            "3 layers, narrower, more tokens"),
    Variant("L2d160x1250", ("model.n_layer=2", "model.d_model=160", "train.steps=1250"), 1.08,
            "2 layers, wider, more tokens"),
    Variant("L6d96x1000", ("model.n_layer=6", "model.d_model=96", "train.steps=1000"), 1.04,
            "deeper and narrower"),
    Variant("tests_in", ('data.exclude=["idlelib/*", "lib2to3/*", "pydoc_data/*"]',), 1.00,
            "the corpus keeps the stdlib's test suite (if the interpreter ships it): more text, same steps"),
    Variant("L2b16x3200", ("model.n_layer=2", "train.batch_size=16", "train.steps=3200"), 1.03,
            "2 layers, half the batch, 2x the updates"),
    Variant("L2lr03x1600", ("model.n_layer=2", "train.steps=1600", "train.lr=0.03"), 1.07, "2 layers, higher LR"),
    Variant("L1x2400", ("model.n_layer=1", "train.steps=2400"), 1.0, "1 layer, more tokens"),
    Variant("L2e50x1600", ("model.n_layer=2", "train.steps=1600", "sparsity.embed_density=0.5"), 1.07,
            "2 layers, embeddings keep 1/2"),
    Variant("x2", ("train.steps=1800",), 2.00, "twice the control's tokens: a trend point, over the budget"),
)


@dataclass
class Job:
    variant: Variant
    run_dir: Path
    stage: str = "pending"        # pending, train, eval, prune, done, failed, killed
    proc: subprocess.Popen | None = None
    started: float = 0.0
    times: dict = field(default_factory=dict)
    error: str | None = None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- one variant's measurements (run in a child process: python sweep_cpu_small.py --eval-one) ---

def eval_one(run_dir: Path, device: str, n_pairs: int = 256) -> dict:
    """The full model's quote-task scores and the run's validation loss, as one dict."""
    import torch

    from sparse_gpt.data import validation_texts
    from sparse_gpt.loading import load_any
    from sparse_gpt.prune.objective import Score  # noqa: F401  (the scoring the pruner uses)
    from sparse_gpt.prune.pruner import PruneConfig
    from sparse_gpt.tasks import encode_examples, encode_pairs, get_task, scored_logits, task_accuracy, task_loss

    torch.manual_seed(0)
    loaded = load_any(run_dir, device)
    model, tok, block = loaded.model, loaded.tokenizer, loaded.model.config.block_size
    task = get_task(TASK)
    prune_cfg = PruneConfig()
    # (name, pairs): the pruner's held-out pairs (its target check), then validation's batches.
    sets = {
        "pruner_heldout": task.pairs(prune_cfg.eval_pairs, seed=prune_cfg.seed + 1, split="prune"),
        "templated": task.pairs(n_pairs, seed=10_007, split="prune"),
        "heldout_templates": task.pairs(n_pairs, seed=10_007, split="heldout"),
    }
    out: dict = {}
    with torch.no_grad():
        for name, pairs in sets.items():
            batch = encode_pairs(task, pairs, tok, block).to(device)
            logits = scored_logits(model, batch)
            out[name] = {"loss": float(task_loss(logits, batch)), "accuracy": float(task_accuracy(logits, batch)),
                         "n": len(batch)}
        examples = task.natural_examples(validation_texts(loaded.data, max_bytes=3_000_000), n=2 * n_pairs,
                                         seed=10_007, tokenizer=tok)
        if examples:
            batch = encode_examples(task, examples, tok, block).to(device)
            logits = scored_logits(model, batch)
            out["natural"] = {"loss": float(task_loss(logits, batch)),
                              "accuracy": float(task_accuracy(logits, batch)), "n": len(batch)}
    out["checkpoint"] = str(loaded.path)
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        out["val_loss"] = summary.get("final_val_loss")
        out["unigram_val_loss"] = summary.get("unigram_val_loss")
        out["device_tokens_per_s"] = summary.get("tokens_per_s")
        out["steps"] = summary.get("steps")
    else:  # a run stopped at the budget: its latest checkpoint, not its final one
        out["partial"] = True
    return out


# --- the sweep -----------------------------------------------------------------------------------

def last_progress(run_dir: Path) -> dict:
    """Last logged step and last validation loss of a (possibly unfinished) run."""
    step, val, val_step = None, None, None
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            step = r.get("step", step)
            if r.get("val_loss") is not None:
                val, val_step = r["val_loss"], r.get("step")
    return {"step": step, "val_loss": val, "val_step": val_step}


def start(job: Job, stage: str, cmd: list[str], logname: str) -> None:
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)
    logf = open(job.run_dir.parent / f"{job.variant.name}.{logname}.log", "w")
    # A session of its own, so the whole process group can be killed at the deadline.
    job.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
    logf.close()
    job.stage, job.started = stage, time.time()


def kill(job: Job) -> None:
    if job.proc is not None and job.proc.poll() is None:
        try:
            os.killpg(job.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        job.proc.wait()


def tail(path: Path, n: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def circuit_size(run_dir: Path) -> dict | None:
    path = run_dir / "circuits" / TASK / "circuit.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    m = d.get("metrics") or {}
    return {"nodes": len(d["nodes"]), "edges": len(d["edges"]), "passed": m.get("passed"), "checks": m.get("checks"),
            "circuit_loss_raw": (m.get("circuit_uncalibrated_templated") or {}).get("loss"),
            "circuit_loss_calibrated": (m.get("circuit_templated") or {}).get("loss"),
            "necessity_loss": (m.get("necessity") or {}).get("loss") if isinstance(m.get("necessity"), dict) else None}


def fixed_search_flags() -> list[str]:
    """prune_circuit.py flags for one plain mask run: a budgeted settings search, where the script
    has one, is switched off (it needs more time, and packages a bare GPU machine may lack)."""
    try:
        text = subprocess.run([sys.executable, "prune_circuit.py", "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return ["--budget", "0"] if "--budget" in text else []


def advance(job: Job, args, deadline: float) -> None:
    """Move a job whose process has ended to its next stage."""
    rc = job.proc.returncode
    elapsed = time.time() - job.started
    job.times[job.stage] = round(elapsed, 1)
    name = job.variant.name
    if job.stage == "train":
        if rc != 0:
            job.stage, job.error = "failed", f"train exit {rc}: {tail(job.run_dir.parent / f'{name}.train.log')}"
            log(f"{name}: {job.error}")
            return
        log(f"{name}: trained in {elapsed:.0f}s; evaluating")
        start(job, "eval", [sys.executable, "-u", str(Path(__file__).resolve()), "--eval-one", str(job.run_dir),
                            "--device", args.device], "eval")
    elif job.stage == "eval":
        if rc != 0:
            job.stage, job.error = "failed", f"eval exit {rc}: {tail(job.run_dir.parent / f'{name}.eval.log')}"
            log(f"{name}: {job.error}")
            return
        if args.prune and deadline - time.time() > args.min_prune_s:
            log(f"{name}: evaluated in {elapsed:.0f}s; pruning")
            start(job, "prune", [sys.executable, "-u", "prune_circuit.py", "--checkpoint", str(job.run_dir),
                                 "--task", TASK, "--device", args.device, "--no-html", "--no-control",
                                 "--search-runs", "1", "--no-progress", *args.prune_flags], "prune")
        else:
            job.stage = "done"
            log(f"{name}: evaluated in {elapsed:.0f}s (no time left to prune)" if args.prune
                else f"{name}: evaluated in {elapsed:.0f}s")
    elif job.stage == "prune":
        job.stage = "done"
        if rc != 0:
            job.error = f"prune exit {rc}: {tail(job.run_dir.parent / f'{name}.prune.log')}"
        log(f"{name}: pruned in {elapsed:.0f}s (exit {rc})")


def partial_eval(jobs: list[Job], args) -> None:
    """Score the latest checkpoint of each run stopped in training, within --partial-eval-s."""
    todo = [j for j in jobs if j.stage == "killed in train" and (j.run_dir / "checkpoints" / "LATEST").is_file()]
    if not todo or args.partial_eval_s <= 0:
        return
    log(f"scoring the latest checkpoints of {len(todo)} stopped runs (at most {args.partial_eval_s:.0f}s)")
    for job in todo:
        start(job, "eval", [sys.executable, "-u", str(Path(__file__).resolve()), "--eval-one", str(job.run_dir),
                            "--device", args.device], "eval")
    end = time.time() + args.partial_eval_s
    while time.time() < end and any(j.proc.poll() is None for j in todo):
        time.sleep(0.5)
    for job in todo:
        job.times["partial_eval"] = round(time.time() - job.started, 1)
        kill(job)
        job.stage = "killed in train (latest checkpoint scored)" if job.proc.returncode == 0 else "killed in train"


def corpus_tokens(train_log: Path) -> dict:
    """Train/validation token counts as the trainer's log states them."""
    try:
        text = train_log.read_text(errors="replace")
    except OSError:
        return {}
    m = re.search(r"train ([\d,]+) tokens, val ([\d,]+)", text)
    return {"train_tokens": int(m[1].replace(",", "")), "val_tokens": int(m[2].replace(",", ""))} if m else {}


def result_row(job: Job) -> dict:
    v = job.variant
    row = {"name": v.name, "overrides": list(v.overrides), "cpu_cost": v.cpu_cost, "why": v.why,
           "stage": job.stage, "times_s": job.times, "error": job.error,
           "progress": last_progress(job.run_dir),
           "corpus": corpus_tokens(job.run_dir.parent / f"{v.name}.train.log")}
    ev = job.run_dir / "sweep_eval.json"
    if ev.is_file():
        row["eval"] = json.loads(ev.read_text())
    row["circuit"] = circuit_size(job.run_dir)
    return row


def fmt(x, spec=".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(rows: list[dict]) -> str:
    head = ["variant", "cpu", "stage", "step", "val", "quote(pruner)", "acc", "quote(templ)", "quote(heldout-tpl)",
            "natural acc", "nodes", "edges", "circ raw", "passed"]
    lines = [head]
    for r in rows:
        e, c, p = r.get("eval") or {}, r.get("circuit") or {}, r["progress"]
        g = lambda k, f: (e.get(k) or {}).get(f)  # noqa: E731
        lines.append([r["name"], fmt(r["cpu_cost"], ".2f"), r["stage"], str(p["step"]),
                      fmt(e.get("val_loss", p["val_loss"])), fmt(g("pruner_heldout", "loss")),
                      fmt(g("pruner_heldout", "accuracy")), fmt(g("templated", "loss")),
                      fmt(g("heldout_templates", "loss")), fmt(g("natural", "accuracy")),
                      str(c.get("nodes", "-")), str(c.get("edges", "-")), fmt(c.get("circuit_loss_raw")),
                      str(c.get("passed", "-"))])
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    out = []
    for j, l in enumerate(lines):
        out.append("  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(l, widths))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def sweep(args) -> int:
    variants = [v for v in VARIANTS if not args.only or v.name in args.only]
    unknown = set(args.only or ()) - {v.name for v in VARIANTS}
    if unknown:
        print(f"error: unknown variant(s) {', '.join(sorted(unknown))}; known: "
              f"{', '.join(v.name for v in VARIANTS)}", file=sys.stderr)
        return 2
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    deadline = t0 + args.budget
    log(f"sweep: {len(variants)} variants on {args.device}, budget {args.budget:.0f}s, runs in {out_root}")

    args.prune_flags = fixed_search_flags() if args.prune else []
    jobs = [Job(v, out_root / v.name) for v in variants]
    for job in jobs:
        cmd = [sys.executable, "-u", "train.py", "--config", args.config, "--device", args.device,
               "--set", "train.dtype=fp32", "--no-progress", "--overwrite", "--out", str(job.run_dir)]
        for o in job.variant.overrides:
            cmd += ["--set", o]
        for o in args.extra_set:
            cmd += ["--set", o]
        if args.steps is not None:
            cmd += ["--steps", str(args.steps)]
        start(job, "train", cmd, "train")
    last_report = time.time()
    while True:
        active = [j for j in jobs if j.stage in ("train", "eval", "prune")]
        if not active:
            break
        for job in active:
            if job.proc.poll() is not None:
                advance(job, args, deadline)
        if time.time() >= deadline:
            for job in jobs:
                if job.stage in ("train", "eval", "prune"):
                    job.times[job.stage] = round(time.time() - job.started, 1)
                    log(f"{job.variant.name}: killed at the budget during {job.stage}")
                    kill(job)
                    # A run killed while pruning still has its training and evaluation.
                    job.stage = f"killed in {job.stage}"
            partial_eval(jobs, args)
            break
        if time.time() - last_report > args.report_every:
            last_report = time.time()
            steps = ", ".join(f"{j.variant.name}:{last_progress(j.run_dir)['step']}" for j in jobs
                              if j.stage == "train")
            log(f"t={time.time() - t0:.0f}s training steps: {steps or '-'}")
        time.sleep(0.5)

    rows = [result_row(j) for j in jobs]
    text = table(rows)
    print(text, flush=True)
    report = {"device": args.device, "budget_s": args.budget, "prune_flags": args.prune_flags, "wall_s": round(time.time() - t0, 1),
              "config": args.config, "steps_override": args.steps, "python": sys.version.split()[0],
              "variants": rows}
    try:
        import torch
        report["torch"] = torch.__version__
        if args.device == "cuda" and torch.cuda.is_available():
            report["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 -- the report is written regardless
        pass
    (results / "sweep_cpu_small.json").write_text(json.dumps(report, indent=1))
    (results / "sweep_cpu_small.txt").write_text(text + "\n")
    log(f"wrote {results / 'sweep_cpu_small.json'}")
    return 0 if any(r.get("eval") for r in rows) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cpu-small.yaml")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, help="override every variant's steps (smoke tests)")
    p.add_argument("--set", dest="extra_set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="an override for every variant, after its own (smoke tests)")
    p.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], help="comma-separated variant names")
    p.add_argument("--budget", type=float, default=190.0, help="wall seconds before stragglers are killed")
    p.add_argument("--no-prune", dest="prune", action="store_false", help="skip the circuit-size stage")
    p.add_argument("--min-prune-s", type=float, default=30.0, help="start a prune only with this much time left")
    p.add_argument("--out", default="runs/sweep", help="run directories")
    p.add_argument("--results", default=os.environ.get("RESULTS_DIR") or "bench/results")
    p.add_argument("--partial-eval-s", type=float, default=30.0,
                   help="after the budget: seconds to score the latest checkpoints of runs stopped in training")
    p.add_argument("--report-every", type=float, default=15.0)
    p.add_argument("--eval-one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.eval_one:
        run_dir = Path(args.eval_one)
        res = eval_one(run_dir, args.device)
        (run_dir / "sweep_eval.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res), flush=True)
        return 0
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
