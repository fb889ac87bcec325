"""Durable file primitives shared by the token cache, checkpoints and circuit artefacts.

A reader must see either the old or the new content of a file, never a torn one, even after a
crash or power cut: write a temporary file in the same directory (os.replace is atomic only within
one file system), fsync it, rename it over the target, then fsync the directory entry.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator

TMP_PREFIX = ".tmp-"  # temporary names start with this; cleanups may delete such entries
_HASH_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename/creation inside `path` durable (a file's fsync does not cover its entry)."""
    if os.name == "nt":  # Windows cannot open directories; NTFS journals the metadata itself.
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _naming(error: OSError, path: Path) -> OSError:
    """`error` with the file it concerns: a failed write (full disk, file too large) names none."""
    if error.filename is None and error.errno is not None:
        return type(error)(error.errno, error.strerror, str(path))
    return error


def write_new_file(path: Path, data: bytes) -> None:
    """Create `path` (which must not exist), write `data` and fsync it."""
    try:
        with open(path, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _naming(e, path) from e


def append_text(path: Path, text: str) -> None:
    """Append to a text file (not atomic: for logs whose torn last line readers tolerate)."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise _naming(e, path) from e


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Stream into a temporary file beside `path`; on success fsync it and rename it over `path`.
    On an exception the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{secrets.token_hex(6)}")
    try:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_save_figure(fig, path: Path, **savefig_kwargs) -> Path:
    """Save a matplotlib Figure atomically; the format follows the file's suffix."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip("."), **savefig_kwargs)
    return path
