"""Typed run configuration: dataclasses loaded from YAML, with strict checking.

A config file has four sections (model, data, sparsity, train). Unknown keys and wrong types are
errors that name the key, so a typo can never silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

# Where AbsTopK activation sparsity can act, in forward order (the paper's eight locations).
ACT_SPARSITY_LOCATIONS = (
    "attn_in", "q", "k", "v", "attn_out", "mlp_in", "mlp_neuron", "mlp_out",
)


class ConfigError(ValueError):
    """A config file or override that cannot be used as given."""


@dataclass
class ModelConfig:
    vocab_size: int = 2048          # overwritten by the tokenizer's size at train time
    block_size: int = 256           # context length
    n_layer: int = 8
    d_model: int = 256
    d_head: int = 16
    d_mlp: Optional[int] = None     # None: 4 * d_model
    bias: bool = True               # biases on every Linear
    norm: str = "rms"               # rms | layer
    activation: str = "gelu"        # gelu | relu
    pos_emb: str = "none"           # none | learned
    attn_sink: bool = True          # learnable per-head logit on an always-visible zero key/value
    bigram_table: bool = False      # dense vocab x vocab logit table indexed by the current token
    afrac: Optional[float] = 0.25   # AbsTopK fraction kept; None turns activation sparsity off
    afrac_locations: list[str] = field(default_factory=lambda: list(ACT_SPARSITY_LOCATIONS))
    init_std: float = 0.02

    @property
    def n_head(self) -> int:
        return self.d_model // self.d_head

    @property
    def mlp_width(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    def validate(self) -> None:
        _require(self.d_model % self.d_head == 0,
                 f"model.d_model ({self.d_model}) must be a multiple of model.d_head ({self.d_head})")
        for name in ("vocab_size", "block_size", "n_layer", "d_model", "d_head"):
            _require(getattr(self, name) > 0, f"model.{name} must be positive")
        _require(self.d_mlp is None or self.d_mlp > 0,
                 f"model.d_mlp must be positive (or null for 4 x d_model), got {self.d_mlp}")
        _require(self.init_std > 0 and math.isfinite(self.init_std),
                 f"model.init_std must be a positive number, got {self.init_std}")
        _require(self.norm in ("rms", "layer"), f"model.norm must be 'rms' or 'layer', got {self.norm!r}")
        _require(self.activation in ("gelu", "relu"),
                 f"model.activation must be 'gelu' or 'relu', got {self.activation!r}")
        _require(self.pos_emb in ("none", "learned"),
                 f"model.pos_emb must be 'none' or 'learned', got {self.pos_emb!r}")
        if self.afrac is not None:
            _require(0 < self.afrac <= 1, f"model.afrac must be in (0, 1], got {self.afrac}")
        for loc in self.afrac_locations:
            if loc not in ACT_SPARSITY_LOCATIONS:
                raise ConfigError(f"model.afrac_locations: unknown location {loc!r}"
                                  f"{_did_you_mean(loc, ACT_SPARSITY_LOCATIONS)}; "
                                  f"valid: {', '.join(ACT_SPARSITY_LOCATIONS)}")


@dataclass
class DataConfig:
    source: str = "stdlib"          # stdlib | site-packages | files | hf
    path: Optional[str] = None      # files: a directory or a glob; hf: dataset name or local path
    hf_config: Optional[str] = None
    hf_split: str = "train"
    hf_text_field: str = "text"
    extensions: list[str] = field(default_factory=lambda: [".py"])  # files source: which files
    val_fraction: float = 0.05      # share of files (by path hash) held out for validation
    max_bytes: Optional[int] = None  # cap on corpus size (files taken in sorted order)
    exclude: list[str] = field(default_factory=list)  # glob patterns of document names to leave out
    vocab_size: int = 2048
    isolate_brackets: bool = True   # pre-tokenizer isolates quote and bracket runs (docs/design_data.md)
    tokenizer_train_bytes: int = 16_000_000  # BPE is trained on at most this much training text
    cache_dir: str = ".cache/sparse_gpt"

    def validate(self) -> None:
        _require(self.source in ("stdlib", "site-packages", "files", "hf"),
                 f"data.source must be stdlib, site-packages, files or hf, got {self.source!r}")
        _require(self.source not in ("files", "hf") or self.path,
                 f"data.source={self.source!r} needs data.path")
        _require(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        _require(self.vocab_size >= 260, f"data.vocab_size must be >= 260 (256 bytes + specials), got {self.vocab_size}")


@dataclass
class SparsityConfig:
    matrix_density: float = 1 / 64   # share of entries kept in every linear weight matrix
    embed_density: float = 1 / 16    # share kept in embeddings, unembedding and biases
    sparsify_biases: bool = True
    neuron_floor: int = 4            # every MLP neuron / attention channel keeps >= this many weights
    anneal_start: float = 0.01       # fraction of training where density starts falling from 1 ...
    anneal_end: float = 0.5          # ... and where it reaches the target
    lr_l0_scaling: bool = True       # multiply the LR by sqrt(L0_final / L0_now) while annealing

    @property
    def dense(self) -> bool:
        return self.matrix_density >= 1 and self.embed_density >= 1

    def validate(self) -> None:
        for name in ("matrix_density", "embed_density"):
            v = getattr(self, name)
            _require(0 < v <= 1, f"sparsity.{name} must be in (0, 1], got {v}")
        _require(self.neuron_floor >= 0, "sparsity.neuron_floor must be >= 0")
        _require(0 <= self.anneal_start <= self.anneal_end <= 1,
                 f"need 0 <= sparsity.anneal_start <= sparsity.anneal_end <= 1, "
                 f"got {self.anneal_start}, {self.anneal_end}")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32             # sequences per optimiser step, over all processes
    grad_accum: int = 1              # micro-batches per step (per process)
    lr: float = 1.28e-2
    warmup_frac: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 0.1                 # large on purpose: the paper's value, it damps Adam on rarely-updated sparse weights
    weight_decay: float = 0.1        # decoupled, on matrices, after the top-k
    grad_norm: str = "rms"           # rms: divide by global grad RMS | clip: only when RMS > 1 | none
    seed: int = 0
    eval_interval: int = 100
    eval_batches: int = 8
    log_interval: int = 10
    ckpt_interval: int = 200
    keep_checkpoints: int = 2
    dtype: str = "auto"              # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16
    device: str = "auto"             # auto | cpu | cuda
    compile: bool = False            # torch.compile the model (GPU runs)
    peak_tflops: Optional[float] = None  # device bf16 peak for MFU; None: looked up by GPU name (none on CPU)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_interval", "eval_batches",
                     "log_interval", "ckpt_interval", "keep_checkpoints"):
            _require(getattr(self, name) > 0, f"train.{name} must be positive")
        _require(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be a positive number, got {self.lr}")
        _require(0 <= self.warmup_frac < 1, f"train.warmup_frac must be in [0, 1), got {self.warmup_frac}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            _require(0 <= v < 1, f"train.{name} must be in [0, 1), got {v}")
        _require(0 <= self.eps < math.inf, f"train.eps must be a number >= 0, got {self.eps}")
        _require(0 <= self.weight_decay < math.inf,
                 f"train.weight_decay must be a number >= 0, got {self.weight_decay}")
        _require(self.grad_norm in ("rms", "clip", "none"),
                 f"train.grad_norm must be rms, clip or none, got {self.grad_norm!r}")
        _require(self.dtype in ("auto", "fp32", "bf16"), f"train.dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        _require(self.device in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda, got {self.device!r}")
        _require(self.peak_tflops is None or self.peak_tflops > 0,
                 f"train.peak_tflops must be positive, got {self.peak_tflops}")
        _require(self.batch_size % self.grad_accum == 0,
                 f"train.batch_size ({self.batch_size}) must be divisible by train.grad_accum ({self.grad_accum})")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        for section in (self.model, self.data, self.sparsity, self.train):
            section.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return value converted to the annotated type tp, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__} {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {where!r}{_did_you_mean(str(key), names)}; "
                              f"valid keys here: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, where)
        else:
            kwargs[key] = _check_type(value, tp, where)
    return cls(**kwargs)


def config_from_dict(raw: dict) -> Config:
    return _build(Config, raw or {}, "").validate()


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-3' -> (['train', 'lr'], 0.003); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, _, value = text.partition("=")
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override {text!r}: {key.strip()!r} is not a key path like train.lr")
    try:
        parsed = yaml.load(value, Loader=_FloatLoader) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML "
                          f"({_first_line(e)}); quote it if it is a string") from e
    return path, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of `raw` with each key.path=value applied in turn (`raw` itself is not changed)."""
    raw = dict(raw or {})
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is not None and not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:depth + 1])} is "
                                  f"{_a(type(child).__name__)} value ({child!r}), not a section with keys")
            node[part] = dict(child or {})
            node = node[part]
        node[path[-1]] = value
    return raw


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _first_line(error: Exception) -> str:
    return " ".join(str(error).split())


class _FloatLoader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 (no dot) as a float, as YAML 1.2 and people do."""


_FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_config_yaml(text: str, where: str) -> dict:
    """The raw mapping of a YAML config text; `where` names its origin in errors."""
    try:
        raw = yaml.load(text, Loader=_FloatLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {_first_line(e)}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a config is a mapping of sections (model, data, sparsity, "
                          f"train), but the file holds {_a(type(raw).__name__)}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                log: Callable[[str], None] | None = None) -> Config:
    """Load a YAML config (or the defaults when path is None) and apply key.path=value overrides.

    `log`, when given, hears which config is in use, since an empty file or no file at all means
    every setting is the built-in default, which is easy to do by accident."""
    raw: dict = {}
    if path is None:
        if log:
            log("config: the built-in defaults (no config file given)")
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}"
                              + (" (it is a directory)" if path.is_dir() else ""))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read it as text: {e}") from e
        raw = parse_config_yaml(text, str(path))
        if log:
            log(f"config: {path}" + ("" if raw else " is empty: every setting is the built-in default"))
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; refuse 'cuda' without one."""
    import torch  # here, so that reading a config does not pay for importing torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no CUDA GPU (use --device cpu)")
    return name
