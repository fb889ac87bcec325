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
from sparse_gpt.config import resolve_device  # noqa: E402
from sparse_gpt.loading import load_any  # noqa: E402
from sparse_gpt.pipeline import CircuitPipeline  # noqa: E402
from sparse_gpt.nodes import circuit_edges  # noqa: E402
from sparse_gpt.prune.pruner import PruneConfig  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run or checkpoint directory (e.g. runs/cpu-small)")
    p.add_argument("--task", default="single_double_quote", help="task to prune for")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--steps", type=int, help="mask steps per run (default: PruneConfig's)")
    p.add_argument("--search-runs", type=int, help="mask runs (default: PruneConfig's)")
    p.add_argument("--compare-paths", type=int, default=0, metavar="N",
                   help="also time N interleaved repeats of one mask step and one held-out evaluation, "
                        "the previous way (full logits, one unsorted chunk, sub+mul mix) vs the current")
    p.add_argument("--out", help="JSON path (default bench/results/prune_<device>.json)")
    return p.parse_args(argv)


def compare_paths(pruner, best, device: str, repeats: int) -> dict:
    """Median seconds of one mask-training step and one held-out evaluation, old vs new code paths."""
    from bench.common import interleaved, median
    from sparse_gpt.prune import masks
    from sparse_gpt.prune.objective import answer_logits as scored_logits
    from sparse_gpt.tasks.base import oriented_logit_diff, two_way_loss

    model, layout, means = pruner.model, pruner.layout, pruner.ablate_to
    gen = torch.Generator().manual_seed(0)
    batch = pruner._sample(gen)
    tau = torch.nn.Parameter(best.scores.clone().to(device))
    new_mix = masks._mix

    def old_mix(x, gate, mean):
        return mean + (x - mean) * gate

    def mask_step(old: bool):
        def fn():
            masks._mix = old_mix if old else new_mix
            try:
                gates = (tau > 0).float() + tau - tau.detach()  # straight-through, as a stand-in
                with masks.gated(model, layout, gates, means):
                    logits = scored_logits(model, batch, frozen_norms=old)  # old: full logits + gather
                z, y = oriented_logit_diff(logits, batch)
                two_way_loss(z, y).backward()
                tau.grad = None
            finally:
                masks._mix = new_mix
        return fn

    def evaluation(old: bool):
        def fn():
            masks._mix = old_mix if old else new_mix
            chunk, freeze = pruner.eval.chunk, pruner.eval.freeze_norms
            try:
                if old:  # one chunk of all held-out prompts, full logits
                    pruner.eval.chunk = len(pruner.heldout)
                    with torch.no_grad(), masks.gated(model, layout, best.keep.float().to(device), means):
                        T = int(pruner.heldout.lengths.max())
                        logits = model(pruner.heldout.tokens[:, :T])
                        logits[torch.arange(len(pruner.heldout)), pruner.heldout.positions]
                else:
                    pruner.eval.logits(pruner.heldout, best.keep.float().to(device))
            finally:
                masks._mix = new_mix
                pruner.eval.chunk, pruner.eval.freeze_norms = chunk, freeze
        return fn

    fns = {"mask_step_old": mask_step(True), "mask_step_new": mask_step(False),
           "eval_old": evaluation(True), "eval_new": evaluation(False)}
    times = interleaved(fns, device, repeats)
    med = {k: median(v) for k, v in times.items()}
    out = {"repeats": repeats, "median_s": med,
           "mask_step_speedup": med["mask_step_old"] / med["mask_step_new"],
           "eval_speedup": med["eval_old"] / med["eval_new"]}
    print(f"paths ({repeats} interleaved repeats): mask step {med['mask_step_old'] * 1e3:.0f} -> "
          f"{med['mask_step_new'] * 1e3:.0f} ms ({out['mask_step_speedup']:.2f}x), held-out evaluation "
          f"{med['eval_old'] * 1e3:.0f} -> {med['eval_new'] * 1e3:.0f} ms ({out['eval_speedup']:.2f}x)")
    return out


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
    paths = compare_paths(pruner, best, device, args.compare_paths) if args.compare_paths else None
    rows = []
    for i, r in enumerate(runs):
        rows.append({"run": i + 1, "k_coef": r.settings.k_coef, "lr": r.settings.lr, "nodes": r.n_nodes,
                     "bisection_evals": len(r.curve), "mask_s": r.seconds, "loss": r.loss,
                     "calibrated": r.calibration.loss})
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
                                            "calibrated_loss": best.calibration.loss},
        "runs": rows, "paths": paths}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
