"""Tests for sparse_gpt.data: the token cache (build, reuse, invalidation, crash safety) and
batch sampling."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_gpt import data as data_mod
from sparse_gpt.config import DataConfig
from sparse_gpt.corpus import DataError, collect_corpus
from sparse_gpt.data import corpus_texts, get_batch, prepare_data, random_offsets, unigram_loss, validation_texts
from sparse_gpt.tokenizer import EOT, decode


@pytest.fixture(scope="module")
def stdlib_files(tmp_path_factory) -> Path:
    """A copy of the first ~300 KB of real stdlib files (in sorted order), as a files corpus."""
    src = tmp_path_factory.mktemp("stdlib_copy")
    stdlib = collect_corpus(DataConfig(source="stdlib", max_bytes=300_000))
    root = Path(stdlib.roots[0])
    for doc in stdlib.documents:
        dest = src / doc.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / doc.name, dest)
    return src


def make_cfg(src: Path, cache: Path, **kw) -> DataConfig:
    return DataConfig(source="files", path=str(src), cache_dir=str(cache), vocab_size=512,
                      tokenizer_train_bytes=150_000, val_fraction=0.2, **kw)


class Log(list):
    def __call__(self, line: str) -> None:
        self.append(line)

    def has(self, text: str) -> bool:
        return any(text in line for line in self)


def test_prepare_builds_a_complete_cache(stdlib_files, tmp_path):
    log = Log()
    d = prepare_data(make_cfg(stdlib_files, tmp_path), log=log)
    assert log.has("trained tokenizer")
    for name in ("train.bin", "val.bin", "tokenizer.json", "manifest.json", "meta.json"):
        assert (d.dir / name).is_file(), name
    assert not [p for p in d.dir.iterdir() if p.name.endswith(".tmp")]
    assert d.train.dtype == np.uint16 and d.val.dtype == np.uint16
    assert not d.train.flags.writeable
    assert d.vocab_size == 512 and d.eot_id == 0
    assert int(d.train.max()) < d.vocab_size
    assert len(d.manifest_hash) == 64 and len(d.tokenizer_hash) == 64
    assert d.tokenizer_path == d.dir / "tokenizer.json"

    # The train stream is exactly EOT + text of every train document, in name order.
    corpus = collect_corpus(make_cfg(stdlib_files, tmp_path))
    train_docs = corpus.split("train")
    expected = "".join(EOT + corpus.read(doc) for doc in train_docs)
    assert decode(d.tokenizer, d.train.tolist()) == expected
    assert int((d.train == d.eot_id).sum()) == len(train_docs)
    assert int((d.val == d.eot_id).sum()) == len(corpus.split("val"))


def test_second_call_reuses_the_cache(stdlib_files, tmp_path):
    cfg = make_cfg(stdlib_files, tmp_path)
    first = prepare_data(cfg, log=Log())
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.dir.iterdir()}
    log = Log()
    second = prepare_data(cfg, log=log)
    assert log.has("reusing cache") and not log.has("trained tokenizer")
    assert {p.name: p.stat().st_mtime_ns for p in second.dir.iterdir()} == mtimes
    assert second.dir == first.dir
    assert np.array_equal(second.train, first.train)
    assert second.tokenizer_hash == first.tokenizer_hash


def test_changed_corpus_invalidates_the_cache(stdlib_files, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(stdlib_files, src)
    first = prepare_data(make_cfg(src, tmp_path / "cache"), log=Log())
    victim = sorted(src.rglob("*.py"))[0]
    victim.write_text(victim.read_text() + "\nadded = 'line'\n")
    log = Log()
    second = prepare_data(make_cfg(src, tmp_path / "cache"), log=log)
    assert log.has("trained tokenizer")
    assert second.manifest_hash != first.manifest_hash
    assert second.dir != first.dir
    # Tokenizer settings are part of the key too.
    third = prepare_data(make_cfg(src, tmp_path / "cache", isolate_brackets=False), log=Log())
    assert third.dir not in (first.dir, second.dir)


def test_damaged_cache_is_rebuilt(stdlib_files, tmp_path):
    cfg = make_cfg(stdlib_files, tmp_path)
    first = prepare_data(cfg, log=Log())
    n_train = len(first.train)
    with open(first.dir / "train.bin", "r+b") as f:
        f.truncate(10)
    log = Log()
    again = prepare_data(cfg, log=log)
    assert log.has("stale or damaged") and log.has("train.bin")
    # The tokenizer.json was intact and keyed by the same corpus, so it is reused, not retrained.
    assert log.has("reusing tokenizer") and not log.has("trained tokenizer")
    assert len(again.train) == n_train


def test_edited_tokenizer_is_retrained_not_reused(stdlib_files, tmp_path):
    cfg = make_cfg(stdlib_files, tmp_path)
    first = prepare_data(cfg, log=Log())
    path = first.tokenizer_path
    path.write_text(path.read_text().replace('"ByteLevel"', '"ByteLevel" '))  # still loads
    log = Log()
    again = prepare_data(cfg, log=log)
    assert log.has("stale or damaged") and log.has("trained tokenizer")
    assert again.tokenizer_hash == first.tokenizer_hash  # training is deterministic


def test_killed_build_is_never_trusted(stdlib_files, tmp_path, monkeypatch):
    cfg = make_cfg(stdlib_files, tmp_path)
    real_write = data_mod._write_tokens

    def crash_on_val(path, *args, **kw):
        if path.name == "val.bin":
            raise KeyboardInterrupt("simulated kill")
        return real_write(path, *args, **kw)

    monkeypatch.setattr(data_mod, "_write_tokens", crash_on_val)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, log=Log())
    d = data_mod.cache_dir_for(cfg, collect_corpus(cfg).manifest_hash())
    assert (d / "train.bin").is_file() and not (d / "meta.json").exists()
    monkeypatch.setattr(data_mod, "_write_tokens", real_write)
    log = Log()
    data = prepare_data(cfg, log=log)
    assert not log.has("reusing cache")
    assert (d / "meta.json").is_file() and len(data.val) > 0


def test_tokenizers_parallelism_false_is_overridden_then_restored(stdlib_files, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    log = Log()
    prepare_data(make_cfg(stdlib_files, tmp_path), log=log)
    assert log.has("TOKENIZERS_PARALLELISM")
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_tiny_corpus_error_names_the_counts(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    (src / "b.py").write_text("y = 2\n")
    with pytest.raises(DataError, match=r"train split .* has \d+ tokens, fewer than block_size \+ 2 = 258"):
        prepare_data(make_cfg(src, tmp_path / "cache"), log=Log(), block_size=256)
    with pytest.raises(DataError, match="fewer than block_size"):
        random_offsets(10, 16, 4, seed=(0,))


def test_offsets_are_deterministic_and_in_range():
    n, T = 1000, 64
    a = random_offsets(n, T, 256, seed=(1, 5, 0, 0))
    b = random_offsets(n, T, 256, seed=(1, 5, 0, 0))
    c = random_offsets(n, T, 256, seed=(1, 6, 0, 0))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.int64 and a.shape == (256,)
    assert a.min() >= 0 and a.max() <= n - T - 1
    # The extremes are reachable: on the smallest array both 0 and n - T - 1 come up.
    small = random_offsets(T + 2, T, 200, seed=(3,))
    assert set(small.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="non-negative"):
        random_offsets(n, T, 4, seed=(-1,))


def test_get_batch_shifts_targets_by_one():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = get_batch(tokens, np.array([0, 7, 99 - 16]), block_size=16)
    assert x.dtype == torch.int64 and x.shape == (3, 16) and y.shape == (3, 16)
    assert x[1].tolist() == list(range(7, 23))
    assert torch.equal(y, x + 1)
    assert y[2, -1].item() == 99
    with pytest.raises(ValueError, match="offsets must lie in"):
        get_batch(tokens, np.array([99 - 15]), block_size=16)


def test_get_batch_on_a_prepared_memmap(stdlib_files, tmp_path):
    d = prepare_data(make_cfg(stdlib_files, tmp_path), log=Log())
    offs = random_offsets(len(d.train), 32, 8, seed=(0, 1, 0, 0))
    x, y = get_batch(d.train, offs, 32)
    assert x.shape == (8, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert x[0].tolist() == d.train[offs[0]:offs[0] + 32].tolist()


def test_unigram_loss_is_sane(stdlib_files, tmp_path):
    d = prepare_data(make_cfg(stdlib_files, tmp_path), log=Log())
    loss = unigram_loss(d.train, d.val, d.vocab_size)
    assert 0 < loss < math.log(d.vocab_size)
    # Uniform data gives about log(V); a one-token stream costs almost nothing.
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 64, size=200_000).astype(np.uint16)
    assert unigram_loss(uniform, uniform[:10_000], 64) == pytest.approx(math.log(64), abs=0.01)
    same = np.zeros(10_000, dtype=np.uint16)
    assert unigram_loss(same, same, 64) < 0.01
    with pytest.raises(DataError, match=">= vocab_size"):
        unigram_loss(uniform, uniform, 32)


def test_same_size_garbage_tokens_are_detected_and_rebuilt(stdlib_files, tmp_path):
    cfg = make_cfg(stdlib_files, tmp_path)
    first = prepare_data(cfg, log=Log())
    original = np.array(first.train)
    path = first.dir / "train.bin"
    garbage = np.random.default_rng(0).integers(0, 512, size=len(original), dtype=np.uint16)
    path.write_bytes(garbage.tobytes())  # same size, ids in range: only the content hash can tell
    log = Log()
    again = prepare_data(cfg, log=log)
    assert log.has("train.bin is not the file that was written (sha256 mismatch)")
    assert np.array_equal(np.array(again.train), original)


def test_out_of_range_ids_are_refused_even_with_a_matching_hash(stdlib_files, tmp_path):
    import hashlib
    import json
    cfg = make_cfg(stdlib_files, tmp_path)
    first = prepare_data(cfg, log=Log())
    original = np.array(first.val)
    bad = original.copy()
    bad[3] = 60_000  # would index past the embedding: an IndexError deep in the model
    (first.dir / "val.bin").write_bytes(bad.tobytes())
    meta = json.loads((first.dir / "meta.json").read_text())
    meta["val_bin_sha256"] = hashlib.sha256(bad.tobytes()).hexdigest()
    (first.dir / "meta.json").write_text(json.dumps(meta))
    log = Log()
    again = prepare_data(cfg, log=log)
    assert log.has("val.bin holds token id 60000, outside the vocabulary of 512")
    assert np.array_equal(np.array(again.val), original)


def test_a_killed_build_leaves_no_orphan_temp_files(stdlib_files, tmp_path):
    cfg = make_cfg(stdlib_files, tmp_path)
    d = prepare_data(cfg, log=Log()).dir
    # What SIGKILL during a build leaves: a temp file mid-write and no meta.json.
    (d / ".tmp-train.bin-0123456789ab").write_bytes(b"\0" * 1000)
    (d / "meta.json").unlink()
    prepare_data(cfg, log=Log())
    assert not list(d.glob(".tmp-*"))


def test_binary_documents_are_warned_about(stdlib_files, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(stdlib_files, src)
    (src / "blob.py").write_bytes(bytes(range(256)) * 4)
    log = Log()
    prepare_data(make_cfg(src, tmp_path / "cache"), log=log)
    assert log.has("warning: 1 of") and log.has("are not UTF-8 text (e.g. 'blob.py')")
    log = Log()
    prepare_data(make_cfg(stdlib_files, tmp_path / "cache"), log=log)
    assert not log.has("UTF-8")


def test_concurrent_builders_of_one_cache_build_it_once(stdlib_files, tmp_path):
    import subprocess
    import sys
    code = ("import sys; from pathlib import Path; from sparse_gpt.config import DataConfig; "
            "from sparse_gpt.data import prepare_data; "
            "cfg = DataConfig(source='files', path=sys.argv[1], cache_dir=sys.argv[2], vocab_size=512, "
            "tokenizer_train_bytes=150_000, val_fraction=0.2); "
            "d = prepare_data(cfg, log=print); print('tokens', len(d.train))")
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", code, str(stdlib_files), str(tmp_path / "cache")], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    logs = [out for out, _ in outs]
    assert sum("trained tokenizer" in log for log in logs) == 1, logs
    assert sum("reusing cache" in log for log in logs) == 1, logs
    assert len({log.strip().splitlines()[-1] for log in logs}) == 1  # the same token count


def test_the_pruner_and_the_validation_mine_natural_examples_from_different_documents(stdlib_files, tmp_path):
    """Natural task examples: the pruner mines its own from the training split, validation from the
    held-out split, so a circuit is never judged on an example its search saw."""
    cfg = make_cfg(stdlib_files, tmp_path)
    corpus = collect_corpus(cfg)
    names = {split: {d.name for d in corpus.split(split)} for split in ("train", "val")}
    assert names["train"] and names["val"] and not names["train"] & names["val"]
    for split, texts in (("train", corpus_texts(cfg, "train", 10**9)), ("val", validation_texts(cfg, 10**9))):
        assert texts == [corpus.read(d) for d in corpus.split(split)]
    assert validation_texts(cfg, 1) == [corpus.read(corpus.split("val")[0])]  # stops once max_bytes is reached
