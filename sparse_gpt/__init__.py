"""sparse_gpt: train weight-sparse GPTs and extract the circuits they use."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load_model(path: str | Path, device: str = "cpu"):
    """Load a trained model and its tokenizer from a run or checkpoint directory, or a directory of
    OpenAI's released models. Returns (model, tokenizer): a `sparse_gpt.model.GPT` in eval mode and
    a HF `tokenizers.Tokenizer`."""
    from .loading import load_any

    loaded = load_any(path, device)
    return loaded.model, loaded.tokenizer
