"""Compare the circuits of a weight-sparse model and its dense twin, task by task.

    # 1. the dense checkpoint whose validation loss matches the sparse run's final one
    python tools/dense_vs_sparse.py match --sparse runs/cpu-small --dense runs/cpu-small-dense
    # 2. prune every task on both (see the README), then the table and the geometric-mean ratio
    python tools/dense_vs_sparse.py table --sparse runs/cpu-small/circuits --dense runs/cpu-small-dense/circuits

The ratio is taken over the tasks whose circuits passed validation on both models: a task the
dense model solves with a circuit that fails its checks says nothing about how small it could be.
Not part of the sparse_gpt package: it reads the files that train.py and prune_circuit.py write.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def final_val_loss(run: Path) -> float:
    return float(json.loads((run / "summary.json").read_text())["final_val_loss"])


def val_losses(run: Path) -> dict[int, float]:
    """step -> validation loss, from metrics.jsonl (read as the trainer reads it)."""
    from sparse_gpt.trainer_metrics import read_metrics
    return {int(r["step"]): float(r["val_loss"]) for r in read_metrics(run / "metrics.jsonl")
            if r.get("val_loss") is not None and "step" in r}


def matched_checkpoint(sparse: Path, dense: Path) -> tuple[Path, int, float, float]:
    """The kept dense checkpoint whose validation loss is closest to the sparse run's final one."""
    target = final_val_loss(sparse)
    losses = val_losses(dense)
    kept = {int(p.name.split("_")[1]): p for p in (dense / "checkpoints").glob("step_*") if p.is_dir()}
    candidates = [(abs(losses[s] - target), s) for s in kept if s in losses]
    if not candidates:
        raise ValueError(f"{dense}: no kept checkpoint has a validation loss in metrics.jsonl")
    _, step = min(candidates)
    return kept[step], step, losses[step], target


def circuit_rows(circuits: Path) -> dict[str, dict]:
    """task -> {nodes, edges, passed} from every <task>/circuit.json under `circuits`."""
    rows = {}
    for path in sorted(circuits.glob("*/circuit.json")):
        d = json.loads(path.read_text())
        m = d.get("metrics") or {}
        rows[path.parent.name] = {"nodes": len(d["nodes"]), "edges": len(d["edges"]), "passed": bool(m.get("passed"))}
    return rows


def table(sparse: Path, dense: Path) -> str:
    s_rows, d_rows = circuit_rows(sparse), circuit_rows(dense)
    lines = ["| task | sparse nodes | sparse edges | dense nodes | dense edges | edges dense / sparse |",
             "|---|---|---|---|---|---|"]
    ratios = []
    for task in sorted(set(s_rows) | set(d_rows)):
        s, d = s_rows.get(task), d_rows.get(task)
        cell = lambda r, k: "-" if r is None else f"{r[k]:,}" + ("" if r["passed"] else " (failed)")
        both = s is not None and d is not None and s["passed"] and d["passed"] and s["edges"] > 0
        ratio = d["edges"] / s["edges"] if both else None
        if ratio is not None:
            ratios.append(ratio)
        lines.append(f"| {task} | {cell(s, 'nodes')} | {cell(s, 'edges')} | {cell(d, 'nodes')} | "
                     f"{cell(d, 'edges')} | {'-' if ratio is None else f'{ratio:.1f}x'} |")
    if ratios:
        gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        lines.append(f"\nGeometric mean of edges dense / sparse over the {len(ratios)} tasks that passed on both: "
                     f"{gm:.2f}x")
    else:
        lines.append("\nNo task passed validation on both models: no ratio.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("match", help="the dense checkpoint at the sparse run's final validation loss")
    m.add_argument("--sparse", type=Path, required=True, help="the sparse run directory")
    m.add_argument("--dense", type=Path, required=True, help="the dense run directory")
    t = sub.add_parser("table", help="nodes and edges per task, and the geometric-mean edge ratio")
    t.add_argument("--sparse", type=Path, required=True, help="the sparse model's circuits directory")
    t.add_argument("--dense", type=Path, required=True, help="the dense model's circuits directory")
    args = p.parse_args(argv)
    try:
        if args.cmd == "match":
            path, step, loss, target = matched_checkpoint(args.sparse, args.dense)
            print(f"{path}  (step {step}, val loss {loss:.4f}; sparse final {target:.4f})")
        else:
            print(table(args.sparse, args.dense))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
