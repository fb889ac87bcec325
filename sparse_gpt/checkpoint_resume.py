"""What a run needs besides its weights to resume exactly: optimiser state, step and RNG states.

The train state is a nest of dicts, lists and tuples holding only tensors and plain values
(str, int, float, bool, None), serialised with ``torch.save`` as ``train_state.pt`` and read back
with ``weights_only=True``. Checkpoints travel between people, and a checksum does not make a file
trustworthy (whoever crafts the file rewrites ``checksums.json`` too), so loading must never run
code: the restricted unpickler builds tensors and plain containers and refuses anything else.
"""
from __future__ import annotations

import io
import random
import re

import numpy as np
import torch

from .checkpoint_layout import CheckpointError

_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def capture_rng_state() -> dict:
    """Every global RNG state a training step could consume, as tensors and plain values."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, where: str = "the train state") -> None:
    try:
        n = state["numpy"]
        numpy_state = (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                       n["cached_gaussian"])
        random.setstate(state["python"])
        np.random.set_state(numpy_state)
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"{where} has malformed RNG states ({type(e).__name__}: {e})") from e
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_plain(obj, path: str = "train_state") -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{path} has a key of type {type(key).__name__}")
            _check_plain(value, f"{path}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _check_plain(value, f"{path}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise CheckpointError(f"{path} is a {type(obj).__name__}; a train state holds only tensors, "
                              "plain values and dicts, lists and tuples of them")


def _what_was_refused(error: Exception) -> str:
    """The object the restricted unpickler refused, from its (long, advisory) error text."""
    text = " ".join(str(error).split())
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return found.group(1)
    found = re.search(r"Unsupported operand (\d+)", text)
    return f"pickle opcode {found.group(1)}" if found else text[:200]


def encode_train_state(state: dict) -> bytes:
    # Checked on the way in, so that what is saved can always be loaded back without pickle.
    _check_plain(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def decode_train_state(data: bytes, where: str = "train_state.pt") -> dict:
    """The train state in `data`, tensors on CPU (RNG setters need CPU tensors, and optimisers move
    their state to the parameters' device themselves). Never executes code from the file."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors share no base class
        raise CheckpointError(f"{where} was refused: it holds something other than tensors and plain "
                              f"data ({_what_was_refused(e)}), and loading that could run code; the "
                              f"checkpoint's weights still load, but no run can resume from it") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} holds a {type(state).__name__}, not a train state")
    return state
