"""Write model directories in the format of OpenAI's circuit_sparsity release, for the tests.

The package only reads that format (sparse_gpt/openai_format.py). The tests need directories to
read, and cannot download a released model, so this writes them: ``beeg_config.json`` and
``final_model.pt`` for one of our models, and the GPT-2 "data gym" tokenizer pair ``vocab.bpe`` +
``encoder.json`` for a byte-level BPE trained with the ids in that layout.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from sparse_gpt.config import ModelConfig
from sparse_gpt.model import GPT
from sparse_gpt.openai_format import (
    _LOCTYPES_BACK,
    _THEIR_DEFAULTS,
    _WPE,
    _WTE,
    CONFIG_FILE,
    ENCODER_JSON_FILE,
    EOT,
    OPENAI_EOT_ID,
    TOKENIZER_FILES,
    VOCAB_BPE_FILE,
    WEIGHTS_FILE,
    OpenAIFormatError,
    PathLike,
    _check_topk_sizes,
    _pre_tokenizer,
    _their_name,
)


def config_to_openai(cfg: ModelConfig) -> dict[str, Any]:
    """Our ModelConfig as a `beeg_config.json` dict that OpenAI's loader accepts.

    Besides GPTConfig's fields it carries `bigram_table_rank` (null), which their loader pops
    unconditionally, and nothing else extra, since their GPTConfig rejects unknown keys.
    """
    cfg.validate()
    _check_topk_sizes(cfg)
    loctypes = (",".join(_LOCTYPES_BACK[loc] for loc in cfg.afrac_locations)
                if cfg.afrac is not None else _THEIR_DEFAULTS["afrac_loctypes"])
    return {
        "block_size": cfg.block_size, "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "d_head": cfg.d_head, "d_model": cfg.d_model, "dropout": 0.0,
        "bias": cfg.bias, "ln_bias": cfg.bias, "rms_norm": cfg.norm == "rms",
        "residual_activation_type": "identity", "activation_type": cfg.activation,
        "afrac": cfg.afrac, "afrac_loctypes": loctypes, "debug_nans": False,
        "tied_unembed": False, "tokenizer_name": "tinypython_2k", "grad_checkpointing": False,
        "d_mlp": cfg.d_mlp, "enable_bigram_table": cfg.bigram_table,
        # Ours is a trained parameter, as theirs is when this is true.
        "learnable_bigram_table": cfg.bigram_table,
        "d_pos_emb": None, "dropout_cat_pos_emb": False, "sinusoidal_cat_pos_emb": False,
        "enable_sparse_kernels": False, "flash": True, "sink": cfg.attn_sink,
        "bigram_table_rank": None,
    }


def train_data_gym_tokenizer(texts: Iterable[str], vocab_size: int = OPENAI_EOT_ID + 1) -> Tokenizer:
    """Train a byte-level BPE whose ids follow the data-gym layout, so it can be written as
    `vocab.bpe` + `encoder.json`: 256 bytes in GPT-2 order, one token per merge in merge order,
    then `<|endoftext|>` (id vocab_size - 1 when the texts allow that many merges)."""
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    # No special tokens during training: they would take ids before the bytes. The trainer
    # sorts the alphabet by code point, which is exactly GPT-2's byte order.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    tok.encode_special_tokens = True
    return tok


def _vocab_and_merges(tok: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    if model.get("type") != "BPE":
        raise OpenAIFormatError(f"only a BPE tokenizer can be written as {VOCAB_BPE_FILE}, "
                                f"got {model.get('type')}")
    vocab = dict(model["vocab"])
    for added in tok.get_added_tokens_decoder().values():
        vocab.setdefault(added.content, tok.token_to_id(added.content))
    # tokenizers >= 0.20 stores merges as pairs, older versions as "a b" strings.
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return vocab, merges


def _data_gym_encoder(vocab: Mapping[str, int], merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """The encoder.json mapping, after checking that tiktoken's reading of the pair (bytes get ids
    0-255 in GPT-2 order, merge n makes id 256 + n) gives the same ids as `vocab`."""
    encoder: dict[str, int] = {}
    for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        if vocab.get(ch) != i:
            raise OpenAIFormatError(f"byte symbol {ch!r} has id {vocab.get(ch)}; the data-gym "
                                    f"format needs {i} (the 256 bytes first, in GPT-2 order)")
        encoder[ch] = i
    for n, (a, b) in enumerate(merges):
        if a not in encoder or b not in encoder:
            raise OpenAIFormatError(f"merge {n} ({a!r}, {b!r}) uses a token no earlier merge made")
        if vocab.get(a + b) != 256 + n or (a + b) in encoder:
            raise OpenAIFormatError(f"merge {n} ({a!r}, {b!r}) makes {a + b!r} with id "
                                    f"{vocab.get(a + b)}; the data-gym format needs a new token "
                                    f"with id {256 + n}")
        encoder[a + b] = 256 + n
    eot_id = 256 + len(merges)
    if vocab.get(EOT, eot_id) != eot_id:
        raise OpenAIFormatError(f"{EOT} has id {vocab[EOT]}; the data-gym format puts it right "
                                f"after the merges, at {eot_id}")
    encoder[EOT] = eot_id
    others = sorted(set(vocab) - set(encoder))
    if others:
        raise OpenAIFormatError(f"tokens {others[:5]} are neither bytes, merges nor {EOT}")
    return encoder


def write_openai_tokenizer_files(
        tokenizer_or_merges: Tokenizer | tuple[Mapping[str, int], Sequence[tuple[str, str]]],
        out_dir: PathLike) -> None:
    """Write `vocab.bpe` (with its `#version: 0.2` header) and `encoder.json` for a byte-level
    BPE tokenizer, or for a (vocab, merges) pair, whose ids follow the data-gym layout (see
    `train_data_gym_tokenizer`); raise OpenAIFormatError naming the first token that breaks it."""
    if isinstance(tokenizer_or_merges, Tokenizer):
        vocab, merges = _vocab_and_merges(tokenizer_or_merges)
    else:
        vocab, merges = tokenizer_or_merges
    encoder = _data_gym_encoder(vocab, merges)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # tiktoken drops the first and the last line, so the trailing newline is required.
    (out / VOCAB_BPE_FILE).write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                      encoding="utf-8")
    (out / ENCODER_JSON_FILE).write_text(json.dumps(encoder), encoding="utf-8")


def save_openai_model(model: GPT, tokenizer_files_from: Mapping[str, PathLike] | PathLike | None,
                      out_dir: PathLike) -> Path:
    """Write `model` as an OpenAI model directory (`beeg_config.json` + `final_model.pt`).

    `tokenizer_files_from` is a directory holding `vocab.bpe` and `encoder.json`, or a mapping from
    those names to source files, copied alongside; None writes no tokenizer. Returns out_dir.
    """
    cfg = model.config
    raw = config_to_openai(cfg)
    sd = {_their_name(k): v.detach().to("cpu").contiguous().clone()
          for k, v in model.state_dict().items()}
    if _WPE not in sd:
        # Their model always adds wpe and loads non-strictly: without zeros it would keep a random one.
        sd[_WPE] = torch.zeros(cfg.block_size, cfg.d_model, dtype=sd[_WTE].dtype)
    sources: dict[str, Path] = {}
    if isinstance(tokenizer_files_from, Mapping):
        unknown = sorted(set(tokenizer_files_from) - set(TOKENIZER_FILES))
        if unknown:
            raise OpenAIFormatError(f"tokenizer_files_from names {unknown}; expected "
                                    f"{' and '.join(TOKENIZER_FILES)}")
        sources = {name: Path(src) for name, src in tokenizer_files_from.items()}
    elif tokenizer_files_from is not None:
        sources = {name: Path(tokenizer_files_from) / name for name in TOKENIZER_FILES}
    for name, src in sources.items():
        if not src.is_file():
            raise OpenAIFormatError(f"tokenizer file {name} not found at {src}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    torch.save(sd, out / WEIGHTS_FILE)
    for name, src in sources.items():
        shutil.copyfile(src, out / name)
    return out



def to_data_gym_layout(model: GPT, tok: Tokenizer) -> tuple[GPT, tuple[dict[str, int], list[tuple[str, str]]]]:
    """One of our trained models and its tokenizer with the token ids moved to the data-gym layout.

    Our tokenizers put `<|endoftext|>` at id 0, then the 256 bytes, then one token per merge; the
    data-gym layout has the bytes first and `<|endoftext|>` last. So every id moves down by one and
    id 0 moves to the end: the rows of the embedding, the unembedding and the final logit bias are
    permuted alike, and the model computes the same function of the text. Returns a new model and
    the (vocab, merges) pair for write_openai_tokenizer_files, which checks the layout."""
    vocab, merges = _vocab_and_merges(tok)
    n = len(vocab)
    old_of_new = torch.tensor(list(range(1, n)) + [0])  # new id i holds old id old_of_new[i]
    new_of_old = torch.empty_like(old_of_new)
    new_of_old[old_of_new] = torch.arange(n)
    moved = GPT(model.config)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for key in (_WTE, "lm_head.weight", "final_logits_bias"):
        sd[key] = sd[key][old_of_new]
    if "bigram_table" in sd:
        sd["bigram_table"] = sd["bigram_table"][old_of_new][:, old_of_new]
    moved.load_state_dict(sd)
    new_vocab = {token: int(new_of_old[i]) for token, i in vocab.items()}
    return moved.eval(), (new_vocab, merges)


def save_run_as_openai(run_or_checkpoint: PathLike, out_dir: PathLike) -> Path:
    """Write one of our trained checkpoints as an OpenAI model directory with its own BPE (which
    merges quotes with brackets when it was trained with isolate_brackets false)."""
    from sparse_gpt import load_model

    model, tok = load_model(run_or_checkpoint)
    moved, vocab_and_merges = to_data_gym_layout(model, tok)
    out = Path(out_dir)
    write_openai_tokenizer_files(vocab_and_merges, out / "tinypython")
    return save_openai_model(moved, out / "tinypython", out / "model")
