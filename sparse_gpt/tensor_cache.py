"""Tensors computed from a checkpoint once and cached beside it (node means, activation contexts).

A cache file is a safetensors file whose metadata holds a key (the weights' fingerprint plus the
settings that produced it); a file with another key, or one that cannot be read, is recomputed and
never trusted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .fileio import TMP_PREFIX


def load_or_compute(path: str | Path, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                    log=print, what: str = "tensors") -> dict[str, torch.Tensor]:
    """`compute()`'s tensors, read from `path` when its key matches, else computed and written there."""
    path = Path(path)
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return load_file(str(path))
        except Exception:  # a damaged cache is recomputed, never trusted
            pass
    log(f"computing {what} (cached in {path})")
    tensors = compute()
    tmp = path.with_name(TMP_PREFIX + path.name)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": key})
        tmp.replace(path)
    except OSError as e:  # a read-only checkpoint directory only costs the recomputation
        log(f"could not cache {what} in {path}: {e}")
    return tensors
