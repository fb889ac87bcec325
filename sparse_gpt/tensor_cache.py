"""Tensors computed from a checkpoint once and cached beside it (node means, activation contexts).

A cache file is a safetensors file whose metadata holds a key (the weights' fingerprint plus the
settings that produced it) and the sha256 of its tensors. Opening it compares both and lets the
caller check the tensors' shapes against the model; a file that fails any check, or cannot be read,
is recomputed with a one-line note, never trusted.

A checkpoint directory that cannot be written (read-only media, someone else's files) is no
reason to fail: the cache then goes to the user's cache directory ($XDG_CACHE_HOME/sparse_gpt, by
default ~/.cache/sparse_gpt), under a name derived from the checkpoint's path and the key, so two
checkpoints never share a file.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from .fileio import atomic_write_bytes

# Returns what is wrong with cached tensors (e.g. a shape that does not fit the model), or None.
Check = Callable[[dict[str, torch.Tensor]], "str | None"]


def user_cache_dir() -> Path:
    """Where caches go that cannot be written beside their checkpoint."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sparse_gpt" / "checkpoint-caches"


def fallback_path(path: str | Path, key: str) -> Path:
    """The user-cache twin of `path`: named by the checkpoint's absolute path and the key."""
    path = Path(path)
    tag = hashlib.sha256(f"{path.resolve()}\n{key}".encode()).hexdigest()[:20]
    return user_cache_dir() / f"{tag}-{path.name}"


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read(path: Path, key: str, check: Check | None) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """(tensors, None) if `path` holds a cache that passes every check, else (None, what is wrong);
    (None, None) when there is no file."""
    if not path.is_file():
        return None, None
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != key:
            return None, "was made for other weights or settings"
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - whatever a damaged file raises, it is recomputed
        return None, f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if "sha256" not in meta:
        return None, "records no checksum (an older version wrote it)"
    if meta["sha256"] != tensors_sha256(tensors):
        return None, "does not match the checksum recorded in it (rewritten or damaged)"
    problem = check(tensors) if check is not None else None
    if problem:
        return None, problem
    return tensors, None


def load_or_compute(path: str | Path, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                    log=print, what: str = "tensors", check: Check | None = None) -> dict[str, torch.Tensor]:
    """`compute()`'s tensors, read from `path` (or its user-cache twin) when it passes every check,
    else computed and written there. `check` vets cached tensors against the model."""
    path = Path(path)
    spare = fallback_path(path, key)
    tensors, problem = _read(path, key, check)
    if tensors is not None:
        return tensors
    tensors, _ = _read(spare, key, check)
    if tensors is not None:
        return tensors
    log(f"note: {path} {problem}; recomputing {what}" if problem else f"computing {what} (cached in {path})")
    tensors = {k: v.contiguous() for k, v in compute().items()}
    data = save(tensors, metadata={"key": key, "sha256": tensors_sha256(tensors)})
    try:
        atomic_write_bytes(path, data)
        return tensors
    except OSError as e:
        first_error = e
    try:
        spare.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(spare, data)
        log(f"could not write {path} ({first_error.strerror or first_error}); cached in {spare} instead")
    except OSError as e:  # nothing is lost: the tensors are computed, only the next call pays again
        log(f"could not write {path} ({first_error.strerror or first_error}) or {spare} "
            f"({e.strerror or e}); the {what} are not cached")
    return tensors
