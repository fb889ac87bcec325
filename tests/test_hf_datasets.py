"""The `hf` data source with the real Hugging Face `datasets` library, on small local datasets.

A JSON-lines dataset and a Parquet dataset of real stdlib source (one module per row, in a column
that is not called `text`) are written to disk, and configs/tiny.yaml is trained on each through
train.py's main (in-process, tests/inprocess.py) with `data.source: hf`. CI installs the `hf` extra and sets SPARSE_GPT_REQUIRE_HF=1, so
there a missing `datasets` fails instead of skipping.
"""
from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

import pytest

if os.environ.get("SPARSE_GPT_REQUIRE_HF") != "1":
    pytest.importorskip("datasets", reason="the hf extra is not installed (pip install -e '.[hf]')")
import datasets  # noqa: E402  (imported for real when SPARSE_GPT_REQUIRE_HF=1: a missing one fails)
import pyarrow  # noqa: E402
import pyarrow.parquet  # noqa: E402

from inprocess import Result, run_main, script_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIELD = "content"


def _rows(n: int = 24) -> list[dict]:
    """Real source files: the first `n` stdlib modules of 2-12 kB, with a second column."""
    rows = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if 2_000 <= len(text) <= 12_000:
            rows.append({"path": path.name, FIELD: text})
        if len(rows) == n:
            break
    return rows


def _jsonl(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True)
    with open(directory / "train.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return directory


def _parquet(directory: Path, rows: list[dict]) -> Path:
    directory.mkdir(parents=True)
    table = pyarrow.table({k: [r[k] for r in rows] for k in rows[0]})
    pyarrow.parquet.write_table(table.slice(0, len(rows) // 2), directory / "train-00000-of-00002.parquet")
    pyarrow.parquet.write_table(table.slice(len(rows) // 2), directory / "train-00001-of-00002.parquet")
    return directory


def _train(capsys, out: Path, dataset: Path, cache: Path, *extra: str) -> Result:
    """train.py on the dataset, its main called in-process (tests/inprocess.py)."""
    sets = ["data.source=hf", f"data.path={dataset}", f"data.hf_text_field={FIELD}",
            f"data.cache_dir={cache}", "data.max_bytes=null", *extra]
    args = ["--config", "configs/tiny.yaml", "--no-progress", "--out", str(out), "--steps", "4"]
    for s in sets:
        args += ["--set", s]
    return run_main(script_main("train.py"), args, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_train_on_a_local_hf_dataset_with_manifest_and_cache_reuse(kind, tmp_path, capsys):
    rows = _rows()
    dataset = (_jsonl if kind == "jsonl" else _parquet)(tmp_path / kind, rows)
    cache = tmp_path / "cache"
    first = _train(capsys, tmp_path / "run1", dataset, cache)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert (tmp_path / "run1" / "checkpoints" / "LATEST").is_file()
    (cache_dir,) = [d for d in cache.iterdir() if d.is_dir()]
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["settings"].items() >= {"source": "hf", "path": str(dataset), "hf_config": None,
                                            "hf_split": "train", "hf_text_field": FIELD}.items()
    documents = manifest["documents"]
    assert len(documents) == len(rows)  # one document per row, in row order
    assert "reusing cache" not in first.stdout + first.stderr
    assert "Generating train split" not in first.stderr  # the library's progress bars are off

    again = _train(capsys, tmp_path / "run2", dataset, cache)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"reusing cache {cache_dir}" in again.stdout + again.stderr
    assert [d for d in cache.iterdir() if d.is_dir()] == [cache_dir]

    if kind != "jsonl":
        return
    # a changed row is a changed manifest: a new cache, the old one untouched
    rows[0][FIELD] += "\n# changed\n"
    changed = (_jsonl if kind == "jsonl" else _parquet)(tmp_path / f"{kind}-changed", rows)
    third = _train(capsys, tmp_path / "run3", changed, cache)
    assert third.returncode == 0, third.stderr[-2000:]
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2


def _one_line_error(proc: Result) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_text_field_and_missing_split_are_one_line_errors(tmp_path, capsys):
    dataset = _jsonl(tmp_path / "ds", _rows(4))
    cache = tmp_path / "cache"
    no_field = _one_line_error(_train(capsys, tmp_path / "a", dataset, cache, "data.hf_text_field=code"))
    assert "no column 'code'" in no_field and f"{FIELD}" in no_field and "path" in no_field
    no_split = _one_line_error(_train(capsys, tmp_path / "b", dataset, cache, "data.hf_split=validation"))
    assert "split 'validation'" in no_split and "train" in no_split
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("LATEST"))
    missing = _one_line_error(_train(capsys, tmp_path / "c", tmp_path / "nowhere", cache))
    assert "nowhere" in missing
