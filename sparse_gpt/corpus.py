"""Where the training text comes from: a list of named, hashed documents split into train and val.

Sources (DataConfig.source):
- stdlib: the interpreter's standard-library `.py` files (no site-packages / dist-packages).
- site-packages: the `.py` files of the installed packages, deduplicated by content.
- files: a directory (recursive, filtered by DataConfig.extensions) or a glob pattern.
- hf: a dataset loadable by `datasets.load_dataset` (optional dependency).

Every document has a stable name, the sha256 and size of its raw bytes, and a split decided by a
hash of its name, so the same files always give the same train/val split on any machine. The
manifest hash covers all of that plus the settings that change the content; data.py keys its token
cache on it.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import sysconfig
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from sparse_gpt.config import DataConfig

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages"})
GLOB_CHARS = frozenset("*?[")


class DataError(ValueError):
    """A corpus or token data set that cannot be used as configured."""


@dataclass(frozen=True)
class Document:
    """One text document. `name` is stable across machines (a relative path or an index)."""

    name: str
    sha256: str
    size: int   # bytes of the raw (undecoded) content
    split: str  # 'train' or 'val'


@dataclass
class Corpus:
    """Documents in name order, with the settings that produced them and a way to read each."""

    documents: list[Document]
    settings: dict[str, Any]   # source settings that change content (part of the manifest hash)
    roots: list[str]           # where the documents were found (provenance only, not hashed)
    read_raw: Callable[[str], bytes] = field(repr=False)  # document name -> raw bytes
    not_text: list[str] = field(default_factory=list)  # names of documents that are not UTF-8 text

    def read(self, doc: Document) -> str:
        """The document's text, decoded as UTF-8 with replacement so odd bytes cannot stop a run."""
        raw = self.read_raw(doc.name)
        if hashlib.sha256(raw).hexdigest() != doc.sha256:
            raise DataError(f"document {doc.name!r} changed on disk since the corpus was collected "
                            f"(sha256 no longer matches); collect the corpus again")
        return raw.decode("utf-8", errors="replace")

    def split(self, name: str) -> list[Document]:
        """The documents of one split ('train' or 'val'), in name order."""
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return [d for d in self.documents if d.split == name]

    def manifest(self) -> list[dict]:
        """One dict per document (name, sha256, size, split), sorted by name."""
        return [asdict(d) for d in sorted(self.documents, key=lambda d: d.name)]

    def manifest_hash(self) -> str:
        """sha256 over the sorted manifest and the content-changing source settings."""
        blob = json.dumps({"settings": self.settings, "documents": self.manifest()},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(d.size for d in self.documents)


def collect_corpus(cfg: DataConfig) -> Corpus:
    """Find the documents of `cfg.source`, cap them at cfg.max_bytes and split them train/val."""
    names, read_raw, roots, source_settings = _open_source(cfg)
    if cfg.exclude:
        names = [n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in cfg.exclude)]
        source_settings = {**source_settings, "exclude": sorted(cfg.exclude)}
    docs, not_text = _make_documents(names, read_raw, cfg.max_bytes, dedupe=cfg.source == "site-packages")
    if not docs:
        where = f"data.path={cfg.path!r}" if cfg.path else f"under {', '.join(roots) or '(nothing)'}"
        cap = f" within max_bytes={cfg.max_bytes}" if cfg.max_bytes is not None else ""
        raise DataError(f"empty corpus: data.source={cfg.source!r} ({where}) gave no non-empty "
                        f"documents{cap}")
    settings = {"source": cfg.source, "max_bytes": cfg.max_bytes, "val_fraction": cfg.val_fraction,
                **source_settings}
    return Corpus(documents=_assign_splits(docs, cfg.val_fraction), settings=settings,
                  roots=roots, read_raw=read_raw, not_text=not_text)


def _open_source(cfg: DataConfig) -> tuple[list[str], Callable[[str], bytes], list[str], dict]:
    """(sorted document names, name -> raw bytes, roots, extra content-changing settings)."""
    if cfg.source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = _scan_dir(root, (".py",), exclude=EXCLUDED_DIRS)
        return sorted(files), _file_reader(files), [str(root)], {}
    if cfg.source == "site-packages":
        files, roots = _site_packages_files()
        return sorted(files), _file_reader(files), roots, {}
    if cfg.source == "files":
        if not cfg.path:
            raise DataError("data.source='files' needs data.path (a directory or a glob pattern)")
        files, roots = _files_source(cfg.path, cfg.extensions)
        return (sorted(files), _file_reader(files), roots,
                {"path": cfg.path, "extensions": sorted(cfg.extensions)})
    if cfg.source == "hf":
        if not cfg.path:
            raise DataError("data.source='hf' needs data.path (a dataset name or local path)")
        texts = _load_hf_texts(cfg)
        return (sorted(texts), texts.__getitem__, [cfg.path],
                {"path": cfg.path, "hf_config": cfg.hf_config, "hf_split": cfg.hf_split,
                 "hf_text_field": cfg.hf_text_field})
    raise DataError(f"unknown data.source {cfg.source!r}; use stdlib, site-packages, files or hf")


# --- finding files ---------------------------------------------------------------------------

def _scan_dir(root: Path, extensions: tuple[str, ...] | list[str], exclude: frozenset[str] = frozenset(),
              prefix: str = "") -> dict[str, Path]:
    """name -> path of the files under root with a wanted suffix, skipping excluded dir names."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in exclude]
        for fn in filenames:
            if Path(fn).suffix in extensions:
                path = Path(dirpath) / fn
                if path.is_file():  # skips broken symlinks
                    found[prefix + path.relative_to(root).as_posix()] = path
    return found


def _site_packages_files() -> tuple[dict[str, Path], list[str]]:
    """The .py files of purelib and platlib (one root when they are the same directory)."""
    paths = sysconfig.get_paths()
    roots: list[Path] = []
    for key in ("purelib", "platlib"):
        p = Path(paths[key]).resolve()
        if p not in roots and p.is_dir():
            roots.append(p)
    entries: dict[str, Path] = {}
    for key, root in zip(("purelib", "platlib"), roots):
        # Only prefix names when two roots could produce the same relative path.
        prefix = f"{key}/" if len(roots) > 1 else ""
        entries.update(_scan_dir(root, (".py",), prefix=prefix))
    return entries, [str(r) for r in roots]


def _files_source(path: str, extensions: list[str]) -> tuple[dict[str, Path], list[str]]:
    """A directory (recursive, by suffix) or a glob pattern (every matching file)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return _scan_dir(p, tuple(extensions)), [str(p)]
    if not GLOB_CHARS.intersection(path):
        raise DataError(f"data.path {path!r} is neither a directory nor a glob pattern "
                        f"(source='files')")
    base = _glob_base(str(p))
    entries = {}
    for match in glob.glob(str(p), recursive=True):
        m = Path(match)
        if m.is_file():
            entries[m.relative_to(base).as_posix()] = m
    return entries, [str(base)]


def _glob_base(pattern: str) -> Path:
    """The longest leading directory of a glob pattern with no wildcard in it."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts:
        if GLOB_CHARS.intersection(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _load_hf_texts(cfg: DataConfig) -> dict[str, bytes]:
    """name -> UTF-8 bytes of each row's text (up to max_bytes); `datasets` is imported only here."""
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError as e:
        raise DataError("data.source='hf' needs the HF `datasets` library: "
                        "pip install sparse_gpt[hf]") from e
    ds = _load_hf_dataset(datasets, cfg)
    if cfg.hf_text_field not in ds.column_names:
        raise DataError(f"HF dataset {cfg.path!r} has no column {cfg.hf_text_field!r} "
                        f"(data.hf_text_field); columns: {', '.join(ds.column_names)}")
    width = len(str(len(ds)))
    out: dict[str, bytes] = {}
    total = 0
    # Row by row (one column only) so a large dataset is never materialised as a Python list.
    for i, row in enumerate(ds.select_columns([cfg.hf_text_field])):
        text = row[cfg.hf_text_field]
        raw = text.encode("utf-8") if isinstance(text, str) else b""
        # Zero-padded indices so that name order is row order.
        out[f"{i:0{width}d}"] = raw
        total += len(raw)
        if cfg.max_bytes is not None and total > cfg.max_bytes:
            break  # the rest could not be taken under the cap anyway
    return out


def _load_hf_dataset(datasets, cfg: DataConfig):
    """datasets.load_dataset for `cfg`, its failures as one-line DataErrors, without the library's
    progress bars (its "Generating train split" lines would bury the training log's first lines)."""
    # getattr: older versions of the library (and stand-ins for it) may lack these switches
    is_on = getattr(datasets, "is_progress_bar_enabled", lambda: False)
    bars_were_on = is_on()
    if bars_were_on:
        datasets.disable_progress_bars()
    where = f"HF dataset {cfg.path!r}" + (f" (config {cfg.hf_config!r})" if cfg.hf_config else "")
    try:
        return datasets.load_dataset(cfg.path, cfg.hf_config, split=cfg.hf_split)
    except ValueError as e:  # an unknown split or config name; the library lists the valid ones
        if "split" in str(e).lower():
            raise DataError(f"{where} has no split {cfg.hf_split!r} (data.hf_split): {e}") from None
        raise DataError(f"{where}: {e} (data.hf_config)") from None
    except OSError as e:  # no such local path, or the Hub cannot be reached
        raise DataError(f"{where} could not be loaded: {e}") from None
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _file_reader(files: dict[str, Path]) -> Callable[[str], bytes]:
    return lambda name: files[name].read_bytes()


# --- documents, cap, split -------------------------------------------------------------------

def _is_text(raw: bytes) -> bool:
    """UTF-8 without NUL bytes: what a text document looks like (binary files fail one or both)."""
    if b"\0" in raw:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _make_documents(names: list[str], read_raw: Callable[[str], bytes], max_bytes: Optional[int],
                    dedupe: bool) -> tuple[list[Document], list[str]]:
    """Hash documents in name order until the next one would pass max_bytes; also return the
    names of those that are not UTF-8 text, which callers should warn about.

    Empty documents are dropped (they would only add an end-of-text token). With `dedupe`, a
    document whose content was already taken under an earlier name is skipped and not counted.
    """
    docs: list[Document] = []
    not_text: list[str] = []
    seen: set[str] = set()
    total = 0
    for name in names:
        raw = read_raw(name)
        if not raw:
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if dedupe and digest in seen:
            continue
        if max_bytes is not None and total + len(raw) > max_bytes:
            break
        seen.add(digest)
        total += len(raw)
        docs.append(Document(name, digest, len(raw), ""))
        if not _is_text(raw):
            not_text.append(name)
    return docs, not_text


def name_fraction(name: str) -> float:
    """A number in [0, 1) that depends only on the document name (stable across machines)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _assign_splits(docs: list[Document], val_fraction: float) -> list[Document]:
    """Split by name hash; on tiny corpora move the nearest-to-threshold document so both splits
    are non-empty."""
    if len(docs) < 2:
        raise DataError(f"the corpus has {len(docs)} non-empty document(s); need at least 2 so that "
                        f"train and val are both non-empty")
    frac = {d.name: name_fraction(d.name) for d in docs}
    val = {d.name for d in docs if frac[d.name] < val_fraction}
    if not val:
        val = {min(docs, key=lambda d: (frac[d.name], d.name)).name}
    elif len(val) == len(docs):
        val.discard(max(docs, key=lambda d: (frac[d.name], d.name)).name)
    return [Document(d.name, d.sha256, d.size, "val" if d.name in val else "train") for d in docs]


def iter_texts(corpus: Corpus, docs: list[Document]) -> Iterator[str]:
    """Texts of `docs`, read lazily so a large corpus never sits in memory at once."""
    for d in docs:
        yield corpus.read(d)
