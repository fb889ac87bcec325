"""Self-contained, atomic, checksummed checkpoints: saving one and loading one back verified.

Crash safety rests on three rules. A checkpoint is assembled in a hidden ``.tmp-*`` sibling and only
renamed to ``step_NNNNNN`` once every file (``checksums.json`` last) is on disk. ``LATEST`` is
replaced atomically and only ever names a renamed, complete directory. Nothing ``LATEST`` names is
ever deleted or overwritten. A process killed at any point therefore leaves ``LATEST`` absent or
naming a checkpoint that verifies; leftovers are removed by the next save.

Only one process may save into a run directory at a time, since a save removes other ``.tmp-*``
dirs; training holds an exclusive lock on its run directory for that reason.
The directory layout lives in checkpoint_layout.py, the weights format in checkpoint_codec.py and
the train state in checkpoint_resume.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .checkpoint_codec import FORMAT_VERSION, decode_model, dense_sizes, encode_model, read_header
from .checkpoint_layout import (CHECKPOINTS_DIR, CHECKSUMS_FILE, CONFIG_FILE, FILE_NAME_RE, LATEST_FILE,
                                MODEL_FILE, REQUIRED_FILES, RESERVED_FILES, TOKENIZER_FILE,
                                TRAIN_STATE_FILE, CheckpointError, cleanup, latest_checkpoint,
                                latest_name, move_aside, resolve_checkpoint, step_dir_name,
                                write_latest)
from .checkpoint_resume import decode_train_state, encode_train_state
from .fileio import TMP_PREFIX, fsync_dir, sha256_file, write_new_file

__all__ = ["Checkpoint", "CheckpointError", "checkpoint_size_report", "latest_checkpoint",
           "load_checkpoint", "load_state_dict", "load_train_state", "resolve_checkpoint",
           "save_checkpoint", "verify_checkpoint"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")

MapLocation = Union[str, torch.device]


# --------------------------------------------------------------------------------------------
# Verifying
# --------------------------------------------------------------------------------------------

def _read_manifest(ckpt_dir: Path) -> dict:
    """Load and sanity-check checksums.json (but none of the files it lists)."""
    manifest_path = ckpt_dir / CHECKSUMS_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} is missing {CHECKSUMS_FILE}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} has a corrupt {CHECKSUMS_FILE}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {ckpt_dir} has {CHECKSUMS_FILE} with an unsupported "
                              f"format_version (expected {FORMAT_VERSION})")
    files = manifest.get("files")
    if not isinstance(manifest.get("step"), int) or not isinstance(files, dict):
        raise CheckpointError(f"checkpoint {ckpt_dir} has a malformed {CHECKSUMS_FILE} "
                              "(needs an integer 'step' and a 'files' table)")
    for name, entry in files.items():
        # Names come from disk: refuse anything that could point outside the checkpoint dir.
        if (not FILE_NAME_RE.fullmatch(name) or not isinstance(entry, dict)
                or not isinstance(entry.get("size"), int)
                or not _SHA256_RE.fullmatch(str(entry.get("sha256")))):
            raise CheckpointError(f"checkpoint {ckpt_dir} has a malformed {CHECKSUMS_FILE} "
                                  f"entry for {name!r}")
    for name in REQUIRED_FILES:
        if name not in files:
            raise CheckpointError(f"checkpoint {ckpt_dir} is missing {name} "
                                  f"(not listed in {CHECKSUMS_FILE})")
    return manifest


def _check_present(ckpt_dir: Path, manifest: dict) -> None:
    for name in manifest["files"]:
        if not (ckpt_dir / name).is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir} is missing {name}")


def _check_entry(ckpt_dir: Path, name: str, entry: dict, size: int, digest: str) -> None:
    if size != entry["size"]:
        raise CheckpointError(f"checkpoint {ckpt_dir}: {name} is corrupt "
                              f"(size {size} bytes, expected {entry['size']})")
    if digest != entry["sha256"]:
        raise CheckpointError(f"checkpoint {ckpt_dir}: {name} is corrupt (sha256 mismatch)")


def _verify_files(ckpt_dir: Path, manifest: dict, skip: frozenset[str] = frozenset()) -> None:
    _check_present(ckpt_dir, manifest)
    for name, entry in manifest["files"].items():
        if name in skip:
            continue
        path = ckpt_dir / name
        _check_entry(ckpt_dir, name, entry, path.stat().st_size, sha256_file(path))


def _read_verified(ckpt_dir: Path, name: str, manifest: dict) -> bytes:
    """Read a listed file once and check those very bytes, so what we parse is what we hashed."""
    entry = manifest["files"].get(name)
    if entry is None:
        raise CheckpointError(f"checkpoint {ckpt_dir} is missing {name} "
                              f"(not listed in {CHECKSUMS_FILE})")
    path = ckpt_dir / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} is missing {name}")
    data = path.read_bytes()
    _check_entry(ckpt_dir, name, entry, len(data), hashlib.sha256(data).hexdigest())
    return data


def verify_checkpoint(ckpt_dir: Path) -> dict:
    """Check that every file listed in checksums.json is present with the right size and sha256.

    Returns the parsed checksums.json. Raises CheckpointError naming the checkpoint directory and
    the first missing or corrupt file.
    """
    ckpt_dir = Path(ckpt_dir)
    manifest = _read_manifest(ckpt_dir)
    _verify_files(ckpt_dir, manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _parse_model(data: bytes, ckpt_dir: Path, map_location: MapLocation) -> dict[str, torch.Tensor]:
    state_dict = decode_model(data, f"checkpoint {ckpt_dir}: {MODEL_FILE}")
    return {name: t.to(map_location) for name, t in state_dict.items()}


def load_state_dict(ckpt_dir: Path, map_location: MapLocation = "cpu") -> dict[str, torch.Tensor]:
    """Load the dense weights of a checkpoint (a run dir resolves to its latest), verifying
    model.safetensors against checksums.json first."""
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    manifest = _read_manifest(ckpt_dir)
    return _parse_model(_read_verified(ckpt_dir, MODEL_FILE, manifest), ckpt_dir, map_location)


def load_train_state(ckpt_dir: Path) -> Optional[dict]:
    """Load the verified train state of a checkpoint (tensors on CPU), or None if it was saved
    without one."""
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    manifest = _read_manifest(ckpt_dir)
    if TRAIN_STATE_FILE not in manifest["files"]:
        return None
    return decode_train_state(_read_verified(ckpt_dir, TRAIN_STATE_FILE, manifest),
                              f"checkpoint {ckpt_dir}: {TRAIN_STATE_FILE}")


def _read_text(ckpt_dir: Path, name: str) -> str:
    try:
        return (ckpt_dir / name).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"checkpoint {ckpt_dir}: {name} is not UTF-8 text ({e})") from e


@dataclass
class Checkpoint:
    """A verified, loaded checkpoint."""

    path: Path
    step: int
    state_dict: dict[str, torch.Tensor]
    config_yaml: str
    tokenizer_path: Path
    train_state: Optional[dict]


def load_checkpoint(path: Path, map_location: MapLocation = "cpu",
                    with_train_state: bool = True) -> Checkpoint:
    """Resolve ``path`` (run dir or checkpoint dir), verify every file, and load it.

    If the checkpoint fails verification this raises CheckpointError naming it; it never falls
    back to another checkpoint, so a resumed run cannot silently rewind.
    """
    ckpt_dir = resolve_checkpoint(path)
    manifest = _read_manifest(ckpt_dir)
    # The large files are hashed from the very bytes we parse below instead of here.
    big = frozenset({MODEL_FILE, TRAIN_STATE_FILE})
    _verify_files(ckpt_dir, manifest, skip=big)
    model_bytes = _read_verified(ckpt_dir, MODEL_FILE, manifest)
    state_dict = _parse_model(model_bytes, ckpt_dir, map_location)
    train_state = None
    if TRAIN_STATE_FILE in manifest["files"]:
        data = _read_verified(ckpt_dir, TRAIN_STATE_FILE, manifest)
        if with_train_state:
            train_state = decode_train_state(data, f"checkpoint {ckpt_dir}: {TRAIN_STATE_FILE}")
    return Checkpoint(
        path=ckpt_dir,
        step=manifest["step"],
        state_dict=state_dict,
        config_yaml=_read_text(ckpt_dir, CONFIG_FILE),
        tokenizer_path=ckpt_dir / TOKENIZER_FILE,
        train_state=train_state,
    )


def checkpoint_size_report(ckpt_dir: Path) -> dict:
    """Compare the size of model.safetensors with what dense saves of the same tensors would take.

    Reads only the safetensors header. Dense sizes count tensor payload bytes (no header):
    ``dense_bytes`` in each tensor's original dtype, ``dense_fp32_bytes`` as if all were float32.
    """
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    path = ckpt_dir / MODEL_FILE
    where = f"checkpoint {ckpt_dir}: {MODEL_FILE}"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt_dir} is missing {MODEL_FILE}")
    sizes = dense_sizes(read_header(path, where), where)
    file_bytes = path.stat().st_size
    return {
        "file_bytes": file_bytes,
        "dense_bytes": sizes["dense_bytes"],
        "dense_fp32_bytes": 4 * sizes["numel"],
        "ratio_vs_dense": file_bytes / sizes["dense_bytes"] if sizes["dense_bytes"] else float("nan"),
        "numel": sizes["numel"],
        "n_tensors": sizes["n_tensors"],
        "n_compact": sizes["n_compact"],
    }


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

def _check_save_args(step: int, tokenizer_path: Path, config_yaml: str,
                     extra_files: dict[str, bytes], keep: int) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"step must be a non-negative int, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise CheckpointError(f"keep must be an int >= 1 (the latest is always kept), got {keep!r}")
    if not isinstance(config_yaml, str):
        raise CheckpointError(
            f"config_yaml must be the YAML text, got {type(config_yaml).__name__}")
    if not Path(tokenizer_path).is_file():
        raise CheckpointError(f"tokenizer file {tokenizer_path} does not exist")
    for name, data in extra_files.items():
        if not isinstance(name, str) or not FILE_NAME_RE.fullmatch(name):
            raise CheckpointError(f"extra file name {name!r} must be a plain file name "
                                  "(letters, digits, '.', '_', '-'; no directories)")
        if name in RESERVED_FILES:
            raise CheckpointError(f"extra file name {name!r} is reserved for the checkpoint itself")
        if not isinstance(data, (bytes, bytearray)):
            raise CheckpointError(f"extra file {name!r} must be bytes, got {type(data).__name__}")


def _serialise(step: int, state_dict: dict[str, torch.Tensor], config_yaml: str,
               tokenizer_path: Path, train_state: Optional[dict],
               extra_files: dict[str, bytes]) -> dict[str, bytes]:
    """Every file of the checkpoint as bytes, ``checksums.json`` (which lists the others) last."""
    contents: dict[str, bytes] = {
        CONFIG_FILE: config_yaml.encode("utf-8"),
        MODEL_FILE: encode_model(state_dict),
        TOKENIZER_FILE: Path(tokenizer_path).read_bytes(),
    }
    if train_state is not None:
        contents[TRAIN_STATE_FILE] = encode_train_state(train_state)
    contents.update({k: bytes(v) for k, v in extra_files.items()})
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "files": {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)}
                  for k, v in contents.items()},
    }
    contents[CHECKSUMS_FILE] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    return contents


def _write_step_dir(root: Path, name: str, contents: dict[str, bytes]) -> Path:
    """Assemble the files in a temp sibling, then rename it to ``root/name`` in one step."""
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        fsync_dir(root.parent)
    final = root / name
    tmp = root / f"{TMP_PREFIX}{name}-{secrets.token_hex(6)}"
    os.mkdir(tmp)
    try:
        for file_name, data in contents.items():  # checksums.json last: see _serialise
            write_new_file(tmp / file_name, data)
        fsync_dir(tmp)
        if final.exists() or final.is_symlink():
            move_aside(final)  # left by an earlier attempt that never became LATEST
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    return final


def save_checkpoint(run_dir: Path, step: int, state_dict: dict[str, torch.Tensor],
                    config_yaml: str, tokenizer_path: Path, train_state: Optional[dict] = None,
                    extra_files: Optional[dict[str, bytes]] = None, keep: int = 2) -> Path:
    """Atomically save a checkpoint as ``run_dir/checkpoints/step_NNNNNN`` and point LATEST at it.

    ``keep`` is how many complete checkpoints up to and including the new one to retain.
    Returns the new checkpoint directory. Refuses to overwrite the checkpoint LATEST currently
    names, since no directory swap is atomic and a crash mid-swap would leave LATEST dangling.
    """
    extra_files = dict(extra_files or {})
    _check_save_args(step, tokenizer_path, config_yaml, extra_files, keep)
    root = Path(run_dir) / CHECKPOINTS_DIR
    name = step_dir_name(step)
    # LATEST raw: a LATEST naming a deleted dir must not block the save that repairs it.
    if (root / name).exists() and latest_name(run_dir) == name:
        raise CheckpointError(f"refusing to overwrite {root / name}: it is the checkpoint "
                              f"{CHECKPOINTS_DIR}/{LATEST_FILE} names; save under another step")
    # Serialise before touching the disk so that bad input leaves nothing behind.
    contents = _serialise(step, state_dict, config_yaml, tokenizer_path, train_state, extra_files)
    final = _write_step_dir(root, name, contents)
    write_latest(root, name)
    cleanup(root, name, keep)
    return final
