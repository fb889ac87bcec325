"""One row per circuit, then the spread of their sizes: for comparing training runs (seeds, recipes).

    python tools/circuit_spread.py runs/seed*/circuits/single_double_quote/circuit.json

Two runs of one recipe that differ only in seed can give circuits of very different sizes
(docs/results.md), so a claim that a recipe gives small circuits needs several runs. Each row
names the checkpoint a circuit was pruned from, that run's seed, steps and dtype and its logged
validation loss (from the checkpoint's config.yaml and meta.json, when they are still there), then
the circuit's nodes and kept weights, its raw templated loss, its natural-example accuracy (full
model / raw / calibrated) and the checks it misses. Below the rows: the median, smallest and
largest size over the circuits that pass every check, and over all of them. Not part of the
sparse_gpt package: it reads what train.py and prune_circuit.py write.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from sparse_gpt.circuit import CircuitError, load_circuit
from sparse_gpt.config import ConfigError, config_from_dict, parse_config_yaml


def run_facts(checkpoint: str | None) -> dict:
    """seed, steps, dtype and logged validation loss of the run behind a checkpoint ({} if gone)."""
    if not checkpoint or not Path(checkpoint).is_dir():
        return {}
    ckpt = Path(checkpoint)
    facts = {}
    try:
        train = config_from_dict(parse_config_yaml((ckpt / "config.yaml").read_text(), str(ckpt))).train
        facts |= {"seed": train.seed, "steps": train.steps, "dtype": train.dtype}
    except (OSError, ConfigError):
        pass
    try:
        facts["val_loss"] = float(json.loads((ckpt / "meta.json").read_text())["val_loss"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return facts


def row(path: Path) -> dict:
    circuit = load_circuit(path)
    m = circuit.metrics
    if m is None:
        raise CircuitError(f"{path} has no validation metrics (was it written by prune_circuit.py?)")
    natural = [split.get("natural") for split in (m.full, m.circuit_uncalibrated, m.circuit)]
    return {"path": path, "checkpoint": circuit.provenance.checkpoint, **run_facts(circuit.provenance.checkpoint),
            "nodes": len(circuit.nodes), "weights": len(circuit.edges),
            "raw_loss": m.circuit_uncalibrated["templated"].loss,
            "natural": [s.accuracy for s in natural] if all(natural) else None,
            "missed": [name for name, ok in m.checks.items() if not ok]}


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def spread(rows: list[dict]) -> str:
    if not rows:
        return "none"
    nodes, weights = [r["nodes"] for r in rows], [r["weights"] for r in rows]
    return (f"nodes median {statistics.median(nodes):g} ({min(nodes)}-{max(nodes)}), "
            f"weights median {statistics.median(weights):g} ({min(weights)}-{max(weights)})")


def table(rows: list[dict]) -> str:
    lines = ["| checkpoint | seed | steps | dtype | val loss | nodes | weights | raw templated loss | "
             "natural accuracy full / raw / calibrated | checks missed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nat = " / ".join(f"{a:.3f}" for a in r["natural"]) if r["natural"] else "-"
        lines.append(f"| {r['checkpoint'] or r['path']} | {_fmt(r.get('seed'), 'd')} | {_fmt(r.get('steps'), ',')} | "
                     f"{r.get('dtype', '-')} | {_fmt(r.get('val_loss'), '.4f')} | {r['nodes']} | {r['weights']} | "
                     f"{r['raw_loss']:.3f} | {nat} | {', '.join(r['missed']) or 'none'} |")
    passing = [r for r in rows if not r["missed"]]
    lines += ["", f"every check passed: {len(passing)} of {len(rows)}; {spread(passing)}",
              f"all {len(rows)}: {spread(rows)}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("circuits", nargs="+", type=Path, help="circuit.json files, one per trained model")
    args = p.parse_args(argv)
    try:
        rows = [row(path) for path in args.circuits]
    except (CircuitError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
