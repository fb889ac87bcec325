"""sparse_gpt: train weight-sparse GPTs and extract the circuits they use."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load_model(path: str | Path, device: str = "cpu"):
    """Load a trained model and its tokenizer from a run or checkpoint directory.

    Returns (model, tokenizer): a `sparse_gpt.model.GPT` in eval mode and a HF `tokenizers.Tokenizer`.
    """
    import yaml

    from .checkpoint import load_checkpoint
    from .config import config_from_dict
    from .model import GPT
    from .tokenizer import load_tokenizer

    ck = load_checkpoint(Path(path), map_location=device, with_train_state=False)
    cfg = config_from_dict(yaml.safe_load(ck.config_yaml))
    model = GPT(cfg.model)
    model.load_state_dict(ck.state_dict)
    return model.to(device).eval(), load_tokenizer(ck.tokenizer_path)
