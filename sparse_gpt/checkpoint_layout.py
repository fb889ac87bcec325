"""Where checkpoints live in a run directory, which one is current, and removing old ones.

Layout of a run directory::

    runs/tiny/checkpoints/
        LATEST                  # one line: the name of the newest complete checkpoint
        step_000200/
            config.yaml         # resolved run config
            model.safetensors   # weights; sparse ones as values + flat indices (+ -0.0 bitmask)
            tokenizer.json
            train_state.pt      # optional: optimiser state, step, RNG states (tensors and plain data)
            <extra files>       # optional small files such as meta.json
            checksums.json      # written last: format version, step, sha256 + size of every file
        step_000400/
        ...

``LATEST`` only ever names a complete, renamed-into-place directory, and nothing it names is ever
deleted or overwritten; entries starting with ``.tmp-`` are leftovers that cleanup may delete.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Optional

from .fileio import TMP_PREFIX, atomic_write_text

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "LATEST"
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TRAIN_STATE_FILE = "train_state.pt"
CHECKSUMS_FILE = "checksums.json"
REQUIRED_FILES = (CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE)
RESERVED_FILES = frozenset(REQUIRED_FILES + (TRAIN_STATE_FILE, CHECKSUMS_FILE))

STEP_DIR_RE = re.compile(r"step_(\d+)")
# Names of the files inside a checkpoint: plain names, so none can point outside it.
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class CheckpointError(ValueError):
    """A checkpoint that cannot be saved, found, verified or loaded as asked."""


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def latest_name(run_dir: Path) -> Optional[str]:
    """What ``LATEST`` says, raw (it may name a missing directory), or None without one."""
    latest_file = Path(run_dir) / CHECKPOINTS_DIR / LATEST_FILE
    if not latest_file.is_file():
        return None
    return latest_file.read_text(encoding="utf-8").strip()


def write_latest(root: Path, name: str) -> None:
    atomic_write_text(root / LATEST_FILE, name + "\n")


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint directory ``checkpoints/LATEST`` names, or None if none was completed yet.

    Only ``LATEST`` is consulted, so temp dirs and half-written step dirs are never returned.
    The returned directory is not verified here; :func:`load_checkpoint` does that.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    name = latest_name(run_dir)
    if name is None:
        return None
    if not STEP_DIR_RE.fullmatch(name):
        raise CheckpointError(f"{root / LATEST_FILE} should name a step_NNNNNN directory, found {name!r}")
    ckpt = root / name
    if not ckpt.is_dir():
        raise CheckpointError(f"{root / LATEST_FILE} names {name}, but {ckpt} does not exist")
    return ckpt


def resolve_checkpoint(path: Path) -> Path:
    """Turn a run dir (-> its latest checkpoint), its checkpoints/ dir, or a checkpoint dir into
    a checkpoint directory path."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file; expected a run directory or a checkpoint directory")
    if (path / CHECKSUMS_FILE).exists():
        return path
    if STEP_DIR_RE.fullmatch(path.name):
        raise CheckpointError(f"checkpoint {path} is missing {CHECKSUMS_FILE} "
                              "(its save never finished)")
    run_dir = path.parent if (path / LATEST_FILE).exists() else path
    if (run_dir / CHECKPOINTS_DIR).is_dir():
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise CheckpointError(f"run directory {run_dir} has no completed checkpoint yet "
                                  f"({CHECKPOINTS_DIR}/{LATEST_FILE} does not exist)")
        return ckpt
    raise CheckpointError(
        f"{path} is neither a run directory (containing {CHECKPOINTS_DIR}/{LATEST_FILE}) "
        f"nor a checkpoint directory (containing {CHECKSUMS_FILE})")


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _discard(root: Path, entry: Path) -> None:
    """Delete a step dir by first renaming it to a temp name, so a crash mid-delete never leaves
    a half-deleted directory that looks like a checkpoint."""
    trash = root / f"{TMP_PREFIX}discard-{entry.name}-{secrets.token_hex(6)}"
    os.rename(entry, trash)
    _remove_path(trash)


def move_aside(path: Path) -> None:
    """Rename a step dir that is about to be replaced out of the way (a rename is atomic), so no
    step dir is ever half-deleted; the next cleanup deletes it."""
    os.rename(path, path.parent / f"{TMP_PREFIX}replaced-{path.name}-{secrets.token_hex(6)}")


def cleanup(root: Path, current: str, keep: int) -> None:
    """Remove stale temp dirs, incomplete step dirs, and complete ones older than LATEST beyond
    ``keep`` in total. Step dirs newer than LATEST are left alone: they are replaced if the run
    reaches their step again, and may be deliberate (a run resumed from an earlier checkpoint)."""
    latest_step = int(STEP_DIR_RE.fullmatch(current).group(1))
    older: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        try:
            if entry.name.startswith(TMP_PREFIX):
                _remove_path(entry)
                continue
            match = STEP_DIR_RE.fullmatch(entry.name)
            if match is None or entry.name == current or not entry.is_dir():
                continue
            if not (entry / CHECKSUMS_FILE).is_file():
                _discard(root, entry)  # our saves never produce this: a leftover, unloadable
            elif int(match.group(1)) < latest_step:
                older.append((int(match.group(1)), entry))
        except OSError as exc:
            # The new checkpoint is already committed; a failed cleanup must not fail the save.
            warnings.warn(f"could not remove {entry}: {exc}", stacklevel=3)
    older.sort(reverse=True)
    for _, entry in older[keep - 1:]:
        try:
            _discard(root, entry)
        except OSError as exc:
            warnings.warn(f"could not remove old checkpoint {entry}: {exc}", stacklevel=3)
