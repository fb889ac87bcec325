"""Each node's mean activation over pretraining (validation) text: what a pruned node carries.

Computed once per checkpoint and cached beside it (node_means.safetensors), keyed by the
checkpoint's weight fingerprint so a stale cache is never used.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import DataConfig
from ..corpus import collect_corpus
from ..tensor_cache import load_or_compute
from ..tokenizer import eot_id
from .nodes import NodeLayout

MEANS_FILE = "node_means.safetensors"


def validation_texts(data_cfg: DataConfig, max_bytes: int) -> list[str]:
    """Held-out documents of the pretraining corpus, in sorted order, up to about max_bytes."""
    corpus = collect_corpus(data_cfg)
    texts, size = [], 0
    for doc in corpus.split("val"):
        texts.append(corpus.read(doc))
        size += len(texts[-1])
        if size >= max_bytes:
            break
    return texts


def validation_windows(tokenizer, data_cfg: DataConfig, block_size: int, n_tokens: int) -> torch.Tensor:
    """(B, block_size) windows of validation text, documents joined by end-of-text."""
    ids: list[int] = []
    eot = eot_id(tokenizer)
    # ~3 bytes per token on Python source; read a margin more than needed
    for text in validation_texts(data_cfg, max_bytes=6 * n_tokens):
        ids.extend(tokenizer.encode(text).ids)
        ids.append(eot)
        if len(ids) >= n_tokens:
            break
    n = (min(len(ids), n_tokens) // block_size) * block_size
    if n == 0:
        raise ValueError(f"the validation split of {data_cfg.source} has fewer than {block_size} tokens")
    return torch.tensor(ids[:n]).view(-1, block_size)


@torch.no_grad()
def compute_node_means(model, layout: NodeLayout, windows: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """(N,) mean of every node's activation over all positions of `windows`."""
    device = next(model.parameters()).device
    sums = torch.zeros(layout.n_nodes, dtype=torch.float64)
    count = 0
    names = [loc.name for loc in layout.locations]
    for start in range(0, len(windows), batch):
        x = windows[start:start + batch].to(device)
        with model.hooks(record=names) as cache:
            model(x)
        sums += torch.cat([cache[n].double().sum((0, 1)).cpu() for n in names])
        count += x.numel()
    return (sums / count).float()


def load_or_compute_means(model, layout: NodeLayout, tokenizer, cache_dir: Path, fingerprint: str,
                          data_cfg: DataConfig, n_tokens: int = 65536, log=print) -> torch.Tensor:
    """Node means from cache_dir/node_means.safetensors if it matches `fingerprint`, else computed
    on `n_tokens` of validation text and written there."""
    key = json.dumps({"fingerprint": fingerprint, "n_tokens": n_tokens, "source": data_cfg.source,
                      "path": data_cfg.path, "n_nodes": layout.n_nodes}, sort_keys=True)

    def compute():
        windows = validation_windows(tokenizer, data_cfg, model.config.block_size, n_tokens)
        return {"means": compute_node_means(model, layout, windows)}
    return load_or_compute(Path(cache_dir) / MEANS_FILE, key, compute, log,
                           f"node means over {n_tokens:,} validation tokens")["means"]
