#!/usr/bin/env python3
"""Train a weight-sparse GPT.

    python train.py --config configs/cpu-small.yaml
    python train.py --config configs/tiny.yaml --steps 50 --set sparsity.matrix_density=0.25
    torchrun --nproc_per_node=8 train.py --config configs/paper.yaml
    python train.py --out runs/cpu-small --resume        # continue a stopped or killed run
    python train.py --config configs/tiny.yaml --out runs/tiny --overwrite   # start it over

Ctrl-C (or SIGTERM) stops at the end of the current step and saves a checkpoint to resume from.
"""
import argparse
import signal
import sys
from pathlib import Path

# Only the config (and below, the run directory checks) are imported up front: a mistyped option,
# config value or --out is reported in a fraction of a second, before torch is loaded.
from sparse_gpt.cli import OneLineParser
from sparse_gpt.config import ConfigError, load_config


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config file (configs/*.yaml); on --resume defaults to the run's own")
    p.add_argument("--out", help="run directory for checkpoints, metrics and plots (default runs/<config name>)")
    p.add_argument("--steps", type=int, help="number of optimiser steps (overrides train.steps)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (overrides train.device)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace the run already in --out (its checkpoints and metrics are deleted)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one config value, e.g. --set train.lr=3e-3 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    args = p.parse_args(argv)
    if args.out is None and args.config is None:
        p.error("give --config (and/or --out)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    config_path = args.config
    if config_path is None and args.resume:
        config_path = out / "config.yaml"
        if not config_path.is_file():
            print(f"error: --resume: {out} holds no run to resume (no config.yaml there)", file=sys.stderr)
            return 2
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    from sparse_gpt.checkpoint_layout import CheckpointError
    from sparse_gpt.trainer_rundir import RunDirError, preflight

    try:
        cfg = load_config(config_path, overrides, log=print)
        preflight(out, cfg.train.steps, args.resume, args.overwrite)
    except (ConfigError, RunDirError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run(cfg, out, args)


def run(cfg, out: Path, args: argparse.Namespace) -> int:
    from sparse_gpt.checkpoint import CheckpointError
    from sparse_gpt.data import DataError
    from sparse_gpt.trainer import TrainingError, TrainingInterrupted, train
    from sparse_gpt.trainer_metrics import MetricsError
    from sparse_gpt.trainer_rundir import RunDirError

    # Problems with what the user asked for or gave us: each is one line, exit status 2.
    user_errors = (ConfigError, DataError, CheckpointError, TrainingError, RunDirError, MetricsError)
    try:
        summary = train(cfg, out, resume=args.resume, overwrite=args.overwrite,
                        progress=not args.no_progress)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; nothing new was saved, and the checkpoints already in {out} are intact",
              file=sys.stderr)
        return 128 + signal.SIGINT
    except OSError as e:
        # Full disk, read-only or vanished output: say where and what. Checkpoints and the token
        # cache are written atomically, so what is on disk is still consistent.
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: cannot read or write a file{where}: {e.strerror or e}; nothing already saved "
              f"in {out} was damaged", file=sys.stderr)
        return 2
    if summary:
        speed = summary["tokens_per_s"]
        print(f"done: val loss {summary['final_val_loss']:.4f} "
              f"(unigram baseline {summary['unigram_val_loss']:.4f}), "
              + (f"{speed:,.0f} tokens/s; " if speed else "")
              + f"checkpoint {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
