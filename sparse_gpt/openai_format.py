"""Read model directories in the format of OpenAI's circuit_sparsity release.

A directory holds ``beeg_config.json`` (their ``GPTConfig`` fields), ``final_model.pt`` (a torch
state dict) and, for the tokenizer, the GPT-2 "data gym" pair ``vocab.bpe`` + ``encoder.json``
(in their layout these sit in a separate ``tinypython`` directory). Our model was built with their state-dict names, so the weights
map one to one except for the sink logit, the causal-mask buffers of their non-flash attention and
the positional embedding their model always has (released models keep it at zero).

Loading is strict wherever a difference would change the computation: a config field our model
cannot express, a missing, extra or misshapen tensor, or tied embeddings that are not equal raise
`OpenAIFormatError` naming the field or tensor. Config keys that neither their loader nor ours knows
are tolerated and returned, so callers can report them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from .config import ACT_SPARSITY_LOCATIONS, ConfigError, ModelConfig
from .model import GPT

__all__ = [
    "OpenAIFormatError", "is_openai_dir", "config_from_openai", "openai_state_dict_to_ours",
    "load_openai_state_dict", "load_openai_tokenizer", "load_openai_model",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "beeg_config.json"
WEIGHTS_FILE = "final_model.pt"
VOCAB_BPE_FILE = "vocab.bpe"
ENCODER_JSON_FILE = "encoder.json"
TOKENIZER_FILES = (VOCAB_BPE_FILE, ENCODER_JSON_FILE)
EOT = "<|endoftext|>"
# tinypython_2k registers the end-of-text token at this id whatever encoder.json says.
OPENAI_EOT_ID = 2047
# Same pattern as sparse_gpt.tokenizer.TINYPYTHON_PATTERN; repeated so this file states the format.
SPLIT_PATTERN = r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# GPTConfig defaults: what their loader uses for a field the JSON leaves out.
_THEIR_DEFAULTS: dict[str, Any] = {
    "block_size": 1024, "vocab_size": 50304, "n_layer": 12, "n_head": 12, "d_head": None,
    "d_model": 768, "dropout": 0.0, "bias": True, "ln_bias": True, "rms_norm": False,
    "residual_activation_type": "identity", "activation_type": "gelu", "afrac": None,
    "afrac_loctypes": "attn_in,attn_out,mlp_in,mlp_out", "debug_nans": False, "tied_unembed": True,
    "tokenizer_name": "tinypython_2k", "grad_checkpointing": True, "d_mlp": None,
    "enable_bigram_table": False, "learnable_bigram_table": False, "d_pos_emb": None,
    "dropout_cat_pos_emb": False, "sinusoidal_cat_pos_emb": False, "enable_sparse_kernels": False,
    "flash": True, "sink": False,
}
# Keys we read although GPTConfig lacks them: old spellings and what their loader pops itself.
_EXTRA_UNDERSTOOD = ("n_mlp", "use_tied_aux_matrix")
# Their activation-sparsity location names -> ours.
_LOCTYPES = {
    "attn_in": "attn_in", "attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_out": "attn_out",
    "mlp_in": "mlp_in", "mlp_neuron": "mlp_neuron", "mlp_out": "mlp_out",
}
_LOCTYPES_BACK = {ours: theirs for theirs, ours in _LOCTYPES.items()}
# Sparsity on the residual stream itself: no place for it in our blocks.
_RESIDUAL_LOCTYPES = ("resid_post_attn", "resid_post_mlp")

_SINK_THEIRS = ".attn.attn_imp.sink_logit"
_SINK_OURS = ".attn.sink_logit"
_WPE = "transformer.wpe.weight"
_WTE = "transformer.wte.weight"
_LM_HEAD = "lm_head.weight"
# Causal-mask buffer their attention registers when flash is off (not to be confused with the
# c_attn / c_proj biases, which have longer names).
_MASK_BUFFER_RE = re.compile(r"transformer\.h\.\d+\.attn\.bias")

PathLike = Union[str, os.PathLike]


class OpenAIFormatError(ValueError):
    """An OpenAI-format model directory (or a model to write as one) that cannot be used as given."""


def is_openai_dir(path: PathLike) -> bool:
    """Whether `path` is a directory with OpenAI's config and weights files."""
    p = Path(path)
    return (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


# ---------------------------------------------------------------------------------------------
# Config


def _field(raw: Mapping[str, Any], key: str, kind: str) -> Any:
    """raw[key] (or GPTConfig's default) checked to be of `kind`: int, float, bool, str, with an
    "?" suffix allowing null."""
    value = raw.get(key, _THEIR_DEFAULTS.get(key))
    nullable = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None and nullable:
        return None
    ok, wanted = {
        "int": (isinstance(value, int) and not isinstance(value, bool), "an integer"),
        "float": (isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
        "bool": (isinstance(value, bool), "true or false"),
        "str": (isinstance(value, str), "a string"),
    }[kind]
    if not ok:
        raise OpenAIFormatError(f"{CONFIG_FILE}: {key} must be {'null or ' if nullable else ''}"
                                f"{wanted}, got {value!r}")
    return float(value) if kind == "float" else value


def _unsupported(key: str, value: Any, why: str) -> OpenAIFormatError:
    return OpenAIFormatError(f"{CONFIG_FILE}: {key}={value!r} is not supported: {why}")


def _afrac_locations(raw: Mapping[str, Any]) -> list[str]:
    text = _field(raw, "afrac_loctypes", "str")
    # Their model asks `name in afrac_loctypes.split(",")` for each location, entries unstripped:
    # " mlp_neuron" (with its space) names no location there, so it names none here either.
    names = text.split(",")
    for name in names:
        if name in _RESIDUAL_LOCTYPES:
            raise _unsupported("afrac_loctypes", text, f"AbsTopK on the residual stream ({name}) "
                               "has no place in our model")
    # An empty entry (from "" or a trailing comma) matches no location there either.
    unknown = [n for n in names if n and n not in _LOCTYPES]
    if unknown:
        spaced = [n for n in unknown if n.strip() in _LOCTYPES or n.strip() in _RESIDUAL_LOCTYPES]
        why = (f"; {spaced} would name a location without the spaces, which their code does not "
               f"strip" if spaced else "")
        warnings.warn(f"{CONFIG_FILE}: afrac_loctypes names {unknown}, which no model uses; "
                      f"ignored{why}", stacklevel=3)
    wanted = {_LOCTYPES[n] for n in names if n in _LOCTYPES}
    return [loc for loc in ACT_SPARSITY_LOCATIONS if loc in wanted]


def _location_widths(cfg: ModelConfig) -> dict[str, int]:
    qkv = cfg.n_head * cfg.d_head
    return {"attn_in": cfg.d_model, "q": qkv, "k": qkv, "v": qkv, "attn_out": cfg.d_model,
            "mlp_in": cfg.d_model, "mlp_neuron": cfg.mlp_width, "mlp_out": cfg.d_model}


def _check_topk_sizes(cfg: ModelConfig) -> None:
    # They keep int(afrac * width) entries, we keep max(1, that): they agree unless it is 0.
    if cfg.afrac is None:
        return
    widths = _location_widths(cfg)
    for loc in cfg.afrac_locations:
        if int(cfg.afrac * widths[loc]) < 1:
            raise _unsupported("afrac", cfg.afrac, f"it keeps 0 of the {widths[loc]} entries at "
                               f"{_LOCTYPES_BACK[loc]}, which zeroes that activation")


def _attention_width(raw: Mapping[str, Any], d_model_key: str) -> tuple[int, int]:
    """(d_model, d_head), refusing heads whose total width is not d_model."""
    d_model = _field(raw, d_model_key, "int")
    n_head = _field(raw, "n_head", "int")
    d_head = _field(raw, "d_head", "int?")
    if n_head <= 0 or d_model % n_head:
        raise OpenAIFormatError(f"{CONFIG_FILE}: d_model={d_model} must be a positive multiple of "
                                f"n_head={n_head}")
    if d_head is None:
        d_head = d_model // n_head
    if n_head * d_head != d_model:
        # Our attention derives n_head from d_model // d_head, so its width is always d_model.
        raise _unsupported("d_head", d_head, f"n_head * d_head = {n_head * d_head} differs from "
                           f"d_model = {d_model}; our attention is always d_model wide")
    return d_model, d_head


def _norm_and_activation(raw: Mapping[str, Any]) -> tuple[bool, str, str]:
    """(bias, norm, activation), refusing residual-stream functions and odd LayerNorm biases."""
    residual_act = _field(raw, "residual_activation_type", "str")
    if residual_act != "identity":
        raise _unsupported("residual_activation_type", residual_act,
                           "only 'identity' (no function applied to the residual stream)")
    activation = _field(raw, "activation_type", "str")
    if activation not in ("gelu", "relu"):
        raise _unsupported("activation_type", activation, "expected 'gelu' or 'relu'")
    bias, rms_norm = _field(raw, "bias", "bool"), _field(raw, "rms_norm", "bool")
    ln_bias = _field(raw, "ln_bias", "bool")
    if not rms_norm and ln_bias != bias:
        raise _unsupported("ln_bias", ln_bias, f"our LayerNorms have a bias exactly when the "
                           f"Linears do (bias={bias})")
    return bias, "rms" if rms_norm else "layer", activation


def _check_inert_fields(raw: Mapping[str, Any]) -> None:
    """Type-check the fields that do not change inference, and refuse those we cannot run."""
    d_pos_emb = _field(raw, "d_pos_emb", "int?")
    if d_pos_emb is not None:
        raise _unsupported("d_pos_emb", d_pos_emb, "positional embeddings concatenated to every "
                           "layer's input are not implemented")
    # dropout_cat_pos_emb and sinusoidal_cat_pos_emb only act when d_pos_emb is set: inert here.
    for key in ("dropout_cat_pos_emb", "sinusoidal_cat_pos_emb", "tied_unembed", "debug_nans",
                "grad_checkpointing", "flash", "enable_sparse_kernels", "learnable_bigram_table"):
        _field(raw, key, "bool")
    _field(raw, "dropout", "float")  # inference runs in eval mode, where dropout is the identity
    if raw.get("use_tied_aux_matrix"):
        raise _unsupported("use_tied_aux_matrix", raw["use_tied_aux_matrix"],
                           "OpenAI's own loader refuses it too")


def config_from_openai(raw: Mapping[str, Any]) -> tuple[ModelConfig, list[str]]:
    """Translate a `beeg_config.json` dict into our ModelConfig.

    Returns (config, ignored_keys): the keys neither their GPTConfig nor we know (e.g. pfrac,
    bigram_table_rank), in file order. Fields that would change the computation in a way our model
    cannot reproduce raise OpenAIFormatError naming the field. The positional embedding comes out
    as "learned", because their model always adds one; `load_openai_model` turns it off when the
    checkpoint's is all zeros.
    """
    if not isinstance(raw, Mapping):
        raise OpenAIFormatError(f"{CONFIG_FILE} must hold a JSON object, got {type(raw).__name__}")
    # n_embd is the pre-rename spelling of d_model: read only when d_model is absent.
    d_model_key = "n_embd" if "d_model" not in raw and "n_embd" in raw else "d_model"
    understood = set(_THEIR_DEFAULTS) | set(_EXTRA_UNDERSTOOD) | {d_model_key}
    ignored = [k for k in raw if k not in understood]

    d_model, d_head = _attention_width(raw, d_model_key)
    # Their loader lets an old n_mlp override d_mlp.
    d_mlp = _field(raw, "n_mlp", "int?") if "n_mlp" in raw else _field(raw, "d_mlp", "int?")
    bias, norm, activation = _norm_and_activation(raw)
    _check_inert_fields(raw)
    afrac = _field(raw, "afrac", "float?")
    cfg = ModelConfig(
        vocab_size=_field(raw, "vocab_size", "int"),
        block_size=_field(raw, "block_size", "int"),
        n_layer=_field(raw, "n_layer", "int"),
        d_model=d_model,
        d_head=d_head,
        d_mlp=d_mlp,
        bias=bias,
        norm=norm,
        activation=activation,
        pos_emb="learned",
        attn_sink=_field(raw, "sink", "bool"),
        bigram_table=_field(raw, "enable_bigram_table", "bool"),
        afrac=afrac,
        afrac_locations=(_afrac_locations(raw) if afrac is not None
                         else list(ACT_SPARSITY_LOCATIONS)),
    )
    try:
        cfg.validate()
    except ConfigError as e:
        raise OpenAIFormatError(f"{CONFIG_FILE} gives a model we cannot build: {e}") from e
    _check_topk_sizes(cfg)
    return cfg, ignored


# ---------------------------------------------------------------------------------------------
# Weights


def _their_name(ours: str) -> str:
    return ours.replace(_SINK_OURS, _SINK_THEIRS)


def _our_name(theirs: str) -> str:
    return theirs.replace(_SINK_THEIRS, _SINK_OURS)


def _expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no init cost for a 475M model
        model = GPT(cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def _is_causal_mask(t: torch.Tensor) -> bool:
    if t.dim() != 4 or t.shape[0] != 1 or t.shape[1] != 1 or t.shape[2] != t.shape[3]:
        return False
    return torch.equal(t.float(), torch.ones(t.shape, dtype=torch.float32).tril())


def openai_state_dict_to_ours(sd: Mapping[str, torch.Tensor], cfg: ModelConfig, *,
                              tied_unembed: bool = False) -> dict[str, torch.Tensor]:
    """Rename and check a state dict with OpenAI's names for `GPT(cfg)` (float32, dense, cloned).

    `tied_unembed` is the config field of that name: when true the file may hold only one of the
    embedding and unembedding, and they must be equal when it holds both. Raises OpenAIFormatError
    listing missing, unexpected or misshapen tensors.
    """
    sd = dict(sd)
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise OpenAIFormatError(f"{WEIGHTS_FILE} is not a plain state dict of tensors (entries "
                                f"{bad[:5]}); is it a training checkpoint rather than weights?")
    for key in [k for k in sd if _MASK_BUFFER_RE.fullmatch(k)]:
        if not _is_causal_mask(sd[key]):
            raise OpenAIFormatError(f"{key} in {WEIGHTS_FILE} is not a causal mask (lower-"
                                    f"triangular ones), so we do not know what it is")
        del sd[key]  # a constant their non-flash attention recomputes; ours builds its own
    if "final_logits_bias" not in sd:
        sd["final_logits_bias"] = torch.zeros(cfg.vocab_size)  # as their loader does
    if tied_unembed:
        wte, lm_head = sd.get(_WTE), sd.get(_LM_HEAD)
        if wte is None and lm_head is not None:
            sd[_WTE] = lm_head
        elif lm_head is None and wte is not None:
            sd[_LM_HEAD] = wte
        elif wte is not None and lm_head is not None and not torch.equal(wte, lm_head):
            raise _unsupported("tied_unembed", True, f"{_WTE} and {_LM_HEAD} differ in "
                               f"{WEIGHTS_FILE}, and a tied model would use one matrix for both")
    if cfg.pos_emb == "none" and _WPE in sd:
        if sd[_WPE].count_nonzero():
            raise OpenAIFormatError(f"{_WPE} has nonzero entries but the config has no positional "
                                    f"embedding (pos_emb='none'); use pos_emb='learned'")
        del sd[_WPE]
        log.info("dropped the all-zero %s: adding it changes nothing", _WPE)

    # Compare in their names, so a tensor already under our name counts as unexpected.
    expected = {_their_name(k): s for k, s in _expected_shapes(cfg).items()}
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    shapes = [f"{k}: {tuple(sd[k].shape)} in the file, {tuple(s)} expected"
              for k, s in expected.items() if k in sd and sd[k].shape != s]
    if missing or extra or shapes:
        parts = [f"missing tensors {missing}" if missing else "",
                 f"unexpected tensors {extra}" if extra else "",
                 f"wrong shapes: {'; '.join(shapes)}" if shapes else ""]
        raise OpenAIFormatError(f"{WEIGHTS_FILE} does not match its config: "
                                + "; ".join(p for p in parts if p))
    # Their model holds float32 parameters whatever the file's dtype; sparse layouts are densified
    # because our model (and everything downstream) expects strided tensors.
    return {_our_name(k): (v.to_dense() if v.layout != torch.strided else v).to(torch.float32).clone()
            for k, v in sd.items()}


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise OpenAIFormatError(f"no {path.name} at {path.parent}: an OpenAI model directory holds "
                                f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors share no base class
        raise OpenAIFormatError(f"{path} could not be read as a torch state dict: {e}") from e
    if not isinstance(sd, dict):
        raise OpenAIFormatError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd


def load_openai_state_dict(path: PathLike, cfg: ModelConfig, *,
                           tied_unembed: bool = False) -> dict[str, torch.Tensor]:
    """Read `final_model.pt` (the file, or a directory holding it) as a state dict for GPT(cfg)."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    return openai_state_dict_to_ours(_read_weights(path), cfg, tied_unembed=tied_unembed)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise OpenAIFormatError(f"no {CONFIG_FILE} in {directory}: not an OpenAI model directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OpenAIFormatError(f"{path} is not valid JSON: {e}") from e


# ---------------------------------------------------------------------------------------------
# Tokenizer


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        # use_regex=False: the split is done above; ByteLevel only maps bytes to printable chars.
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise OpenAIFormatError(f"{path} line {n}: a merge is two tokens separated by one "
                                    f"space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _read_encoder(path: Path) -> dict[str, int]:
    try:
        encoder = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OpenAIFormatError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(encoder, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in encoder.values()):
        raise OpenAIFormatError(f"{path} must map token strings to non-negative integer ids")
    if len(set(encoder.values())) != len(encoder):
        raise OpenAIFormatError(f"{path} gives the same id to more than one token")
    return encoder


def load_openai_tokenizer(directory: PathLike, eot_id: int = OPENAI_EOT_ID) -> Tokenizer:
    """Build a HF tokenizer from GPT-2 "data gym" files (`vocab.bpe` + `encoder.json`).

    It splits text with tinypython's pattern, then runs byte-level BPE, like their tiktoken
    encoding. `<|endoftext|>` is a special token with id `eot_id`; as in sparse_gpt.tokenizer, a
    literal "<|endoftext|>" in text is encoded as plain text. Whole pre-tokens found in the vocab
    are taken as one token before any merge (`ignore_merges`), which is what tiktoken does.
    """
    directory = Path(directory)
    for name in TOKENIZER_FILES:
        if not (directory / name).is_file():
            raise OpenAIFormatError(f"no {name} in {directory}: the tokenizer of OpenAI's models is "
                                    f"the pair {' + '.join(TOKENIZER_FILES)}")
    encoder = _read_encoder(directory / ENCODER_JSON_FILE)
    merges = _read_merges(directory / VOCAB_BPE_FILE)
    if EOT in encoder and encoder[EOT] != eot_id:
        raise OpenAIFormatError(f"{directory / ENCODER_JSON_FILE} gives {EOT} id {encoder[EOT]}, "
                                f"but the model expects {eot_id}")
    if EOT not in encoder:
        taken = [t for t, i in encoder.items() if i == eot_id]
        if taken:
            raise OpenAIFormatError(f"{directory / ENCODER_JSON_FILE} gives id {eot_id}, reserved "
                                    f"for {EOT}, to {taken[0]!r}")
        encoder[EOT] = eot_id
    try:
        bpe = models.BPE(vocab=encoder, merges=merges, ignore_merges=True)
    except Exception as e:  # the Rust side raises a bare Exception naming the bad merge
        raise OpenAIFormatError(f"{directory}: {VOCAB_BPE_FILE} and {ENCODER_JSON_FILE} do not "
                                f"fit together: {e}") from e
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    # Documents may contain the EOT string itself; ids of EOT are inserted explicitly instead.
    tok.encode_special_tokens = True
    return tok


def _find_tokenizer_dir(model_dir: Path, tokenizer_dir: PathLike | None) -> Path:
    if tokenizer_dir is not None:
        return Path(tokenizer_dir)
    # Their layout is <base>/models/<name> next to <base>/tinypython; TINYPYTHON_TOK_DIR is the
    # override their tiktoken plugin reads.
    candidates = [model_dir]
    if os.environ.get("TINYPYTHON_TOK_DIR"):
        candidates.append(Path(os.environ["TINYPYTHON_TOK_DIR"]))
    candidates += [model_dir.parent / "tinypython", model_dir.parent.parent / "tinypython"]
    for c in candidates:
        if all((c / name).is_file() for name in TOKENIZER_FILES):
            return c
    raise OpenAIFormatError(f"no tokenizer ({' + '.join(TOKENIZER_FILES)}) found for {model_dir}; "
                            f"looked in {', '.join(map(str, candidates))}. Pass tokenizer_dir or set "
                            f"TINYPYTHON_TOK_DIR")


# ---------------------------------------------------------------------------------------------
# Whole models


def load_openai_model(path: PathLike, device: str | torch.device = "cpu",
                      tokenizer_dir: PathLike | None = None) -> tuple[GPT, Tokenizer, list[str]]:
    """Load an OpenAI model directory as (our GPT in eval mode, its tokenizer, ignored config keys).

    The tokenizer files are looked for in `tokenizer_dir`, else in the model directory,
    $TINYPYTHON_TOK_DIR, and the `tinypython` directory of their download layout.
    """
    path = Path(path)
    if not path.is_dir():
        raise OpenAIFormatError(f"OpenAI model directory not found: {path}")
    raw = _read_config(path)
    cfg, ignored = config_from_openai(raw)
    their_sd = _read_weights(path / WEIGHTS_FILE)
    wpe = their_sd.get(_WPE)
    if wpe is None:
        # Their non-strict loader would leave a random embedding in place; zero is the only
        # sensible reading of a file without one.
        warnings.warn(f"{path / WEIGHTS_FILE} has no {_WPE}; running without positional embedding",
                      stacklevel=2)
    if wpe is None or not wpe.count_nonzero():
        cfg = dataclasses.replace(cfg, pos_emb="none")
    sd = openai_state_dict_to_ours(their_sd, cfg, tied_unembed=_field(raw, "tied_unembed", "bool"))
    with torch.device("meta"):  # skip a random init that the loaded weights would overwrite
        model = GPT(cfg)
    model.load_state_dict(sd, assign=True)
    tok = load_openai_tokenizer(_find_tokenizer_dir(path, tokenizer_dir))
    if tok.get_vocab_size() > cfg.vocab_size:
        raise OpenAIFormatError(f"the tokenizer has {tok.get_vocab_size()} tokens but the model "
                                f"only {cfg.vocab_size} (vocab_size in {CONFIG_FILE})")
    return model.to(device).eval(), tok, ignored


