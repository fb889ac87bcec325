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
import signal
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import checkpoint as ckpt
from .checkpoint_resume import capture_rng_state, restore_rng_state
from .config import (Config, ConfigError, config_from_dict, dump_config, parse_config_yaml,
                     resolve_device)
from .data import PreparedData, get_batch, prepare_data, random_offsets, unigram_loss
from .fileio import atomic_write_text
from .model import GPT
from .sparsity import SparseAdam
from .trainer_metrics import MetricsLog, Throughput, read_metrics
from .trainer_rundir import RunLock, clear_run, describe_run, preflight
from .trainer_stop import StopOnSignal

# Seeds the fixed validation batches, apart from every training step's seed. Not train.seed: runs
# that differ only in seed are scored on the same batches, so their losses compare (the leading 0
# keeps the batches every run before this change was scored on at seed 0).
VAL_SEED = (0, 1_000_003)


class TrainingError(RuntimeError):
    """Training cannot continue (NaN loss, mismatched resume)."""


class TrainingInterrupted(TrainingError):
    """SIGINT or SIGTERM stopped the run at a step boundary, with a checkpoint to resume from."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


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
    offsets = random_offsets(len(data.val), T, cfg.train.eval_batches * micro, VAL_SEED)
    model.eval()
    losses = []
    for chunk in np.array_split(offsets, cfg.train.eval_batches):
        x, y = get_batch(data.val, chunk, T)
        with autocast:
            losses.append(cross_entropy(model(x.to(device)), y.to(device)).item())
    model.train()
    return float(np.mean(losses))


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


def train(cfg: Config, out_dir: str | Path, resume: bool = False, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Train a model as configured, writing checkpoints, metrics and plots under out_dir.

    A directory that already holds a run is refused unless `resume` (continue it) or `overwrite`
    (replace it) says what to do with it. ``cfg`` is not modified; the config the run really uses
    (with the tokenizer's vocabulary size, or the checkpoint's on resume) is written to
    ``out_dir/config.yaml``.
    """
    out_dir = Path(out_dir)
    preflight(out_dir, cfg.train.steps, resume, overwrite)  # refuse before touching anything
    device = resolve_device(cfg.train.device)
    dd = setup_distributed(device)
    try:
        with RunLock(out_dir) if dd.main else nullcontext():
            preflight(out_dir, cfg.train.steps, resume, overwrite, locked=True)  # now it is ours
            return _train(cfg, out_dir, resume, overwrite, progress, device, dd)
    finally:
        if dd.world > 1:
            dist.destroy_process_group()


def _load_resume(cfg: Config, out_dir: Path) -> tuple[Config, ckpt.Checkpoint]:
    latest = ckpt.latest_checkpoint(out_dir)
    saved = ckpt.load_checkpoint(latest)
    try:
        saved_cfg = config_from_dict(parse_config_yaml(saved.config_yaml, f"{latest}/config.yaml"))
    except ConfigError as e:
        raise ckpt.CheckpointError(f"checkpoint {latest} holds a config.yaml that is not a valid "
                                   f"config: {e}") from e
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
    if saved.train_state is None:
        raise TrainingError(f"--resume: checkpoint {latest} has no train state (optimiser, RNG) "
                            "to resume from")
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
    try:
        meta = json.loads((saved.path / "meta.json").read_text(encoding="utf-8"))
        recorded = {key: str(meta[key]) for key in ("manifest_hash", "tokenizer_hash")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ckpt.CheckpointError(f"checkpoint {saved.path} has no readable meta.json "
                                   f"({type(e).__name__}: {e}), so its data cannot be checked") from e
    for key, value in recorded.items():
        if value != getattr(data, key):
            raise TrainingError(
                f"--resume: the corpus/tokenizer differ from the checkpoint's ({key} "
                f"{value[:12]} in {saved.path}, now {getattr(data, key)[:12]}); "
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
        _restore(saved, model, opt, device)
    train_model = torch.compile(model) if cfg.train.compile else model
    if dd.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[dd.local_rank] if device == "cuda" else None)

    use_bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and device == "cuda")
    autocast = torch.autocast(device, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    if use_bf16 and device == "cpu" and not _cpu_has_bf16():
        _warn("warning: train.dtype=bf16 on a CPU without native bf16 instructions (AVX512-BF16 or AMX): "
              "bf16 is emulated here and may well be slower than float32 (train.dtype=fp32)")
    if cfg.train.batch_size % (dd.world * cfg.train.grad_accum):
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by "
                          f"processes x grad_accum ({dd.world} x {cfg.train.grad_accum})")
    micro = cfg.train.batch_size // (dd.world * cfg.train.grad_accum)
    return _Run(cfg, out_dir, device, dd, data, model, train_model, opt, autocast, micro,
                saved.step if saved is not None else 0, log)


def _restore(saved: ckpt.Checkpoint, model: GPT, opt: SparseAdam, device: str) -> None:
    where = f"checkpoint {saved.path}"
    try:
        model.load_state_dict({k: v.to(device) for k, v in saved.state_dict.items()})
        opt.load_state_dict(saved.train_state["optimizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"{where} does not fit the model of its own config "
                                   f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from e
    restore_rng_state(saved.train_state.get("rng"), f"{where}: train_state.pt")


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


def _weights_finite(model: GPT) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.state_dict().values() if p.is_floating_point())


def _last_good(out_dir: Path) -> str:
    last = ckpt.latest_checkpoint(out_dir)
    return f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"


def _save(run: _Run, step: int, val_loss: Optional[float], config_yaml: str) -> Optional[Path]:
    """Checkpoint the run (on the main process; every process checks the weights first)."""
    # Never save weights that diverged: LATEST must always name weights worth resuming from.
    if not _weights_finite(run.model):
        raise TrainingError(f"the weights are not finite after step {step}; stopped without saving "
                            f"them; {_last_good(run.out_dir)} (try a lower train.lr)")
    if not run.dd.main:
        return None
    data = run.data
    meta = {"step": step, "val_loss": val_loss, "manifest_hash": data.manifest_hash,
            "tokenizer_hash": data.tokenizer_hash, "data_dir": str(data.dir)}
    state = {"optimizer": run.opt.state_dict(), "rng": capture_rng_state(), "step": step}
    return ckpt.save_checkpoint(run.out_dir, step, run.model.state_dict(), config_yaml,
                                data.tokenizer_path, train_state=state,
                                extra_files={"meta.json": json.dumps(meta, indent=1).encode()},
                                keep=run.cfg.train.keep_checkpoints)


def _log_start(run: _Run, speed: Throughput) -> None:
    cfg, model, opt, data = run.cfg, run.model, run.opt, run.data
    run.log(f"model: {model.num_params():,} params ({cfg.model.n_layer} layers, d_model {cfg.model.d_model}); "
            f"{len(opt.tensors)} sparse tensors, {opt.l0_final:,} nonzero at the end; "
            f"train {len(data.train):,} tokens, val {len(data.val):,}; device {run.device} x{run.dd.world}; "
            f"{speed.flops_token / 1e6:.1f} MFLOP/token, "
            + (f"peak {speed.peak / 1e12:.0f} TFLOP/s" if speed.peak else "MFU unavailable (no known bf16 peak)"))


def _record(run: _Run, done: int, train_loss: float, info: dict, speed: Throughput) -> dict:
    """The metrics.jsonl record of a finished step (evaluating the model when it is due)."""
    cfg, opt = run.cfg, run.opt
    record = {"step": done, "train_loss": train_loss, "lr": info["lr"], "grad_rms": info["grad_rms"],
              "density_scale": info["density_scale"], "l0": opt.l0_at(info["density_scale"])}
    if done % cfg.train.eval_interval == 0 or done == cfg.train.steps:
        record["val_loss"] = evaluate(run.model, run.data, cfg, run.device, run.autocast)
    if done % cfg.train.log_interval == 0 or "val_loss" in record:
        record["tokens_per_s"], record["mfu"] = speed.measure()
    return record


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (the probes are private torch API: assume yes if absent,
    so a torch without them never warns wrongly)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is None for p in probes):
        return True
    return any(p() for p in probes)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _start_files(run: _Run, resume: bool, overwrite: bool, config_yaml: str) -> MetricsLog:
    """Prepare the run directory for writing (only now is an overwritten run removed)."""
    if overwrite and describe_run(run.out_dir) is not None:
        run.log(f"overwriting the run in {run.out_dir} ({describe_run(run.out_dir)})")
        clear_run(run.out_dir)
    run.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(run.out_dir / "metrics.jsonl", run.start_step if resume else None, _warn)
    atomic_write_text(run.out_dir / "config.yaml", config_yaml)
    return metrics


def _train(cfg: Config, out_dir: Path, resume: bool, overwrite: bool, progress: bool, device: str,
           dd: Dist) -> dict:
    run = _setup(cfg, out_dir, resume, device, dd)
    config_yaml = dump_config(run.cfg)
    speed = Throughput(run.cfg, device, dd.world)
    metrics = _start_files(run, resume, overwrite, config_yaml) if dd.main else None
    if dd.main:
        _log_start(run, speed)
    with StopOnSignal() as stop:
        val_loss = _loop(run, metrics, speed, config_yaml, stop, progress)
    dd.barrier()
    if not dd.main:
        return {}
    summary = summarize(out_dir, run.data, run.opt, val_loss)
    from .plots import plot_run
    plot_run(out_dir)
    return summary


def _loop(run: _Run, metrics: Optional[MetricsLog], speed: Throughput, config_yaml: str,
          stop: StopOnSignal, progress: bool) -> Optional[float]:
    """The optimiser steps from the start step to the end; returns the last validation loss."""
    cfg, opt, dd = run.cfg, run.opt, run.dd
    bar = tqdm(total=cfg.train.steps, initial=run.start_step, disable=not (progress and dd.main),
               dynamic_ncols=True, file=sys.stderr, desc="train")
    val_loss, saved_at = None, run.start_step
    run.train_model.train()
    try:
        for step in range(run.start_step, cfg.train.steps):
            train_loss = _step_loss(run, step)
            if not math.isfinite(train_loss):
                raise TrainingError(f"training loss is {train_loss} at step {step}; stopped; "
                                    f"{_last_good(run.out_dir)} (try a lower train.lr)")
            info = opt.step(step)
            opt.zero_grad()
            speed.add_step()
            done = step + 1
            if dd.main:
                record = _record(run, done, train_loss, info, speed)
                val_loss = record.get("val_loss", val_loss)
                metrics.write(record)
                _show(bar, record, val_loss, speed, opt, info)
            if done % cfg.train.ckpt_interval == 0 or done == cfg.train.steps:
                _save(run, done, val_loss, config_yaml)
                saved_at = done
            signum = stop.requested(dd.world, run.device) if done < cfg.train.steps else None
            if signum is not None:
                _stop_for_signal(run, signum, done, saved_at, val_loss, config_yaml)
    finally:
        bar.close()
    return val_loss


def _show(bar, record: dict, val_loss: Optional[float], speed: Throughput, opt: SparseAdam, info: dict) -> None:
    bar.set_postfix(loss=f"{record['train_loss']:.3f}", val=f"{val_loss:.3f}" if val_loss else "-",
                    tok_s=f"{speed.speed:,.0f}", mfu=f"{speed.util:.1%}" if speed.util is not None else "n/a",
                    density=f"{opt.l0_at(info['density_scale']) / max(1, opt.l0_at(0.0)):.3f}",
                    refresh=False)
    bar.update(1)


def _stop_for_signal(run: _Run, signum: int, done: int, saved_at: int, val_loss: Optional[float],
                     config_yaml: str) -> None:
    if saved_at != done:
        _save(run, done, val_loss, config_yaml)
    run.dd.barrier()
    raise TrainingInterrupted(
        f"stopped by {signal.Signals(signum).name} after step {done}; checkpoint "
        f"{ckpt.latest_checkpoint(run.out_dir)} holds it; continue with: "
        f"python train.py --out {run.out_dir} --resume", signum)


def summarize(out_dir: Path, data: PreparedData, opt: SparseAdam, val_loss: float | None) -> dict:
    records = read_metrics(out_dir / "metrics.jsonl", _warn)
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
