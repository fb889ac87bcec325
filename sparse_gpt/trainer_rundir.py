"""Guarding a run directory: one training process at a time, and no run replaced by accident.

A run directory holds days of compute, so a second ``train.py`` into it is refused while the first
runs (an exclusive lock held for the life of the run), and a new run into a directory that already
holds one is refused unless it resumes that run or explicitly overwrites it.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Optional

from .checkpoint_layout import CHECKPOINTS_DIR, STEP_DIR_RE, CheckpointError, latest_checkpoint
from .fileio import TMP_PREFIX

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected from a concurrent second run
    fcntl = None

LOCK_FILE = ".lock"  # holds the pid of the training process that has the run directory
# What a training run writes into its directory; --overwrite removes exactly these.
RUN_ENTRIES = (CHECKPOINTS_DIR, "metrics.jsonl", "summary.json", "config.yaml", "loss.png",
               "schedule.png")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (in use, already holding a run, not a dir)."""


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output path that cannot be a run directory, before anything is written."""
    for parent in [out_dir, *out_dir.parents]:
        if parent.exists() and not parent.is_dir():
            what = "--out" if parent == out_dir else f"--out {out_dir}: {parent}"
            raise RunDirError(f"{what} is a file, not a directory; give a directory for the run")
        if parent.exists():
            return


def preflight(out_dir: Path, steps: int, resume: bool, overwrite: bool, locked: bool = False) -> None:
    """Refuse what the run directory cannot take, before anything is read or written: a path that
    is no directory, a directory another run holds (unless `locked`: the caller holds it), a run
    that would be trained into without --resume or --overwrite, a --resume with nothing left to do.
    """
    check_out_dir(out_dir)
    if not locked:
        check_not_in_use(out_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; give one")
    if resume:
        latest = latest_checkpoint(out_dir)
        if latest is None:
            raise RunDirError(f"--resume: no checkpoint under {out_dir}/{CHECKPOINTS_DIR} to resume from")
        step = int(STEP_DIR_RE.fullmatch(latest.name).group(1))
        if step >= steps:
            already = "already finished: its" if step == steps else "has gone past that:"
            raise RunDirError(f"--resume: the run in {out_dir} {already} latest checkpoint {latest.name} "
                              f"is at step {step} and --steps (train.steps) is {steps}; give a larger "
                              f"--steps to train further")
    elif not overwrite:
        existing = describe_run(out_dir)
        if existing is not None:
            raise RunDirError(f"{out_dir} already holds a run ({existing}); pass --resume to "
                              f"continue it or --overwrite to replace it")


def describe_run(out_dir: Path) -> Optional[str]:
    """A few words on the run already in `out_dir`, or None when it holds none."""
    found = [name for name in RUN_ENTRIES if (out_dir / name).exists()]
    if not found:
        return None
    try:
        latest = latest_checkpoint(out_dir)
    except CheckpointError:
        latest = None
    if latest is not None:
        return f"its latest checkpoint is {latest.name}"
    return f"no checkpoint yet, but {', '.join(found)}"


def clear_run(out_dir: Path) -> None:
    """Remove the files of the run in `out_dir` (for --overwrite); nothing else in it is touched."""
    for name in RUN_ENTRIES:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            # Renamed first, so a kill mid-delete leaves no half-deleted checkpoints directory.
            trash = out_dir / f"{TMP_PREFIX}overwritten-{name}-{secrets.token_hex(6)}"
            os.rename(path, trash)
            shutil.rmtree(trash)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _in_use_error(out_dir: Path, holder: str) -> RunDirError:
    return RunDirError(f"{out_dir} is in use by another training run (pid {holder}); "
                       f"wait for it to finish or give another --out")


def check_not_in_use(out_dir: Path) -> None:
    """Refuse a run directory another process holds, without taking (or creating) the lock."""
    path = out_dir / LOCK_FILE
    if fcntl is None or not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _in_use_error(out_dir, _holder(fd)) from e
        raise
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    return os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"


class RunLock:
    """An exclusive advisory lock on a run directory, held while the context is open.

    The lock is an ``flock`` on ``.lock``, which the kernel drops when the process dies however it
    dies, so a killed run never leaves a stale lock behind. The file itself stays (removing it would
    let two processes lock two different files); it records the holder's pid for error messages.
    """

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self._fd: Optional[int] = None
        self._created = False

    def __enter__(self) -> "RunLock":
        if fcntl is None:
            return self
        self._created = not self.out_dir.exists()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _in_use_error(self.out_dir, holder) from e
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is None:
            return
        if exc_type is not None and self._created and os.listdir(self.out_dir) == [LOCK_FILE]:
            # A run that failed before writing anything leaves no trace of the directory it made.
            (self.out_dir / LOCK_FILE).unlink()
            self.out_dir.rmdir()
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None
