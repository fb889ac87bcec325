"""Tokenised corpus cache and batch sampling.

prepare_data() turns a DataConfig into two flat token arrays (train, val) on disk, with every
document preceded by an end-of-text token, plus the tokenizer that made them. The cache directory is
keyed by the corpus manifest hash and the tokenizer settings, so any change to the files or to the
tokenizer builds a fresh cache, and an unchanged setup reuses it without re-tokenising.

Crash safety: every file is written to a temp file in the same directory, fsynced and renamed into
place; meta.json is written last and a cache without a valid meta.json is never trusted. Opening a
cache checks the token files against the sha256 that meta.json records (and their ids against the
vocabulary), so a damaged or altered cache is rebuilt rather than trained on.

Batches are drawn at offsets that are a pure function of a seed tuple (the trainer passes
(run_seed, step, rank, micro_step)), so a run resumed after a kill sees exactly the same data.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import tokenizers
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from sparse_gpt.config import DataConfig
from sparse_gpt.corpus import Corpus, DataError, Document, collect_corpus, iter_texts
from sparse_gpt.fileio import TMP_PREFIX, atomic_open, sha256_file

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
from sparse_gpt.tokenizer import (BRACKET_PATTERN, TINYPYTHON_PATTERN, TokenizerError, eot_id,
                                  load_tokenizer, train_tokenizer)

# Bump when the on-disk layout or the way tokens are produced changes, to orphan old caches.
CACHE_FORMAT = 1
ENCODE_CHUNK_BYTES = 4_000_000   # text per encode_batch call: big enough to keep all cores busy
PROGRESS_MIN_BYTES = 16_000_000  # smaller corpora finish too fast for a progress bar to help
SCAN_CHUNK_BYTES = 1 << 24       # reading token files to check them: a multiple of every itemsize
BUILD_LOCK = ".build.lock"

Log = Callable[[str], None]
TOKENIZER_CHANGED = "tokenizer.json missing or not the one the tokens were made with"


@dataclass
class PreparedData:
    """A tokenised corpus ready for training. `train` and `val` are read-only memmaps."""

    dir: Path
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    tokenizer_path: Path
    manifest_hash: str
    tokenizer_hash: str   # sha256 of tokenizer.json
    vocab_size: int       # the tokenizer's real size (may be below DataConfig.vocab_size)
    eot_id: int


def tokenizer_settings(cfg: DataConfig) -> dict:
    """Everything that determines the trained tokenizer besides the corpus itself."""
    return {"vocab_size": cfg.vocab_size, "isolate_brackets": cfg.isolate_brackets,
            "train_bytes": cfg.tokenizer_train_bytes, "split_pattern": TINYPYTHON_PATTERN,
            "bracket_pattern": BRACKET_PATTERN if cfg.isolate_brackets else None}


def cache_dir_for(cfg: DataConfig, manifest_hash: str) -> Path:
    """The cache directory of one (corpus, tokenizer settings) pair."""
    key = json.dumps({"format": CACHE_FORMAT, "manifest_hash": manifest_hash,
                      "tokenizer": tokenizer_settings(cfg)}, sort_keys=True)
    return Path(cfg.cache_dir) / f"{cfg.source}-{_sha256(key.encode())[:16]}"


def prepare_data(cfg: DataConfig, log: Log = print, block_size: Optional[int] = None) -> PreparedData:
    """Collect, tokenise and cache the corpus of `cfg`, or reuse a matching cache.

    With `block_size`, fail early (DataError) when a split is too short to draw one training window.
    Concurrent callers are safe: one builds the cache under a lock while the others wait for it.
    """
    corpus = collect_corpus(cfg)
    if corpus.not_text:
        log(f"warning: {len(corpus.not_text)} of {len(corpus.documents)} documents are not UTF-8 text "
            f"(e.g. {corpus.not_text[0]!r}); they are read with replacement characters. Check "
            f"data.path and data.extensions")
    manifest_hash = corpus.manifest_hash()
    d = cache_dir_for(cfg, manifest_hash)
    data, problem = _load_cache(d, manifest_hash, tokenizer_settings(cfg), log)
    if data is None:
        d.mkdir(parents=True, exist_ok=True)
        with _exclusive(d / BUILD_LOCK):
            # Another process may have built it while this one waited for the lock.
            data, problem = _load_cache(d, manifest_hash, tokenizer_settings(cfg), log, quiet=True)
            if data is None:
                data = _build_cache(d, corpus, cfg, log, keep_tokenizer=problem != TOKENIZER_CHANGED)
    if block_size is not None:
        for name, tokens in (("train", data.train), ("val", data.val)):
            check_length(len(tokens), block_size, f"{name} split ({d})")
    return data


# --- cache reading ---------------------------------------------------------------------------

def _load_cache(d: Path, manifest_hash: str, settings: dict, log: Log, quiet: bool = False
                ) -> tuple[Optional[PreparedData], Optional[str]]:
    """(the cached data in `d`, None) if its meta.json says it matches, else (None, the reason).
    `quiet` leaves the reason unlogged (when it was logged once already)."""
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        return None, "no meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        problem = _cache_problem(d, meta, manifest_hash, settings)
        if problem is None:
            tok = load_tokenizer(d / "tokenizer.json")
    except (OSError, ValueError, KeyError, TypeError) as e:  # TokenizerError is a ValueError
        problem = f"unreadable ({type(e).__name__}: {e})"
    if problem is not None:
        if not quiet:
            log(f"data: cache {d} is stale or damaged ({problem}); rebuilding")
        return None, problem
    log(f"data: reusing cache {d} ({meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens)")
    return _open(d, meta, tok), None


def _cache_problem(d: Path, meta: dict, manifest_hash: str, settings: dict) -> Optional[str]:
    """What makes the cache in `d` unusable, or None when it can be trusted."""
    if meta.get("format") != CACHE_FORMAT:
        return f"format {meta.get('format')} != {CACHE_FORMAT}"
    if meta["manifest_hash"] != manifest_hash:
        return "corpus manifest changed"
    if meta["tokenizer_settings"] != settings:
        return "tokenizer settings changed"
    tok_path = d / "tokenizer.json"
    if not tok_path.is_file() or sha256_file(tok_path) != meta["tokenizer_hash"]:
        return TOKENIZER_CHANGED
    dtype = np.dtype(meta["dtype"])
    for split in ("train", "val"):
        path = d / f"{split}.bin"
        want = meta[f"{split}_tokens"] * dtype.itemsize
        if not path.is_file() or path.stat().st_size != want:
            return f"{path.name} missing or not {want} bytes"
        digest, top = _scan_tokens(path, dtype)
        if digest != meta[f"{split}_bin_sha256"]:
            return f"{path.name} is not the file that was written (sha256 mismatch)"
        if top >= meta["vocab_size"]:
            return f"{path.name} holds token id {top}, outside the vocabulary of {meta['vocab_size']}"
    return None


def _scan_tokens(path: Path, dtype: np.dtype) -> tuple[str, int]:
    """(sha256, largest token id) of a token file, in one pass (about 1 s per GB)."""
    digest, top = hashlib.sha256(), -1
    with open(path, "rb") as f:
        while chunk := f.read(SCAN_CHUNK_BYTES):
            digest.update(chunk)
            tokens = np.frombuffer(chunk, dtype=dtype)
            if tokens.size:
                top = max(top, int(tokens.max()))
    return digest.hexdigest(), top


def _open(d: Path, meta: dict, tok: Tokenizer) -> PreparedData:
    dtype = np.dtype(meta["dtype"])
    arrays = {split: np.memmap(d / f"{split}.bin", dtype=dtype, mode="r",
                               shape=(meta[f"{split}_tokens"],)) for split in ("train", "val")}
    return PreparedData(dir=d, train=arrays["train"], val=arrays["val"], tokenizer=tok,
                        tokenizer_path=d / "tokenizer.json", manifest_hash=meta["manifest_hash"],
                        tokenizer_hash=meta["tokenizer_hash"], vocab_size=meta["vocab_size"],
                        eot_id=meta["eot_id"])


# --- cache building --------------------------------------------------------------------------

def _build_cache(d: Path, corpus: Corpus, cfg: DataConfig, log: Log,
                 keep_tokenizer: bool = True) -> PreparedData:
    """Tokenise the corpus into `d`; reuse a tokenizer.json found there when `keep_tokenizer`."""
    t0 = time.perf_counter()
    d.mkdir(parents=True, exist_ok=True)
    # Drop the old meta first: if this rebuild is killed, the half-new directory is not trusted.
    (d / "meta.json").unlink(missing_ok=True)
    # Temp files of a killed build; safe to remove, since builders hold the directory's lock.
    for orphan in d.glob(f"{TMP_PREFIX}*"):
        orphan.unlink(missing_ok=True)
    if not keep_tokenizer:
        (d / "tokenizer.json").unlink(missing_ok=True)
    tok = _get_tokenizer(d, corpus, cfg, log)
    vocab_size = tok.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)
    counts, hashes = {}, {}
    for split in ("train", "val"):
        docs = corpus.split(split)
        t = time.perf_counter()
        counts[split], hashes[split] = _write_tokens(d / f"{split}.bin", corpus, docs, tok, dtype,
                                                     log)
        n_bytes = sum(doc.size for doc in docs)
        log(f"data: {split}: {len(docs)} documents, {n_bytes:,} bytes -> {counts[split]:,} tokens "
            f"({n_bytes / max(counts[split], 1):.2f} bytes/token) in {time.perf_counter() - t:.1f}s")
    _write_json(d / "manifest.json", {"settings": corpus.settings, "roots": corpus.roots,
                                      "manifest_hash": corpus.manifest_hash(),
                                      "documents": corpus.manifest()})
    meta = {
        "format": CACHE_FORMAT, "dtype": dtype.name, "vocab_size": vocab_size, "eot_id": eot_id(tok),
        "train_tokens": counts["train"], "val_tokens": counts["val"],
        "train_documents": len(corpus.split("train")), "val_documents": len(corpus.split("val")),
        "train_bin_sha256": hashes["train"], "val_bin_sha256": hashes["val"],
        "manifest_hash": corpus.manifest_hash(), "tokenizer_hash": sha256_file(d / "tokenizer.json"),
        "tokenizer_settings": tokenizer_settings(cfg), "tokenizers_version": tokenizers.__version__,
        "build_seconds": time.perf_counter() - t0,
    }
    _write_json(d / "meta.json", meta)  # last: its presence marks the cache complete
    log(f"data: cache written to {d} in {meta['build_seconds']:.1f}s")
    return _open(d, meta, tok)


def _get_tokenizer(d: Path, corpus: Corpus, cfg: DataConfig, log: Log) -> Tokenizer:
    """The tokenizer.json already in `d` (from a killed build), else a freshly trained one.

    Reusing is safe because `d` is keyed by the corpus and the tokenizer settings, and the file is
    written atomically, so one that exists is complete and was trained on this very corpus.
    """
    path = d / "tokenizer.json"
    if path.is_file():
        try:
            tok = load_tokenizer(path)
            log(f"data: reusing tokenizer {path}")
            return tok
        except TokenizerError as e:
            log(f"data: {e}; training a new one")
    texts = list(tokenizer_training_texts(corpus, cfg.tokenizer_train_bytes))
    t = time.perf_counter()
    with _tokenizers_parallelism(log):
        tok = train_tokenizer(texts, cfg.vocab_size, cfg.isolate_brackets)
    log(f"data: trained tokenizer (vocab {tok.get_vocab_size()}, isolate_brackets="
        f"{cfg.isolate_brackets}) on {sum(len(x.encode()) for x in texts):,} bytes "
        f"in {time.perf_counter() - t:.1f}s")
    with atomic_open(path, "w") as f:
        f.write(tok.to_str())
    return tok


def tokenizer_training_texts(corpus: Corpus, max_bytes: int) -> Iterator[str]:
    """A deterministic subset of the train split of at most `max_bytes` bytes of text.

    Documents are taken in an order shuffled by name hash, so the subset covers the whole corpus
    rather than its alphabetically first packages; the last one is cut at the byte budget.
    """
    docs = sorted(corpus.split("train"), key=lambda doc: _sha256(b"tok:" + doc.name.encode()))
    left = max_bytes
    for doc in docs:
        if left <= 0:
            return
        raw = corpus.read(doc).encode("utf-8")
        yield raw[:left].decode("utf-8", errors="ignore")
        left -= len(raw)


def _write_tokens(path: Path, corpus: Corpus, docs: list[Document], tok: Tokenizer,
                  dtype: np.dtype, log: Log) -> tuple[int, str]:
    """Tokenise `docs` (each preceded by EOT) into a flat binary file; return (count, sha256)."""
    eot = np.array([eot_id(tok)], dtype=dtype)
    total_bytes = sum(doc.size for doc in docs)
    count, digest = 0, hashlib.sha256()
    with atomic_open(path, "wb") as f, _tokenizers_parallelism(log), \
            _progress(total_bytes, path.stem) as bar:
        for chunk in _chunks(docs, ENCODE_CHUNK_BYTES):
            # encode_batch_fast skips offset tracking; HF tokenizers spreads the batch over cores.
            encodings = tok.encode_batch_fast(list(iter_texts(corpus, chunk)),
                                              add_special_tokens=False)
            parts = []
            for enc in encodings:
                parts.append(eot)
                parts.append(np.asarray(enc.ids, dtype=dtype))
            buf = np.concatenate(parts).tobytes()
            f.write(buf)
            digest.update(buf)
            count += len(buf) // dtype.itemsize
            bar.update(sum(doc.size for doc in chunk))
    return count, digest.hexdigest()


def _chunks(docs: list[Document], chunk_bytes: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += doc.size
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@contextlib.contextmanager
def _progress(total_bytes: int, desc: str):
    """A tqdm byte counter on stderr for large corpora (disabled when small or not a terminal)."""
    disable = total_bytes < PROGRESS_MIN_BYTES or not sys.stderr.isatty()
    with tqdm(total=total_bytes, desc=f"tokenising {desc}", unit="B", unit_scale=True,
              file=sys.stderr, disable=disable) as bar:
        yield bar


@contextlib.contextmanager
def _tokenizers_parallelism(log: Log):
    """Undo TOKENIZERS_PARALLELISM=false for the duration, so tokenising uses every core.

    People set it to silence the fork warning of HF tokenizers; left alone it would make a large
    corpus tokenise on one core. Only call this in a top-level process, not in a forked worker.
    """
    name = "TOKENIZERS_PARALLELISM"
    old = os.environ.get(name)
    disabled = old is not None and old.strip().lower() in ("", "0", "false", "f", "off", "no", "n")
    if disabled:
        log(f"data: {name}={old!r} would tokenise on one core; enabling it while tokenising")
        os.environ[name] = "true"
    try:
        yield
    finally:
        if disabled:
            os.environ[name] = old


# --- atomic files ----------------------------------------------------------------------------

@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Hold an exclusive lock on `lock_path` (waiting for it), so one process builds a cache while
    others wait and then reuse it. Where flock is missing (Windows) builders do not coordinate."""
    with open(lock_path, "a") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _write_json(path: Path, obj: dict) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- sampling --------------------------------------------------------------------------------

def check_length(n_tokens: int, block_size: int, what: str = "token array") -> None:
    """Raise DataError unless `n_tokens` allows at least two distinct training windows."""
    if n_tokens < block_size + 2:
        raise DataError(f"{what} has {n_tokens:,} tokens, fewer than block_size + 2 = "
                        f"{block_size + 2:,}; use a larger corpus (data.max_bytes, data.path) or "
                        f"a smaller model.block_size")


def random_offsets(n_tokens: int, block_size: int, count: int, seed: Sequence[int]) -> np.ndarray:
    """`count` window starts in [0, n_tokens - block_size - 1], a pure function of `seed`.

    The trainer passes seed=(run_seed, step, rank, micro_step), so the data at every step is fixed
    by the step number alone and a resumed run continues exactly where the killed one was.
    """
    check_length(n_tokens, block_size)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    seed = [int(s) for s in seed]
    if not seed or any(s < 0 for s in seed):
        raise ValueError(f"seed must be a non-empty sequence of non-negative integers, got {seed}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_tokens - block_size, size=count, dtype=np.int64)


def get_batch(tokens: np.ndarray, offsets: np.ndarray, block_size: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs tokens[o:o+T] and next-token targets tokens[o+1:o+T+1], int64 tensors (B, T)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1:
        raise ValueError(f"offsets must be 1-D, got shape {offsets.shape}")
    if len(offsets) and (offsets.min() < 0 or offsets.max() > len(tokens) - block_size - 1):
        raise ValueError(f"offsets must lie in [0, {len(tokens) - block_size - 1}] for "
                         f"{len(tokens)} tokens and block_size {block_size}; got "
                         f"[{offsets.min()}, {offsets.max()}]")
    idx = offsets[:, None] + np.arange(block_size + 1)  # (B, T+1)
    window = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    return window[:, :-1], window[:, 1:]


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of `val` under the add-one unigram distribution of `train`.

    The floor any language model must clearly beat: a model whose val loss is near this number has
    learnt token frequencies and nothing else.
    """
    if len(val) == 0:
        raise DataError("unigram_loss: the val token array is empty")
    for name, arr in (("train", train), ("val", val)):
        if len(arr) and int(arr.max()) >= vocab_size:
            raise DataError(f"unigram_loss: {name} has token id {int(arr.max())} >= "
                            f"vocab_size {vocab_size}")
    counts = np.bincount(np.asarray(train), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts) - math.log(counts.sum())
    val_counts = np.bincount(np.asarray(val), minlength=vocab_size)
    return float(-(val_counts * log_p).sum() / len(val))


# ----- documents as text: statistics over pretraining data, natural task examples -------------------

def validation_texts(data_cfg: DataConfig, max_bytes: int) -> list[str]:
    """Held-out documents of the pretraining corpus, in sorted order, up to about max_bytes."""
    return corpus_texts(data_cfg, "val", max_bytes)


def corpus_texts(data_cfg: DataConfig, split: str, max_bytes: int) -> list[str]:
    """Documents of one split ('train' or 'val') of the pretraining corpus, in sorted order, up to
    about max_bytes."""
    corpus = collect_corpus(data_cfg)
    texts, size = [], 0
    for doc in corpus.split(split):
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
