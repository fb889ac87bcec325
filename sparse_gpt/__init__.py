"""sparse_gpt: train weight-sparse GPTs and extract the circuits they use."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load_model(path: str | Path, device: str = "cpu"):
    """Load a trained model and its tokenizer from a run or checkpoint directory (or OpenAI's format).

    Returns (model, tokenizer): a `sparse_gpt.model.GPT` in eval mode and a HF `tokenizers.Tokenizer`.
    """
    import yaml

    from .checkpoint import load_checkpoint
    from .config import config_from_dict
    from .model import GPT
    from .openai_format import is_openai_dir, load_openai_model
    from .tokenizer import load_tokenizer

    if is_openai_dir(path):
        return load_openai_model(path, device)[:2]
    ck = load_checkpoint(Path(path), map_location=device, with_train_state=False)
    cfg = config_from_dict(yaml.safe_load(ck.config_yaml))
    model = GPT(cfg.model)
    model.load_state_dict(ck.state_dict)
    return model.to(device).eval(), load_tokenizer(ck.tokenizer_path)
