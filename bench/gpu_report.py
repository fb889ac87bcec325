"""Gather the part results of bench/gpu.sh into one table of the speed targets and one JSON.

    python bench/gpu_report.py PARTS_DIR OUT_JSON

PARTS_DIR holds what gpu.sh's parts wrote: train_step/sparsify/abstopk JSONs named
<bench>_<label>.json and tests.txt (the GPU exactness tests' exit code and summary). A part that
failed or did not run shows as "not run" in the table; nothing is estimated.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import print_table  # noqa: E402


def _load(parts: Path, name: str) -> dict | None:
    path = parts / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _row(record: dict | None, variant: str) -> dict | None:
    if not record:
        return None
    return next((r for r in record["rows"] if r.get("variant") == variant), None)


def _ratio(record: dict | None, num: str, den: str) -> float | None:
    a, b = _row(record, num), _row(record, den)
    return a["step_ms"] / b["step_ms"] if a and b else None


def targets(parts: Path) -> list[dict]:
    rows = []

    def add(target: str, where: str, value, limit: float | None, higher_is_better: bool = False, unit: str = "x"):
        if value is None:
            status = "not run"
        elif limit is None:
            status = "info"
        else:
            status = "MET" if (value >= limit if higher_is_better else value <= limit) else "missed"
        shown = None if value is None else (f"{value:.1%}" if unit == "%" else f"{value:.3f}{unit}")
        bound = None if limit is None else (f">= {limit:.0%}" if higher_is_better and unit == "%" else
                                            (">= " if higher_is_better else "<= ") + f"{limit:g}{unit}")
        rows.append({"target": target, "where": where, "measured": shown, "bound": bound, "status": status,
                     "value": value})

    tests = (parts / "tests.txt").read_text().strip().splitlines() if (parts / "tests.txt").exists() else []
    if tests:
        rc = tests[0].split("=", 1)[-1].strip()
        add("GPU exactness tests pass", tests[-1][:60] if len(tests) > 1 else "", 1.0 if rc == "0" else 0.0, 1.0,
            higher_is_better=True, unit="")
    else:
        add("GPU exactness tests pass", "", None, 1.0, higher_is_better=True, unit="")
    for preset in ("d512", "d1024"):
        eager = _load(parts, f"train_step_{preset}")
        alt = _load(parts, f"train_step_{preset}_alt")
        add("weight top-k: sparse / dense", f"{preset} eager", _ratio(eager, "sparse", "dense"), 1.05)
        add("weight top-k: sparse / dense", f"{preset} eager, top-k by bisect", _ratio(alt, "sparse", "dense"), 1.05)
        add("full recipe / dense", f"{preset} eager", _ratio(eager, "recipe", "dense"), 1.3)
        add("full recipe / dense", f"{preset} eager, bisect + torch AbsTopK", _ratio(alt, "recipe", "dense"), 1.3)
        add("dense with sink / without", f"{preset} eager", _ratio(eager, "dense", "nosink"), 1.15)
        add("dense, masked sink / without (before)", f"{preset} eager", _ratio(eager, "dense_sinkmask", "nosink"),
            None)
        add("dense / plain (16-wide heads + sink vs 64-wide)", f"{preset} eager", _ratio(eager, "dense", "plain"),
            None)
        if preset == "d512":  # the references run at d512 only
            add("recipe_ref / dense (before: torch.topk refs)", f"{preset} eager",
                _ratio(eager, "recipe_ref", "dense"), None)
    for preset in ("d512", "d1024"):
        for r in (_load(parts, f"train_step_{preset}") or {}).get("rows", []):
            if r.get("opt_ms") is not None:
                add(f"optimiser step ms, {r['variant']}", f"{preset} eager", r["opt_ms"], None, unit="")
    comp = _load(parts, "train_step_d1024_compiled")
    dense = _row(comp, "dense")
    add("compiled dense step MFU", "d1024 compiled", dense["mfu"] if dense else None, 0.35,
        higher_is_better=True, unit="%")
    plain = _row(comp, "plain")
    add("compiled plain step MFU", "d1024 compiled", plain["mfu"] if plain else None, None, unit="%")
    more = _load(parts, "train_step_d1024_compiled_more")
    add("weight top-k: sparse / dense", "d1024 compiled", _ratio(more, "sparse", "dense"), 1.05)
    add("full recipe / dense", "d1024 compiled", _ratio(_load(parts, "train_step_d1024_compiled_recipe"),
                                                        "recipe", "dense"), 1.3)
    add("dense with sink / without", "d1024 compiled", _ratio(more, "dense", "nosink"), 1.15)
    for preset in ("d512", "d1024"):
        sp = _load(parts, f"sparsify_{preset}")
        for r in (sp or {}).get("rows", []):
            add(f"top-k sweep ms, {r['method']} ({r['mismatches']} mismatches)", preset, r["sweep_ms"], None, unit="")
        ab = _load(parts, f"abstopk_{preset}")
        for r in (ab or {}).get("rows", []):
            if r["width"] == "all":
                add(f"AbsTopK x8 fwd+bwd ms per step, {r['method']} ({r['rows_off']} rows off)", preset,
                    r["step_ms"], None, unit="")
    add("one circuit (search + validation), 8-layer d1024", "", None, 60.0, unit=" s")
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: gpu_report.py PARTS_DIR OUT_JSON", file=sys.stderr)
        return 2
    parts, out = Path(argv[0]), Path(argv[1])
    rows = targets(parts)
    print_table(rows, ["target", "where", "measured", "bound", "status"])
    record = {"targets": rows, "parts": {p.stem: json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))},
              "tests": (parts / "tests.txt").read_text() if (parts / "tests.txt").exists() else None}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
