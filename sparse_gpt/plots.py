"""PNG plots of a training run, drawn from its metrics.jsonl."""
from __future__ import annotations

import json
from pathlib import Path

# Figure objects rather than pyplot: no global backend to set, no display needed, nothing to close.
from matplotlib.figure import Figure

from .fileio import atomic_save_figure
from .trainer_metrics import read_metrics


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write loss.png (train/val loss) and schedule.png (LR and density) into run_dir."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")  # a torn last line was reported by the trainer
    return [_loss_figure(run_dir, records), _schedule_figure(run_dir, records)]


def _loss_figure(run_dir: Path, records: list[dict]) -> Path:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot([r["step"] for r in records], [r["train_loss"] for r in records], lw=0.8, alpha=0.7,
            label="train")
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if val:
        ax.plot(*zip(*val), "o-", ms=3, label="validation")
    summary = run_dir / "summary.json"
    if summary.exists():
        uni = json.loads(summary.read_text()).get("unigram_val_loss")
        if uni:
            ax.axhline(uni, ls="--", c="grey", lw=0.8, label=f"unigram baseline ({uni:.2f})")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=f"{run_dir.name}: loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_save_figure(fig, run_dir / "loss.png", dpi=120)


def _schedule_figure(run_dir: Path, records: list[dict]) -> Path:
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(7, 5))
    a1, a2 = fig.subplots(2, 1, sharex=True)
    a1.plot(steps, [r["lr"] for r in records])
    a1.set(ylabel="learning rate", title=f"{run_dir.name}: schedules")
    l0 = [r["l0"] for r in records]
    a2.plot(steps, [v / max(l0) for v in l0])
    a2.set(xlabel="step", ylabel="nonzero sparse weights\n(share of dense)", yscale="log")
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    return atomic_save_figure(fig, run_dir / "schedule.png", dpi=120)
