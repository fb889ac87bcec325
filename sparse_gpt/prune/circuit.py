"""The circuit artefact (circuit.json): one versioned, checksummed file every renderer and check reads.

{
  "schema": "sparse_gpt.circuit/1",
  "provenance": {checkpoint path + fingerprint, task, seed, pruner settings, versions, time},
  "model": {n_layer, d_model, ...},
  "nodes": [{"name": "0.mlp.post_act[12]", "location": "0.mlp.post_act", "layer": 0,
             "kind": "mlp_neuron", "index": 12, "score": 0.83}, ...],
  "edges": [{"source": ..., "target": ..., "weight": ..., "matrix": ...}, ...],
  "calibration": {"scale", "bias", "loss"},
  "bisection": [[k, loss], ...],
  "metrics": {...},
  "checksum": sha256 of the canonical JSON of everything else
}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..fileio import atomic_write_text
from .nodes import LOCATION_KINDS, NodeLayout

SCHEMA = "sparse_gpt.circuit/1"
_REQUIRED = {"schema": str, "provenance": dict, "model": dict, "nodes": list, "edges": list,
             "calibration": dict, "bisection": list, "metrics": dict, "checksum": str}


class CircuitError(ValueError):
    """A circuit.json that is missing, malformed, tampered with, or made for another checkpoint."""


def _checksum(body: dict) -> str:
    canonical = json.dumps({k: v for k, v in body.items() if k != "checksum"}, sort_keys=True,
                           separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def node_records(layout: NodeLayout, keep: torch.Tensor, scores: torch.Tensor) -> list[dict]:
    kinds = dict(LOCATION_KINDS)
    out = []
    for loc_name, idx in layout.kept_per_location(keep).items():
        loc = layout.by_name[loc_name]
        for i in idx.tolist():
            out.append({"name": f"{loc_name}[{i}]", "location": loc_name, "layer": loc.layer,
                        "kind": kinds[loc_name.split(".", 1)[1]], "index": i,
                        "score": float(scores[loc.offset + i])})
    return out


def make_circuit(*, provenance: dict, model_config: dict, nodes: list[dict], edges: list[dict],
                 calibration: dict, bisection: list, metrics: dict) -> dict:
    body = {"schema": SCHEMA, "provenance": provenance, "model": model_config, "nodes": nodes, "edges": edges,
            "calibration": calibration, "bisection": [list(p) for p in bisection], "metrics": metrics}
    body["checksum"] = _checksum(body)
    return body


def save_circuit(circuit: dict, path: str | Path) -> Path:
    """Write atomically (temp file + fsync + rename); the checksum is refreshed first."""
    circuit = dict(circuit)
    circuit["checksum"] = _checksum(circuit)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(circuit, indent=1))
    return path


def load_circuit(path: str | Path, fingerprint: str | None = None) -> dict:
    """Read and validate a circuit.json. With `fingerprint` (of the checkpoint the caller has
    loaded), refuse a circuit that was extracted from different weights."""
    path = Path(path)
    if not path.is_file():
        raise CircuitError(f"no circuit file at {path}")
    try:
        circuit = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CircuitError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(circuit, dict):
        raise CircuitError(f"{path}: expected a JSON object, got {type(circuit).__name__}")
    for key, tp in _REQUIRED.items():
        if key not in circuit:
            raise CircuitError(f"{path}: missing field {key!r}")
        if not isinstance(circuit[key], tp):
            raise CircuitError(f"{path}: field {key!r} should be a {tp.__name__}")
    if circuit["schema"] != SCHEMA:
        raise CircuitError(f"{path}: schema {circuit['schema']!r} is not the supported {SCHEMA!r}")
    if circuit["checksum"] != _checksum(circuit):
        raise CircuitError(f"{path}: checksum mismatch: the file was modified after it was written")
    names = set()
    for n in circuit["nodes"]:
        if not isinstance(n, dict) or not {"name", "location", "layer", "kind", "index"} <= set(n):
            raise CircuitError(f"{path}: malformed node {n!r}")
        names.add(n["name"])
    for e in circuit["edges"]:
        if not isinstance(e, dict) or e.get("source") not in names or e.get("target") not in names:
            raise CircuitError(f"{path}: edge {e!r} does not join two of the circuit's nodes")
    want = circuit["provenance"].get("checkpoint_fingerprint")
    if fingerprint is not None and want != fingerprint:
        raise CircuitError(f"{path} was extracted from checkpoint weights {str(want)[:12]}, but the "
                           f"checkpoint given has {fingerprint[:12]}: re-run prune_circuit.py on it")
    return circuit


def keep_mask(circuit: dict, layout: NodeLayout) -> torch.Tensor:
    """(N,) bool mask of the circuit's nodes in `layout`'s numbering."""
    keep = torch.zeros(layout.n_nodes, dtype=torch.bool)
    for n in circuit["nodes"]:
        keep[layout.node_index(n["name"])] = True
    return keep
