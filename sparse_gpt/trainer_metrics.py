"""metrics.jsonl: one JSON record per optimiser step, appended as the run goes."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Optional

from .config import Config
from .fileio import append_text, atomic_write_text
from .flops import flops_per_token, peak_flops


class MetricsError(ValueError):
    """A metrics.jsonl that cannot be read (other than a torn last line, which is dropped)."""


def read_metrics(path: Path, warn: Optional[Callable[[str], None]] = None) -> list[dict]:
    """The records of a metrics.jsonl.

    A crash, power loss or full disk can leave the last line cut short; such a line is dropped
    (with a warning through `warn`), since the checkpoint a run resumes from never depends on it.
    An unreadable line anywhere else means the file was damaged otherwise: MetricsError.
    """
    lines = [(n, line) for n, line in enumerate(
        Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), start=1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a {type(record).__name__}, not a record")
        except ValueError as e:
            if i < len(lines) - 1:
                raise MetricsError(f"{path} line {n} is not a JSON record ({e}); "
                                   "repair or remove that line") from e
            if warn:
                warn(f"warning: {path}: dropped its last line, which was cut short "
                     f"(a crash or full disk while it was written): {line[:60]!r}")
            continue
        records.append(record)
    return records


class MetricsLog:
    """Appends records to metrics.jsonl; on resume, records past the checkpoint are dropped first."""

    def __init__(self, path: Path, resume_step: Optional[int], warn: Callable[[str], None]):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [r for r in read_metrics(path, warn) if r.get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        append_text(self.path, json.dumps(record) + "\n")


class Throughput:
    """Tokens per second (and MFU) since the previous timed record."""

    def __init__(self, cfg: Config, device: str, world: int):
        self.tokens_per_step = cfg.train.batch_size * cfg.model.block_size
        # MFU: model FLOPs per second over the bf16 peak of all devices (sparse_gpt/flops.py); None on CPU
        self.flops_token, self.peak = flops_per_token(cfg.model), peak_flops(device, cfg.train.peak_tflops)
        self.world = world
        self.t_last, self.tokens = time.perf_counter(), 0
        self.speed, self.util = 0.0, None

    def add_step(self) -> None:
        self.tokens += self.tokens_per_step

    def measure(self) -> tuple[float, Optional[float]]:
        now = time.perf_counter()
        self.speed = self.tokens / (now - self.t_last)
        self.util = self.flops_token * self.speed / (self.peak * self.world) if self.peak else None
        self.t_last, self.tokens = now, 0
        return self.speed, self.util
