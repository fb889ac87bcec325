"""The training loop: one process on CPU/GPU, or many under torchrun (DDP).

The batch a step sees is a pure function of (seed, step), and a checkpoint holds
the weights, Adam state and step, so a run killed anywhere resumes exactly where its last checkpoint
left it: on CPU its final weights equal an uninterrupted run's bit for bit.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from . import checkpoint as ckpt
from .checkpoint_resume import capture_rng_state, restore_rng_state
from .config import Config, ConfigError, config_from_dict, dump_config, resolve_device
from .data import PreparedData, get_batch, prepare_data, random_offsets, unigram_loss
from .fileio import atomic_write_text
from .flops import flops_per_token, peak_flops
from .model import GPT
from .sparsity import SparseAdam

VAL_SEED = 1_000_003  # seeds the fixed validation batches, apart from every training step's seed


class TrainingError(RuntimeError):
    """Training cannot continue (NaN loss, mismatched resume)."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(device_type: str) -> Dist:
    """Join the torchrun process group when launched by torchrun; a single process otherwise."""
    if "RANK" not in os.environ:
        return Dist()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend)
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if device_type == "cuda":
        torch.cuda.set_device(d.local_rank)
    return d


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # The loss is computed in fp32 whatever the autocast dtype.
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


@torch.no_grad()
def evaluate(model: GPT, data: PreparedData, cfg: Config, device: str, autocast) -> float:
    """Mean validation loss over fixed batches (the same ones at every evaluation)."""
    T = cfg.model.block_size
    micro = cfg.train.batch_size // cfg.train.grad_accum
    offsets = random_offsets(len(data.val), T, cfg.train.eval_batches * micro, (cfg.train.seed, VAL_SEED))
    model.eval()
    losses = []
    for chunk in np.array_split(offsets, cfg.train.eval_batches):
        x, y = get_batch(data.val, chunk, T)
        with autocast:
            losses.append(cross_entropy(model(x.to(device)), y.to(device)).item())
    model.train()
    return float(np.mean(losses))


class MetricsLog:
    """metrics.jsonl: one JSON record per line; on resume, records past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass
class _Run:
    """Everything the step loop of one run works with, built once by :func:`_setup`."""

    cfg: Config
    out_dir: Path
    device: str
    dd: Dist
    data: PreparedData
    model: GPT
    train_model: torch.nn.Module  # the model as trained: compiled and/or wrapped in DDP
    opt: SparseAdam
    autocast: object
    micro: int                    # sequences per micro-batch per process
    start_step: int
    log: Callable[[str], None]


def train(cfg: Config, out_dir: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train a model as configured, writing checkpoints, metrics and plots under out_dir.

    ``cfg`` is not modified; the config the run really uses (with the tokenizer's vocabulary size,
    or the checkpoint's on resume) is written to ``out_dir/config.yaml``.
    """
    out_dir = Path(out_dir)
    device = resolve_device(cfg.train.device)
    dd = setup_distributed(device)
    try:
        return _train(cfg, out_dir, resume, progress, device, dd)
    finally:
        if dd.world > 1:
            dist.destroy_process_group()


def _load_resume(cfg: Config, out_dir: Path) -> tuple[Config, ckpt.Checkpoint]:
    latest = ckpt.latest_checkpoint(out_dir)
    if latest is None:
        raise TrainingError(f"--resume: no checkpoint under {out_dir}/checkpoints to resume from")
    saved = ckpt.load_checkpoint(latest)
    saved_cfg = config_from_dict(yaml.safe_load(saved.config_yaml))
    # Only the length of the run may change on resume; anything else would make it a different run.
    mine, theirs = cfg.to_dict(), saved_cfg.to_dict()
    mine["train"]["steps"] = theirs["train"]["steps"] = 0
    mine["train"]["peak_tflops"] = theirs["train"]["peak_tflops"]  # only used for MFU in the logs
    mine["model"]["vocab_size"] = theirs["model"]["vocab_size"]
    diffs = [f"{s}.{k}: {theirs[s][k]!r} -> {mine[s][k]!r}"
             for s in theirs for k in theirs[s] if mine[s][k] != theirs[s][k]]
    if diffs:
        raise TrainingError(f"--resume with a config that differs from the checkpoint's ({latest}): "
                            + "; ".join(diffs))
    return _with_train(saved_cfg, steps=cfg.train.steps), saved


def _with_train(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))


def _with_vocab(cfg: Config, vocab_size: int) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab_size))


def _prepare_data(cfg: Config, dd: Dist, log) -> PreparedData:
    """Rank 0 builds the tokenised cache, the others then reuse it."""
    data = prepare_data(cfg.data, log=log) if dd.main else None
    dd.barrier()
    return data if dd.main else prepare_data(cfg.data, log=log)


def _check_same_data(saved: ckpt.Checkpoint, data: PreparedData) -> None:
    meta = json.loads((saved.path / "meta.json").read_text())
    for key in ("manifest_hash", "tokenizer_hash"):
        if meta[key] != getattr(data, key):
            raise TrainingError(
                f"--resume: the corpus/tokenizer differ from the checkpoint's ({key} "
                f"{meta[key][:12]} in {saved.path}, now {getattr(data, key)[:12]}); "
                f"restore the original data or start a new run")


def _setup(cfg: Config, out_dir: Path, resume: bool, device: str, dd: Dist) -> _Run:
    """Resolve the run's config, data, model and optimiser (restored from the checkpoint on resume)."""
    log = print if dd.main else (lambda *a, **k: None)
    saved = None
    if resume:
        cfg, saved = _load_resume(cfg, out_dir)
    data = _prepare_data(cfg, dd, log)
    cfg = _with_vocab(cfg, data.vocab_size)
    if saved is not None:
        _check_same_data(saved, data)

    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    opt = SparseAdam(model, cfg.sparsity, cfg.train)
    if saved is not None:
        model.load_state_dict({k: v.to(device) for k, v in saved.state_dict.items()})
        opt.load_state_dict(saved.train_state["optimizer"])
        restore_rng_state(saved.train_state["rng"])
    train_model = torch.compile(model) if cfg.train.compile else model
    if dd.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[dd.local_rank] if device == "cuda" else None)

    use_bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and device == "cuda")
    autocast = torch.autocast(device, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    if cfg.train.batch_size % (dd.world * cfg.train.grad_accum):
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by "
                          f"processes x grad_accum ({dd.world} x {cfg.train.grad_accum})")
    micro = cfg.train.batch_size // (dd.world * cfg.train.grad_accum)
    return _Run(cfg, out_dir, device, dd, data, model, train_model, opt, autocast, micro,
                saved.step if saved is not None else 0, log)


def _step_loss(run: _Run, step: int) -> float:
    """Forward and backward over the global batch of `step`; the mean loss over all processes."""
    cfg, dd, T, accum = run.cfg, run.dd, run.cfg.model.block_size, run.cfg.train.grad_accum
    loss_sum = torch.zeros((), device=run.device)
    # The global batch depends on (seed, step) only; each process takes its own rows of it,
    # so any number of processes and micro-steps sees the same data.
    step_offsets = random_offsets(len(run.data.train), T, cfg.train.batch_size, (cfg.train.seed, step))
    for m in range(accum):
        first = (m * dd.world + dd.rank) * run.micro
        x, y = get_batch(run.data.train, step_offsets[first:first + run.micro], T)
        x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
        sync = dd.world == 1 or m == accum - 1
        with (nullcontext() if sync else run.train_model.no_sync()), run.autocast:
            loss = cross_entropy(run.train_model(x), y) / accum
        loss.backward()
        loss_sum += loss.detach()
    if dd.world > 1:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    return loss_sum.item()


def _save(run: _Run, step: int, val_loss: Optional[float], config_yaml: str) -> Path:
    data = run.data
    meta = {"step": step, "val_loss": val_loss, "manifest_hash": data.manifest_hash,
            "tokenizer_hash": data.tokenizer_hash, "data_dir": str(data.dir)}
    state = {"optimizer": run.opt.state_dict(), "rng": capture_rng_state(), "step": step}
    return ckpt.save_checkpoint(run.out_dir, step, run.model.state_dict(), config_yaml,
                                data.tokenizer_path, train_state=state,
                                extra_files={"meta.json": json.dumps(meta, indent=1).encode()},
                                keep=run.cfg.train.keep_checkpoints)


class _Speed:
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


def _log_start(run: _Run, speed: _Speed) -> None:
    cfg, model, opt, data = run.cfg, run.model, run.opt, run.data
    run.log(f"model: {model.num_params():,} params ({cfg.model.n_layer} layers, d_model {cfg.model.d_model}); "
            f"{len(opt.tensors)} sparse tensors, {opt.l0_final:,} nonzero at the end; "
            f"train {len(data.train):,} tokens, val {len(data.val):,}; device {run.device} x{run.dd.world}; "
            f"{speed.flops_token / 1e6:.1f} MFLOP/token, "
            + (f"peak {speed.peak / 1e12:.0f} TFLOP/s" if speed.peak else "MFU unavailable (no known bf16 peak)"))


def _record(run: _Run, done: int, train_loss: float, info: dict, speed: _Speed) -> dict:
    """The metrics.jsonl record of a finished step (evaluating the model when it is due)."""
    cfg, opt = run.cfg, run.opt
    record = {"step": done, "train_loss": train_loss, "lr": info["lr"], "grad_rms": info["grad_rms"],
              "density_scale": info["density_scale"], "l0": opt.l0_at(info["density_scale"])}
    if done % cfg.train.eval_interval == 0 or done == cfg.train.steps:
        record["val_loss"] = evaluate(run.model, run.data, cfg, run.device, run.autocast)
    if done % cfg.train.log_interval == 0 or "val_loss" in record:
        record["tokens_per_s"], record["mfu"] = speed.measure()
    return record


def _train(cfg: Config, out_dir: Path, resume: bool, progress: bool, device: str, dd: Dist) -> dict:
    run = _setup(cfg, out_dir, resume, device, dd)
    cfg, opt = run.cfg, run.opt
    speed = _Speed(cfg, device, dd.world)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out_dir / "metrics.jsonl", run.start_step if resume else None) if dd.main else None
    config_yaml = dump_config(cfg)
    if dd.main:
        atomic_write_text(out_dir / "config.yaml", config_yaml)
        _log_start(run, speed)

    bar = tqdm(total=cfg.train.steps, initial=run.start_step, disable=not (progress and dd.main),
               dynamic_ncols=True, file=sys.stderr, desc="train")
    val_loss = None
    run.train_model.train()
    for step in range(run.start_step, cfg.train.steps):
        train_loss = _step_loss(run, step)
        if not math.isfinite(train_loss):
            last = ckpt.latest_checkpoint(out_dir)
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
            raise TrainingError(f"training loss is {train_loss} at step {step}; stopped; {where} "
                                f"(try a lower train.lr)")
        info = opt.step(step)
        opt.zero_grad()
        speed.add_step()
        done = step + 1
        if dd.main:
            record = _record(run, done, train_loss, info, speed)
            val_loss = record.get("val_loss", val_loss)
            metrics.write(record)
            bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}" if val_loss else "-",
                            tok_s=f"{speed.speed:,.0f}",
                            mfu=f"{speed.util:.1%}" if speed.util is not None else "n/a",
                            density=f"{opt.l0_at(info['density_scale']) / max(1, opt.l0_at(0.0)):.3f}",
                            refresh=False)
            bar.update(1)
            if done % cfg.train.ckpt_interval == 0 or done == cfg.train.steps:
                _save(run, done, val_loss, config_yaml)
    bar.close()
    dd.barrier()
    if not dd.main:
        return {}
    summary = summarize(out_dir, run.data, opt, val_loss)
    from .plots import plot_run
    plot_run(out_dir)
    return summary


def summarize(out_dir: Path, data: PreparedData, opt: SparseAdam, val_loss: float | None) -> dict:
    records = [json.loads(l) for l in (out_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    mfus = [r["mfu"] for r in records if r.get("mfu") is not None]
    summary = {
        "final_val_loss": val_loss,
        "unigram_val_loss": unigram_loss(data.train, data.val, data.vocab_size),
        "tokens_per_s": float(np.median(speeds)) if speeds else None,
        "mfu": float(np.median(mfus)) if mfus else None,
        "steps": records[-1]["step"] if records else 0,
        "checkpoint": str(ckpt.latest_checkpoint(out_dir)),
        "nonzeros": opt.nonzero_report(),
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    return summary
