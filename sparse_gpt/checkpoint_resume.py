"""What a run needs besides its weights to resume exactly: optimiser state, step and RNG states.

The train state is a nest of dicts, lists and tuples holding tensors and plain values, serialised
with ``torch.save`` as ``train_state.pt``.
"""
from __future__ import annotations

import io
import random

import numpy as np
import torch


def capture_rng_state() -> dict:
    """Every global RNG state a training step could consume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def encode_train_state(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def decode_train_state(data: bytes) -> dict:
    """Tensors are mapped to CPU: RNG-state setters require CPU tensors, and optimisers move their
    state to the parameters' device in ``load_state_dict``."""
    # weights_only=False because the train state holds arbitrary Python objects (numpy and Python
    # RNG states, data-loader positions) that the restricted unpickler rejects. Unpickling can run
    # code, so we only do it on bytes whose sha256 matched checksums.json: that guards against
    # torn or corrupted files, not against a malicious checkpoint, so load only trusted runs.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
