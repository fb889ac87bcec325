"""Load a trained model for analysis: one of our checkpoints or a directory of OpenAI's release."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from .config import ConfigError, DataConfig, config_from_dict, parse_config_yaml
from .fileio import sha256_file
from .model import GPT
from .openai_format import is_openai_dir, load_openai_model
from .tokenizer import load_tokenizer


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: object
    path: Path            # the checkpoint directory
    fingerprint: str      # sha256 of the weights file: ties a circuit to these exact weights
    data: DataConfig      # where validation text (means, natural examples) comes from
    kind: str             # "sparse_gpt" | "openai"


def load_any(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Load one of our checkpoints (run or checkpoint dir) or a directory of OpenAI's release."""
    path = Path(path)
    if is_openai_dir(path):
        model, tok, unknown = load_openai_model(path, device=device)
        if unknown:
            print(f"note: {path}/beeg_config.json keys not used by this loader: {', '.join(unknown)}")
        return LoadedModel(model.eval(), tok, path, sha256_file(path / "final_model.pt"), DataConfig(), "openai")
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    ck = load_checkpoint(resolve_checkpoint(path), map_location=device, with_train_state=False)
    try:
        cfg = config_from_dict(parse_config_yaml(ck.config_yaml, f"{ck.path}/config.yaml"))
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {ck.path} holds a config.yaml that is not a valid config: {e}") from e
    model = GPT(cfg.model)
    model.load_state_dict(ck.state_dict)
    checksums = json.loads((ck.path / "checksums.json").read_text())
    fingerprint = checksums["files"]["model.safetensors"]["sha256"]
    return LoadedModel(model.to(device).eval(), load_tokenizer(ck.tokenizer_path), ck.path, fingerprint, cfg.data,
                       "sparse_gpt")

