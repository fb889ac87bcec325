"""The compact on-disk form of sparse weights inside ``model.safetensors``.

A tensor with few nonzeros is stored as its nonzero values plus int32 flat indices (and a packed
bitmask of its -0.0 entries, when it has any), described by JSON in the safetensors header metadata
so that loading restores every tensor bit for bit, in its original order. Dense tensors are stored
as they are.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from types import MappingProxyType
from typing import Any, Optional

import safetensors.torch
import torch

from .checkpoint_layout import CheckpointError

FORMAT_VERSION = 1
# A tensor is stored compactly when fewer than this share of its elements are nonzero (and the
# compact form is actually smaller, which for 1- and 2-byte dtypes needs a lower share).
COMPACT_MAX_NONZERO_SHARE = 0.5
VALUES_SUFFIX = "::values"
INDICES_SUFFIX = "::indices"
NEGZERO_SUFFIX = "::negzero"
# Key in the safetensors header metadata holding our JSON description of the stored tensors.
METADATA_KEY = "sparse_gpt.checkpoint"
# Same-size integer dtypes for viewing raw bit patterns: a bit-exact round trip must tell -0.0
# from 0.0 and keep NaN payloads, and integer kernels exist for every operation we need.
BITS_DTYPES = MappingProxyType({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64})


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str, what: str) -> torch.dtype:
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
    bits_dtype = BITS_DTYPES.get(flat.element_size())
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


def encode_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
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


def decode_state_dict(stored: dict[str, torch.Tensor], description: dict,
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
        dtype = dtype_from_name(dtype_name, f"{where} tensor {name!r}")
        if dtype.itemsize not in BITS_DTYPES or dtype.is_complex:
            raise CheckpointError(f"{where} stores {dtype} tensor {name!r} compactly, "
                                  "which this version never writes")
        values = stored.get(name + VALUES_SUFFIX)
        indices = stored.get(name + INDICES_SUFFIX)
        if values is None or indices is None:
            raise CheckpointError(f"{where} lacks the values/indices of compact tensor {name!r}")
        numel = _numel(shape)
        if (values.dtype != dtype or values.dim() != 1 or indices.dim() != 1
                or values.numel() != indices.numel()
                or (indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel))):
            raise CheckpointError(f"{where} has inconsistent values/indices for tensor {name!r}")
        # Rebuild on integer views: index_put/masked_fill lack kernels for some dtypes (float8,
        # uint16...), and writing bits keeps -0.0 and NaN payloads exact.
        bits_dtype = BITS_DTYPES[dtype.itemsize]
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


def safetensors_header(prefix: bytes, where: str) -> dict:
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


def description_from_header(header: dict, where: str) -> dict:
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


def encode_model(state_dict: dict[str, torch.Tensor]) -> bytes:
    """The bytes of ``model.safetensors`` for a state dict."""
    stored, description = encode_state_dict(state_dict)
    return safetensors.torch.save(stored, metadata={METADATA_KEY: json.dumps(description)})


def decode_model(data: bytes, where: str) -> dict[str, torch.Tensor]:
    """The dense state dict (on CPU) stored in the bytes of a ``model.safetensors``."""
    description = description_from_header(safetensors_header(data, where), where)
    try:
        stored = safetensors.torch.load(data)
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{where} cannot be read: {exc}") from exc
    return decode_state_dict(stored, description, where)


def read_header(path: Path, where: str) -> dict:
    """The JSON header of a safetensors file, reading nothing of the tensor data."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) == 8:
            prefix += f.read(struct.unpack("<Q", prefix)[0])
    return safetensors_header(prefix, where)


def _numel(shape) -> int:
    numel = 1
    for s in shape:
        numel *= int(s)
    return numel


def dense_sizes(header: dict, where: str) -> dict:
    """Element count and dense byte count of the tensors a header describes, in their dtypes."""
    description = description_from_header(header, where)
    compact = description.get("compact", {})
    numel_total = dense_bytes = 0
    for name in description.get("order", []):
        if name in compact:
            numel = _numel(compact[name]["shape"])
            nbytes = numel * dtype_from_name(compact[name]["dtype"], f"{where} tensor {name!r}").itemsize
        else:
            entry = header.get(name)
            if entry is None:
                raise CheckpointError(f"{where} lacks tensor {name!r}")
            numel = _numel(entry["shape"])
            start, end = entry["data_offsets"]
            nbytes = end - start
        numel_total += numel
        dense_bytes += nbytes
    return {"numel": numel_total, "dense_bytes": dense_bytes,
            "n_tensors": len(description.get("order", [])), "n_compact": len(compact)}
