"""Shared by the bench/ scripts: environment record, timing with device sync, table and JSON output."""
from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """HEAD, with '+dirty' when tracked files differ from it (the numbers then measure HEAD plus edits)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def environment(device: str) -> dict:
    return {"device": device, "device_name": device_name(device), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(), "git_commit": git_commit(),
            "load_average": list(__import__("os").getloadavg()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    """Seconds one call of fn takes, the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(fns: dict, device: str, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time every fn `repeats` times, cycling through them (a b c a b c ...) so that load from other
    processes hits each alike; returns the seconds per call of each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(timed(fn, device))
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return "-" if v is None else str(v)


def write_json(name: str, record: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return path
