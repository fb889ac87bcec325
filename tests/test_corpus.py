"""Tests for sparse_gpt.corpus: sources, ordering, split, caps, decoding and clear errors."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sparse_gpt import corpus as corpus_mod
from sparse_gpt.config import DataConfig
from sparse_gpt.corpus import DataError, collect_corpus, name_fraction


def write(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def fake_paths(monkeypatch, **paths: Path) -> None:
    """Point sysconfig.get_paths() (as corpus.py sees it) at temporary directories."""
    monkeypatch.setattr(corpus_mod.sysconfig, "get_paths", lambda: {k: str(v) for k, v in paths.items()})


@pytest.fixture(scope="module")
def stdlib_corpus():
    return collect_corpus(DataConfig(source="stdlib"))


def test_stdlib_excludes_site_packages_and_is_sorted(stdlib_corpus):
    names = [d.name for d in stdlib_corpus.documents]
    assert len(names) > 100
    assert names == sorted(names)
    assert not any(part in ("site-packages", "dist-packages")
                   for n in names for part in n.split("/"))
    assert all(n.endswith(".py") for n in names)
    assert "os.py" in names


def test_stdlib_split_is_deterministic_and_both_nonempty(stdlib_corpus):
    again = collect_corpus(DataConfig(source="stdlib"))
    assert again.manifest() == stdlib_corpus.manifest()
    assert again.manifest_hash() == stdlib_corpus.manifest_hash()
    n_val = len(stdlib_corpus.split("val"))
    assert 0 < n_val < len(stdlib_corpus.documents)
    # The split follows the name hash, so it is the same on every machine.
    for d in stdlib_corpus.documents[:50]:
        assert (d.split == "val") == (name_fraction(d.name) < 0.05)


def test_stdlib_exclusion_on_a_synthetic_tree(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    write(lib / "os.py", "import sys\n")
    write(lib / "json" / "__init__.py", "x = 1\n")
    write(lib / "site-packages" / "pip" / "main.py", "pip = 1\n")
    write(lib / "dist-packages" / "apt.py", "apt = 1\n")
    fake_paths(monkeypatch, stdlib=lib)
    c = collect_corpus(DataConfig(source="stdlib"))
    assert [d.name for d in c.documents] == ["json/__init__.py", "os.py"]


def test_max_bytes_takes_a_sorted_prefix(stdlib_corpus):
    cap = 200_000
    c = collect_corpus(DataConfig(source="stdlib", max_bytes=cap))
    assert 0 < c.total_bytes <= cap
    n = len(c.documents)
    assert [d.name for d in c.documents] == [d.name for d in stdlib_corpus.documents[:n]]
    assert c.total_bytes + stdlib_corpus.documents[n].size > cap  # stopped at the cap
    assert c.manifest_hash() != stdlib_corpus.manifest_hash()


def test_files_source_directory_filters_extensions(tmp_path):
    src = tmp_path / "src"
    write(src / "a.py", "a = 1\n")
    write(src / "pkg" / "b.py", "b = 2\n")
    write(src / "pkg" / "c.pyi", "c: int\n")
    write(src / "notes.txt", "hello\n")
    c = collect_corpus(DataConfig(source="files", path=str(src)))
    assert [d.name for d in c.documents] == ["a.py", "pkg/b.py"]
    c2 = collect_corpus(DataConfig(source="files", path=str(src), extensions=[".py", ".pyi"]))
    assert [d.name for d in c2.documents] == ["a.py", "pkg/b.py", "pkg/c.pyi"]
    assert c2.manifest_hash() != c.manifest_hash()
    assert c.read(c.documents[1]) == "b = 2\n"
    assert {d.split for d in c.documents} == {"train", "val"}


def test_files_source_glob(tmp_path):
    src = tmp_path / "src"
    write(src / "a.txt", "alpha\n")
    write(src / "deep" / "b.txt", "beta\n")
    write(src / "deep" / "c.py", "gamma = 3\n")
    c = collect_corpus(DataConfig(source="files", path=str(src / "**" / "*.txt")))
    assert [d.name for d in c.documents] == ["a.txt", "deep/b.txt"]
    with pytest.raises(DataError, match="neither a directory nor a glob"):
        collect_corpus(DataConfig(source="files", path=str(src / "missing")))


def test_manifest_records_hash_size_split(tmp_path):
    src = tmp_path / "src"
    write(src / "a.py", "a = 1\n")
    write(src / "b.py", "bb = 22\n")
    c = collect_corpus(DataConfig(source="files", path=str(src)))
    m = c.manifest()
    assert [e["name"] for e in m] == ["a.py", "b.py"]
    assert m[1]["size"] == 8 and len(m[1]["sha256"]) == 64
    assert {e["split"] for e in m} == {"train", "val"}
    # Settings that change the content are part of the hash.
    other = collect_corpus(DataConfig(source="files", path=str(src), val_fraction=0.5))
    assert other.manifest_hash() != c.manifest_hash()
    write(src / "b.py", "bb = 23\n")
    assert collect_corpus(DataConfig(source="files", path=str(src))).manifest_hash() != c.manifest_hash()


def test_file_changed_after_collection_is_detected(tmp_path):
    src = tmp_path / "src"
    write(src / "a.py", "a = 1\n")
    write(src / "b.py", "b = 1\n")
    c = collect_corpus(DataConfig(source="files", path=str(src)))
    write(src / "a.py", "a = 2\n")
    with pytest.raises(DataError, match="changed on disk"):
        c.read(c.documents[0])


def test_split_on_tiny_corpora_keeps_both_nonempty(tmp_path):
    src = tmp_path / "src"
    for i in range(2):
        write(src / f"m{i}.py", f"x = {i}\n")
    for frac in (0.01, 0.99):
        c = collect_corpus(DataConfig(source="files", path=str(src), val_fraction=frac))
        assert sorted(d.split for d in c.documents) == ["train", "val"]
    write(tmp_path / "one" / "only.py", "x = 1\n")
    with pytest.raises(DataError, match="need at least 2"):
        collect_corpus(DataConfig(source="files", path=str(tmp_path / "one")))


def test_split_fraction_roughly_honoured(tmp_path):
    src = tmp_path / "src"
    for i in range(400):
        write(src / f"m{i:03d}.py", f"x = {i}\n")
    c = collect_corpus(DataConfig(source="files", path=str(src), val_fraction=0.25))
    assert 60 < len(c.split("val")) < 140


def test_non_utf8_file_decodes_with_replacement(tmp_path):
    src = tmp_path / "src"
    write(src / "latin1.py", b"name = 'caf\xe9'\n")
    write(src / "ok.py", "ok = True\n")
    c = collect_corpus(DataConfig(source="files", path=str(src)))
    text = c.read(c.documents[0])
    assert text == "name = 'caf\ufffd'\n"


def test_empty_corpus_errors_name_source_and_path(tmp_path):
    src = tmp_path / "empty"
    write(src / "__init__.py", "")
    write(src / "b.py", "")
    with pytest.raises(DataError, match=r"empty corpus: data.source='files'.*empty"):
        collect_corpus(DataConfig(source="files", path=str(src)))
    with pytest.raises(DataError, match="empty corpus"):
        collect_corpus(DataConfig(source="files", path=str(tmp_path / "*.nothing")))


def test_empty_documents_are_dropped(tmp_path):
    src = tmp_path / "src"
    write(src / "__init__.py", "")
    write(src / "a.py", "a = 1\n")
    write(src / "b.py", "b = 1\n")
    c = collect_corpus(DataConfig(source="files", path=str(src)))
    assert [d.name for d in c.documents] == ["a.py", "b.py"]


def test_site_packages_dedupes_by_content(tmp_path, monkeypatch):
    pure, plat = tmp_path / "pure", tmp_path / "plat"
    write(pure / "aaa" / "util.py", "def f():\n    return 1\n")
    write(pure / "zzz" / "util.py", "def f():\n    return 1\n")  # vendored copy
    write(pure / "mmm.py", "m = 1\n")
    write(plat / "native" / "core.py", "core = 1\n")
    fake_paths(monkeypatch, purelib=pure, platlib=plat)
    c = collect_corpus(DataConfig(source="site-packages"))
    names = [d.name for d in c.documents]
    assert names == ["platlib/native/core.py", "purelib/aaa/util.py", "purelib/mmm.py"]
    # One root: no prefixes.
    fake_paths(monkeypatch, purelib=pure, platlib=pure)
    c = collect_corpus(DataConfig(source="site-packages"))
    assert [d.name for d in c.documents] == ["aaa/util.py", "mmm.py"]


def test_hf_source_without_datasets_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(DataError, match=r"pip install sparse_gpt\[hf\]"):
        collect_corpus(DataConfig(source="hf", path="some/dataset"))


def test_hf_source_with_a_fake_datasets_module(monkeypatch):
    class FakeDataset(list):
        column_names = ["text", "id"]

        def select_columns(self, cols):
            return FakeDataset({c: row[c] for c in cols} for row in self)

    rows = FakeDataset([{"text": "a = 1\n", "id": 0}, {"text": "b = 2\n", "id": 1},
                        {"text": None, "id": 2}, {"text": "c = 3\n", "id": 3}])
    calls = []

    class FakeModule:
        @staticmethod
        def load_dataset(path, name, split):
            calls.append((path, name, split))
            return rows

    monkeypatch.setitem(sys.modules, "datasets", FakeModule)
    c = collect_corpus(DataConfig(source="hf", path="org/code", hf_split="train"))
    assert calls == [("org/code", None, "train")]
    assert [d.name for d in c.documents] == ["0", "1", "3"]
    assert c.read(c.documents[2]) == "c = 3\n"
    with pytest.raises(DataError, match="no column 'content'"):
        collect_corpus(DataConfig(source="hf", path="org/code", hf_text_field="content"))
