"""Wall time of one circuit: mask training + bisection + calibration (Pruner.search), on a checkpoint.

    .venv/bin/python bench/prune.py --checkpoint runs/cpu-small              # the README's main-job model
    .venv/bin/python bench/prune.py --checkpoint runs/cpu-small --steps 100  # a quicker look

Needs a trained checkpoint (train one with `train.py --config configs/cpu-small.yaml`, ~9.5 min
on 2 cores); node means are computed once and cached beside it, outside the timed part. Timed: the
whole default search (`--search-runs` mask runs, each followed by its bisection and calibration),
split into mask training and discretisation (bisection + calibration) per run. Validation and the
nonsense-task control that prune_circuit.py adds are not part of "one circuit" and are not timed.
Writes bench/results/prune_<device>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment, print_table, sync, write_json  # noqa: E402
from sparse_gpt.loading import load_any, resolve_device  # noqa: E402
from sparse_gpt.prune.extract import CircuitPipeline  # noqa: E402
from sparse_gpt.prune.nodes import circuit_edges  # noqa: E402
from sparse_gpt.prune.pruner import PruneConfig  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run or checkpoint directory (e.g. runs/cpu-small)")
    p.add_argument("--task", default="single_double_quote", help="task to prune for")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--steps", type=int, help="mask steps per run (default: PruneConfig's)")
    p.add_argument("--search-runs", type=int, help="mask runs (default: PruneConfig's)")
    p.add_argument("--out", help="JSON path (default bench/results/prune_<device>.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    overrides = {k: v for k, v in (("steps", args.steps), ("search_runs", args.search_runs)) if v is not None}
    cfg = PruneConfig(**overrides)
    loaded = load_any(args.checkpoint, device=device)
    t0 = time.perf_counter()
    pipe = CircuitPipeline(loaded, cfg, device, log=lambda *a, **k: None)
    setup_s = time.perf_counter() - t0  # node means (cached after the first time), validation text
    t0 = time.perf_counter()
    pruner = pipe.pruner(args.task)
    build_s = time.perf_counter() - t0
    sync(device)
    t0 = time.perf_counter()
    best, runs = pruner.search(progress=False)
    sync(device)
    search_s = time.perf_counter() - t0
    edges = circuit_edges(loaded.model, pipe.layout, best.keep)
    rows = []
    for i, r in enumerate(runs):
        rows.append({"run": i + 1, "k_coef": r.settings["k_coef"], "lr": r.settings["lr"], "nodes": r.n_nodes,
                     "bisection_evals": len(r.curve), "mask_s": r.seconds, "loss": r.loss,
                     "calibrated": r.calibration["loss"]})
    mask_s = sum(r.seconds for r in runs)
    env = environment(device)
    print(f"{env['device_name']}, torch {torch.__version__}, {args.checkpoint}, task {args.task}, "
          f"{cfg.search_runs} runs x {cfg.steps} steps")
    print_table(rows, ["run", "k_coef", "lr", "nodes", "bisection_evals", "mask_s", "loss", "calibrated"])
    print(f"one circuit: {search_s:.1f} s (mask training {mask_s:.1f} s, bisection + calibration "
          f"{search_s - mask_s:.1f} s); best {best.n_nodes} nodes, {len(edges)} edges; "
          f"pruner setup {build_s:.1f} s, pipeline setup {setup_s:.1f} s (untimed)")
    write_json(f"prune_{'cuda' if device == 'cuda' else 'cpu'}", {
        "benchmark": "prune", **env, "checkpoint": str(args.checkpoint),
        "checkpoint_fingerprint": loaded.fingerprint, "task": args.task, "prune_config": vars(cfg),
        "n_params": loaded.model.num_params(), "model": vars(loaded.model.config),
        "circuit_s": search_s, "mask_training_s": mask_s, "discretise_s": search_s - mask_s,
        "pruner_setup_s": build_s, "best": {"nodes": best.n_nodes, "edges": len(edges), "loss": best.loss,
                                            "calibrated_loss": best.calibration["loss"]},
        "runs": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
