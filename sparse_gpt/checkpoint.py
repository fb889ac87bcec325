"""Self-contained, atomic, checksummed checkpoints.

Layout of a run directory::

    runs/tiny/checkpoints/
        LATEST                  # one line: the name of the newest complete checkpoint
        step_000200/
            config.yaml         # resolved run config
            model.safetensors   # weights; sparse ones as values + flat indices (+ -0.0 bitmask)
            tokenizer.json
            train_state.pt      # optional: optimiser state, step, RNG states, data position...
            <extra files>       # optional small files such as meta.json
            checksums.json      # written last: format version, step, sha256 + size of every file
        step_000400/
        ...

Crash safety rests on three rules. A checkpoint is assembled in a hidden ``.tmp-*`` sibling and only
renamed to ``step_NNNNNN`` once every file (``checksums.json`` last) is on disk. ``LATEST`` is
replaced atomically and only ever names a renamed, complete directory. Nothing ``LATEST`` names is
ever deleted or overwritten. A process killed at any point therefore leaves ``LATEST`` absent or
naming a checkpoint that verifies; leftovers are removed by the next save.

Only one process may save into a run directory at a time: a save removes other ``.tmp-*`` dirs.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional, Union

import safetensors.torch
import torch

from .fileio import TMP_PREFIX, atomic_write_text, fsync_dir, sha256_file, write_new_file

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "LATEST"
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TRAIN_STATE_FILE = "train_state.pt"
CHECKSUMS_FILE = "checksums.json"
REQUIRED_FILES = (CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE)
RESERVED_FILES = frozenset(REQUIRED_FILES + (TRAIN_STATE_FILE, CHECKSUMS_FILE))

# A tensor is stored compactly when fewer than this share of its elements are nonzero (and the
# compact form is actually smaller, which for 1- and 2-byte dtypes needs a lower share).
COMPACT_MAX_NONZERO_SHARE = 0.5
VALUES_SUFFIX = "::values"
INDICES_SUFFIX = "::indices"
NEGZERO_SUFFIX = "::negzero"
# Key in the safetensors header metadata holding our JSON description of the stored tensors.
METADATA_KEY = "sparse_gpt.checkpoint"

_STEP_DIR_RE = re.compile(r"step_(\d+)")
_EXTRA_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Same-size integer dtypes for viewing raw bit patterns: a bit-exact round trip must tell -0.0
# from 0.0 and keep NaN payloads, and integer kernels exist for every operation we need.
_BITS_DTYPES = MappingProxyType({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64})

MapLocation = Union[str, torch.device]


class CheckpointError(ValueError):
    """A checkpoint that cannot be saved, found, verified or loaded as asked."""


# --------------------------------------------------------------------------------------------
# Durable file primitives
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# Compact tensor encoding
# --------------------------------------------------------------------------------------------

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str, what: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"{what} has unknown dtype {name!r}")
    return dtype


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a 1-D bool mask into uint8, element 8*j + i in bit i of byte j."""
    padded = torch.zeros(-(-mask.numel() // 8) * 8, dtype=torch.uint8)
    padded[:mask.numel()] = mask
    weights = torch.ones(8, dtype=torch.uint8) << torch.arange(8, dtype=torch.uint8)
    return (padded.reshape(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`_pack_bits`."""
    bits = (packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return bits.reshape(-1)[:numel].bool()


def _negative_zero_bits(dtype: torch.dtype, bits_dtype: torch.dtype) -> Optional[int]:
    """The bit pattern of -0.0 in ``dtype`` viewed as ``bits_dtype``; None if it has no -0.0."""
    if not dtype.is_floating_point:
        return None
    pattern = int(torch.tensor([-0.0]).to(dtype).view(bits_dtype)[0])
    return pattern or None  # e.g. the float8 "fnuz" types have a single, unsigned zero


def _compact_parts(flat: torch.Tensor) -> Optional[dict[str, torch.Tensor]]:
    """The tensors storing ``flat`` compactly, or None when the dense form is the better choice.

    "Nonzero" means nonzero by value, so masked weights count as sparse even when masking by
    multiplication left -0.0 where negative weights were. To stay bit exact, the positions of
    such -0.0 zeros are kept as a packed bitmask (``::negzero``, 1 bit per element) when any exist.
    All work is done on integer views of the bits, which every dtype supports (and NaNs need).
    """
    numel = flat.numel()
    bits_dtype = _BITS_DTYPES.get(flat.element_size())
    if numel == 0 or bits_dtype is None or flat.is_complex():
        return None
    bits = flat.view(bits_dtype)
    nonzero = bits != 0
    negzero_pattern = _negative_zero_bits(flat.dtype, bits_dtype)
    negzero = None
    if negzero_pattern is not None:
        negzero = bits == negzero_pattern
        nonzero &= ~negzero
    idx = torch.nonzero(nonzero).squeeze(1)
    if idx.numel() >= COMPACT_MAX_NONZERO_SHARE * numel:
        return None
    index_dtype = torch.int32 if numel < 2**31 else torch.int64
    parts = {VALUES_SUFFIX: bits[idx].view(flat.dtype), INDICES_SUFFIX: idx.to(index_dtype)}
    if negzero is not None and bool(negzero.any()):
        parts[NEGZERO_SUFFIX] = _pack_bits(negzero)
    compact_bytes = sum(t.numel() * t.element_size() for t in parts.values())
    return parts if compact_bytes < numel * flat.element_size() else None


def _encode_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split a state dict into the tensors to store and a JSON-able description of them."""
    stored: dict[str, torch.Tensor] = {}
    compact: dict[str, dict[str, Any]] = {}
    for name, tensor in state_dict.items():
        if not isinstance(name, str):
            raise CheckpointError(f"state_dict key {name!r} is not a string")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"state_dict[{name!r}] is a {type(tensor).__name__}, expected a torch.Tensor")
        if "::" in name:
            # "::" separates a name from the values/indices parts; allowing it could collide.
            raise CheckpointError(f"state_dict key {name!r} contains '::', which is reserved")
        # A private copy: tied weights share storage, which safetensors refuses to save.
        cpu = tensor.detach().to("cpu", copy=True).contiguous()
        parts = _compact_parts(cpu.reshape(-1))
        if parts is None:
            stored[name] = cpu
            continue
        stored.update({name + suffix: t for suffix, t in parts.items()})
        compact[name] = {"shape": list(cpu.shape), "dtype": _dtype_name(cpu.dtype),
                         "negzero": NEGZERO_SUFFIX in parts}
    description = {"version": FORMAT_VERSION, "order": list(state_dict), "compact": compact}
    return stored, description


def _decode_state_dict(stored: dict[str, torch.Tensor], description: dict,
                       where: str) -> dict[str, torch.Tensor]:
    """Rebuild the original dense tensors (in their original order) from the stored ones."""
    try:
        order = list(description["order"])
        compact = dict(description["compact"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{where} has malformed '{METADATA_KEY}' metadata: {exc!r}") from exc
    out: dict[str, torch.Tensor] = {}
    for name in order:
        if name not in compact:
            if name not in stored:
                raise CheckpointError(f"{where} lacks tensor {name!r}")
            out[name] = stored[name]
            continue
        try:
            shape = [int(s) for s in compact[name]["shape"]]
            dtype_name = compact[name]["dtype"]
            has_negzero = bool(compact[name].get("negzero", False))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{where} has malformed metadata for tensor {name!r}") from exc
        dtype = _dtype_from_name(dtype_name, f"{where} tensor {name!r}")
        if dtype.itemsize not in _BITS_DTYPES or dtype.is_complex:
            raise CheckpointError(f"{where} stores {dtype} tensor {name!r} compactly, "
                                  "which this version never writes")
        values = stored.get(name + VALUES_SUFFIX)
        indices = stored.get(name + INDICES_SUFFIX)
        if values is None or indices is None:
            raise CheckpointError(f"{where} lacks the values/indices of compact tensor {name!r}")
        numel = 1
        for s in shape:
            numel *= s
        if (values.dtype != dtype or values.dim() != 1 or indices.dim() != 1
                or values.numel() != indices.numel()
                or (indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel))):
            raise CheckpointError(f"{where} has inconsistent values/indices for tensor {name!r}")
        # Rebuild on integer views: index_put/masked_fill lack kernels for some dtypes (float8,
        # uint16...), and writing bits keeps -0.0 and NaN payloads exact.
        bits_dtype = _BITS_DTYPES[dtype.itemsize]
        dense = torch.zeros(numel, dtype=bits_dtype)
        if has_negzero:
            packed = stored.get(name + NEGZERO_SUFFIX)
            pattern = _negative_zero_bits(dtype, bits_dtype)
            if (pattern is None or packed is None or packed.dtype != torch.uint8
                    or packed.numel() != -(-numel // 8)):
                raise CheckpointError(f"{where} lacks a valid -0.0 bitmask for tensor {name!r}")
            dense.masked_fill_(_unpack_bits(packed, numel), pattern)
        dense[indices.long()] = values.view(bits_dtype)
        out[name] = dense.view(dtype).reshape(shape)
    return out


def _safetensors_header(prefix: bytes, where: str) -> dict:
    """Parse the JSON header at the start of a safetensors file."""
    if len(prefix) < 8:
        raise CheckpointError(f"{where} is too short to be a safetensors file")
    (n,) = struct.unpack("<Q", prefix[:8])
    if len(prefix) < 8 + n:
        raise CheckpointError(f"{where} has a truncated safetensors header")
    try:
        header = json.loads(prefix[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where} has an unreadable safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} has a safetensors header that is not a JSON object")
    return header


def _description_from_header(header: dict, where: str) -> dict:
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{where} was not written by sparse_gpt.checkpoint "
                              f"(no '{METADATA_KEY}' metadata)")
    try:
        description = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where} has unreadable '{METADATA_KEY}' metadata: {exc}") from exc
    if not isinstance(description, dict):
        raise CheckpointError(f"{where} has '{METADATA_KEY}' metadata that is not a JSON object")
    return description


# --------------------------------------------------------------------------------------------
# Finding and verifying checkpoints
# --------------------------------------------------------------------------------------------

def _step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint directory ``checkpoints/LATEST`` names, or None if none was completed yet.

    Only ``LATEST`` is consulted, so temp dirs and half-written step dirs are never returned.
    The returned directory is not verified here; :func:`load_checkpoint` does that.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    latest_file = root / LATEST_FILE
    if not latest_file.is_file():
        return None
    name = latest_file.read_text(encoding="utf-8").strip()
    if not _STEP_DIR_RE.fullmatch(name):
        raise CheckpointError(f"{latest_file} should name a step_NNNNNN directory, found {name!r}")
    ckpt = root / name
    if not ckpt.is_dir():
        raise CheckpointError(f"{latest_file} names {name}, but {ckpt} does not exist")
    return ckpt


def resolve_checkpoint(path: Path) -> Path:
    """Turn a run dir (-> its latest checkpoint), its checkpoints/ dir, or a checkpoint dir into
    a checkpoint directory path."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file; expected a run directory or a checkpoint directory")
    if (path / CHECKSUMS_FILE).exists():
        return path
    if _STEP_DIR_RE.fullmatch(path.name):
        raise CheckpointError(f"checkpoint {path} is missing {CHECKSUMS_FILE} "
                              "(its save never finished)")
    run_dir = path.parent if (path / LATEST_FILE).exists() else path
    if (run_dir / CHECKPOINTS_DIR).is_dir():
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise CheckpointError(f"run directory {run_dir} has no completed checkpoint yet "
                                  f"({CHECKPOINTS_DIR}/{LATEST_FILE} does not exist)")
        return ckpt
    raise CheckpointError(
        f"{path} is neither a run directory (containing {CHECKPOINTS_DIR}/{LATEST_FILE}) "
        f"nor a checkpoint directory (containing {CHECKSUMS_FILE})")


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
        if (not _EXTRA_NAME_RE.fullmatch(name) or not isinstance(entry, dict)
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
    where = f"checkpoint {ckpt_dir}: {MODEL_FILE}"
    header = _safetensors_header(data, where)
    description = _description_from_header(header, where)
    try:
        stored = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{where} cannot be read: {exc}") from exc
    state_dict = _decode_state_dict(stored, description, where)
    return {name: t.to(map_location) for name, t in state_dict.items()}


def _parse_train_state(data: bytes) -> dict:
    # weights_only=False because the train state holds arbitrary Python objects (numpy and Python
    # RNG states, data-loader positions) that the restricted unpickler rejects. Unpickling can run
    # code, so we only do it on bytes whose sha256 matched checksums.json: that guards against
    # torn or corrupted files, not against a malicious checkpoint, so load only trusted runs.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def load_state_dict(ckpt_dir: Path, map_location: MapLocation = "cpu") -> dict[str, torch.Tensor]:
    """Load the dense weights of a checkpoint (a run dir resolves to its latest), verifying
    model.safetensors against checksums.json first."""
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    manifest = _read_manifest(ckpt_dir)
    return _parse_model(_read_verified(ckpt_dir, MODEL_FILE, manifest), ckpt_dir, map_location)


def load_train_state(ckpt_dir: Path) -> Optional[dict]:
    """Load the verified train state of a checkpoint, or None if it was saved without one.

    Tensors are mapped to CPU: RNG-state setters require CPU tensors, and optimisers move their
    state to the parameters' device in ``load_state_dict``.
    """
    ckpt_dir = resolve_checkpoint(ckpt_dir)
    manifest = _read_manifest(ckpt_dir)
    if TRAIN_STATE_FILE not in manifest["files"]:
        return None
    return _parse_train_state(_read_verified(ckpt_dir, TRAIN_STATE_FILE, manifest))


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
        train_state = _parse_train_state(data) if with_train_state else None
    return Checkpoint(
        path=ckpt_dir,
        step=manifest["step"],
        state_dict=state_dict,
        config_yaml=(ckpt_dir / CONFIG_FILE).read_text(encoding="utf-8"),
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
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) == 8:
            prefix += f.read(struct.unpack("<Q", prefix)[0])
    header = _safetensors_header(prefix, where)
    description = _description_from_header(header, where)
    compact = description.get("compact", {})
    numel_total = dense_bytes = 0
    for name in description.get("order", []):
        if name in compact:
            numel = 1
            for s in compact[name]["shape"]:
                numel *= int(s)
            itemsize = _dtype_from_name(compact[name]["dtype"], f"{where} tensor {name!r}").itemsize
            nbytes = numel * itemsize
        else:
            entry = header.get(name)
            if entry is None:
                raise CheckpointError(f"{where} lacks tensor {name!r}")
            numel = 1
            for s in entry["shape"]:
                numel *= int(s)
            start, end = entry["data_offsets"]
            nbytes = end - start
        numel_total += numel
        dense_bytes += nbytes
    file_bytes = path.stat().st_size
    return {
        "file_bytes": file_bytes,
        "dense_bytes": dense_bytes,
        "dense_fp32_bytes": 4 * numel_total,
        "ratio_vs_dense": file_bytes / dense_bytes if dense_bytes else float("nan"),
        "numel": numel_total,
        "n_tensors": len(description.get("order", [])),
        "n_compact": len(compact),
    }


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------

def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _discard(root: Path, entry: Path) -> None:
    """Delete a step dir by first renaming it to a temp name, so a crash mid-delete never leaves
    a half-deleted directory that looks like a checkpoint."""
    trash = root / f"{TMP_PREFIX}discard-{entry.name}-{secrets.token_hex(6)}"
    os.rename(entry, trash)
    _remove_path(trash)


def _cleanup(root: Path, latest_name: str, keep: int) -> None:
    """Remove stale temp dirs, incomplete step dirs, and complete ones older than LATEST beyond
    ``keep`` in total. Step dirs newer than LATEST are left alone: they are replaced if the run
    reaches their step again, and may be deliberate (a run resumed from an earlier checkpoint)."""
    latest_step = int(_STEP_DIR_RE.fullmatch(latest_name).group(1))
    older: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        try:
            if entry.name.startswith(TMP_PREFIX):
                _remove_path(entry)
                continue
            match = _STEP_DIR_RE.fullmatch(entry.name)
            if match is None or entry.name == latest_name or not entry.is_dir():
                continue
            if not (entry / CHECKSUMS_FILE).is_file():
                _discard(root, entry)  # our saves never produce this: a leftover, unloadable
            elif int(match.group(1)) < latest_step:
                older.append((int(match.group(1)), entry))
        except OSError as exc:
            # The new checkpoint is already committed; a failed cleanup must not fail the save.
            warnings.warn(f"could not remove {entry}: {exc}", stacklevel=3)
    older.sort(reverse=True)
    for _, entry in older[keep - 1:]:
        try:
            _discard(root, entry)
        except OSError as exc:
            warnings.warn(f"could not remove old checkpoint {entry}: {exc}", stacklevel=3)


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
        if not isinstance(name, str) or not _EXTRA_NAME_RE.fullmatch(name):
            raise CheckpointError(f"extra file name {name!r} must be a plain file name "
                                  "(letters, digits, '.', '_', '-'; no directories)")
        if name in RESERVED_FILES:
            raise CheckpointError(f"extra file name {name!r} is reserved for the checkpoint itself")
        if not isinstance(data, (bytes, bytearray)):
            raise CheckpointError(f"extra file {name!r} must be bytes, got {type(data).__name__}")


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
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS_DIR
    name = _step_dir_name(step)
    final = root / name
    latest_file = root / LATEST_FILE
    # Read LATEST raw: a LATEST naming a deleted dir must not block the save that repairs it.
    if (latest_file.is_file() and final.exists()
            and latest_file.read_text(encoding="utf-8").strip() == name):
        raise CheckpointError(f"refusing to overwrite {final}: it is the checkpoint "
                              f"{CHECKPOINTS_DIR}/{LATEST_FILE} names; save under another step")

    # Serialise before touching the disk so that bad input leaves nothing behind.
    stored, description = _encode_state_dict(state_dict)
    contents: dict[str, bytes] = {
        CONFIG_FILE: config_yaml.encode("utf-8"),
        MODEL_FILE: safetensors.torch.save(
            stored, metadata={METADATA_KEY: json.dumps(description)}),
        TOKENIZER_FILE: Path(tokenizer_path).read_bytes(),
    }
    if train_state is not None:
        buffer = io.BytesIO()
        torch.save(train_state, buffer)
        contents[TRAIN_STATE_FILE] = buffer.getvalue()
    contents.update({k: bytes(v) for k, v in extra_files.items()})
    manifest = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "files": {k: {"sha256": hashlib.sha256(v).hexdigest(), "size": len(v)}
                  for k, v in contents.items()},
    }

    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        fsync_dir(root.parent)
    tmp = root / f"{TMP_PREFIX}{name}-{secrets.token_hex(6)}"
    os.mkdir(tmp)
    try:
        for file_name, data in contents.items():
            write_new_file(tmp / file_name, data)
        # Last, so that a directory with checksums.json always has all its files.
        write_new_file(tmp / CHECKSUMS_FILE,
                        (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        fsync_dir(tmp)
        if final.exists() or final.is_symlink():
            # Left by an earlier attempt that never became LATEST: move it aside (rename is
            # atomic) and delete it later, so no step dir is ever half-deleted.
            os.rename(final, root / f"{TMP_PREFIX}replaced-{name}-{secrets.token_hex(6)}")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    atomic_write_text(latest_file, name + "\n")
    _cleanup(root, name, keep)
    return final
