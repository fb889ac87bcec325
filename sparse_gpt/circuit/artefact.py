"""The circuit artefact: a typed `Circuit`, and circuit.json, the one versioned, checksummed file it
is saved as. Pruning makes a Circuit; validation, pictures, explanations and interventions read one.

circuit.json:
{
  "schema": "sparse_gpt.circuit/1",
  "provenance": {checkpoint path + fingerprint, task, seed, pruner settings, versions, time},
  "model": {n_layer, d_model, ...},
  "nodes": [{"name": "0.mlp.post_act[12]", "location": "0.mlp.post_act", "layer": 0,
             "kind": "mlp_neuron", "index": 12, "score": 0.83}, ...],
  "edges": [{"source": ..., "target": ..., "weight": ..., "matrix": ...}, ...],
  "node_level_edges": 302,   (only in a weight-level circuit: every nonzero weight between its nodes)
  "calibration": {"scale", "bias", "loss"},
  "bisection": [[k, loss], ...],
  "metrics": {...},
  "checksum": sha256 of the canonical JSON of everything else
}
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write_text
from ..nodes import LOCATION_KINDS, CircuitEdge, CircuitNode, EdgeSet, NodeLayout, ablation_values, edge_set
from ..prune.objective import Calibration
from ..prune.pruner import PruneConfig
from .metrics import Metrics, MetricsError

SCHEMA = "sparse_gpt.circuit/1"
_SECTIONS = {"schema": str, "provenance": dict, "model": dict, "nodes": list, "edges": list,
             "calibration": dict, "bisection": list, "metrics": dict, "checksum": str}
_OPTIONAL = {"node_level_edges": int}


class CircuitError(ValueError):
    """A circuit.json that is missing, malformed, tampered with, or made for another checkpoint."""


@dataclass
class Provenance:
    """Where a circuit came from. Only the task and the pruner settings are required."""
    task: str
    pruner: PruneConfig
    checkpoint: str | None = None
    checkpoint_fingerprint: str | None = None
    checkpoint_kind: str | None = None       # sparse_gpt | openai
    seed: int | None = None
    sparse_gpt_version: str | None = None
    torch: str | None = None
    python: str | None = None
    created: str | None = None               # UTC, ISO 8601

    _ORDER = ("checkpoint", "checkpoint_fingerprint", "checkpoint_kind", "task", "seed", "pruner",
              "sparse_gpt_version", "torch", "python", "created")

    def to_dict(self) -> dict:
        out = {}
        for key in self._ORDER:
            value = getattr(self, key)
            if value is not None:
                out[key] = asdict(value) if key == "pruner" else value
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str) -> Provenance:
        unknown = set(d) - set(cls._ORDER)
        if unknown:
            raise CircuitError(f"{where}: unknown provenance field(s) {', '.join(sorted(unknown))}")
        for key in ("task", "pruner"):
            if key not in d:
                raise CircuitError(f"{where}: provenance has no {key!r}")
        if not isinstance(d["pruner"], dict):
            raise CircuitError(f"{where}: provenance 'pruner' should be an object")
        return cls(**(d | {"pruner": _pruner_settings(d["pruner"], where)}))


def _pruner_settings(d: dict, where: str) -> PruneConfig:
    known = {f.name for f in fields(PruneConfig)}
    unknown = set(d) - known
    if unknown:
        raise CircuitError(f"{where}: unknown pruner setting(s) {', '.join(sorted(unknown))}")
    try:
        return PruneConfig(**d).validate()
    except (TypeError, ValueError) as e:
        raise CircuitError(f"{where}: bad pruner settings: {e}") from e


@dataclass
class Circuit:
    """A circuit: its nodes and the weights between them, how it was found, and how well it does.

    `edges` are the weights the circuit keeps. In a weight-level circuit (`node_level_edges` set)
    they are a subset of the nonzero weights between its nodes, the others pruned (each passes on
    its source's ablation value times the weight); without it (a node-level circuit, or a file
    written before weight-level circuits) they are all of them."""
    provenance: Provenance
    model: dict[str, Any]                         # the model's config, as asdict(ModelConfig) gave it
    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    calibration: Calibration
    bisection: list[tuple[int, float]] = field(default_factory=list)  # (kept nodes, held-out loss)
    metrics: Metrics | None = None   # circuit.validate.evaluate_circuit's, None before validation
    node_level_edges: int | None = None  # weight-level circuits: the nonzero weights between the nodes

    # -- reading --

    @property
    def task(self) -> str:
        return self.provenance.task

    @property
    def settings(self) -> PruneConfig:
        return self.provenance.pruner

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def keep_mask(self, layout: NodeLayout) -> torch.Tensor:
        """(N,) bool mask of the circuit's nodes in `layout`'s numbering."""
        return layout.keep_mask(self.node_names)

    def edge_mask(self, model, layout: NodeLayout) -> tuple[EdgeSet, torch.Tensor]:
        """The weights between the circuit's nodes in `model` and the (E,) bool mask of those the
        circuit keeps. A listed edge that is not such a weight raises CircuitError."""
        edges = edge_set(model, layout, self.keep_mask(layout))
        try:
            return edges, edges.mask_of(self.edges)
        except KeyError as e:
            raise CircuitError(f"{e.args[0]} (was the circuit extracted from other weights?)") from None

    def ablation_values(self, means: torch.Tensor) -> torch.Tensor:
        """What a node outside the circuit carries, under the ablation the circuit was pruned with."""
        return ablation_values(self.settings.ablation, means)

    # -- the JSON form --

    def to_dict(self) -> dict:
        """The circuit.json object, checksum included."""
        body = {"schema": SCHEMA, "provenance": self.provenance.to_dict(), "model": self.model,
                "nodes": [n.to_dict() for n in self.nodes], "edges": [e.to_dict() for e in self.edges],
                "calibration": self.calibration.to_dict(), "bisection": [list(p) for p in self.bisection],
                "metrics": self.metrics.to_dict() if self.metrics is not None else {}}
        if self.node_level_edges is not None:
            body["node_level_edges"] = self.node_level_edges
        return body | {"checksum": checksum(body)}

    @classmethod
    def from_dict(cls, d: Any, where: str = "circuit") -> Circuit:
        """Check a circuit.json object (schema, checksum, node and edge records) and type it."""
        if not isinstance(d, dict):
            raise CircuitError(f"{where}: expected a JSON object, got {type(d).__name__}")
        for key, tp in _SECTIONS.items():
            if key not in d:
                raise CircuitError(f"{where}: missing field {key!r}")
            if not isinstance(d[key], tp):
                raise CircuitError(f"{where}: field {key!r} should be a {tp.__name__}")
        for key, tp in _OPTIONAL.items():
            if key in d and not (isinstance(d[key], tp) and not isinstance(d[key], bool) and d[key] >= 0):
                raise CircuitError(f"{where}: field {key!r} should be a whole number >= 0, got {d[key]!r}")
        if d["schema"] != SCHEMA:
            raise CircuitError(f"{where}: schema {d['schema']!r} is not the supported {SCHEMA!r}")
        if d["checksum"] != checksum(d):
            raise CircuitError(f"{where}: checksum mismatch: the file was modified after it was written")
        return cls(provenance=Provenance.from_dict(d["provenance"], where), model=d["model"],
                   nodes=_nodes(d["nodes"], where), edges=_edges(d["edges"], d["nodes"], where),
                   calibration=_calibration(d["calibration"], where),
                   bisection=[(int(k), float(v)) for k, v in d["bisection"]], metrics=_metrics(d["metrics"], where),
                   node_level_edges=d.get("node_level_edges"))

    def save(self, path: str | Path) -> Path:
        """Write circuit.json atomically (temp file + fsync + rename), with a fresh checksum."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> Circuit:
        """Read and check a circuit.json. With `fingerprint` (of the checkpoint the caller has
        loaded), refuse a circuit that was extracted from different weights."""
        path = Path(path)
        if not path.is_file():
            raise CircuitError(f"no circuit file at {path}")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CircuitError(f"{path} is not valid JSON: {e}") from e
        circuit = cls.from_dict(d, str(path))
        want = circuit.provenance.checkpoint_fingerprint
        if fingerprint is not None and want != fingerprint:
            raise CircuitError(f"{path} was extracted from checkpoint weights {str(want)[:12]}, but the "
                               f"checkpoint given has {fingerprint[:12]}: re-run prune_circuit.py on it")
        return circuit


def checksum(body: dict) -> str:
    """sha256 of the canonical JSON of a circuit.json object without its checksum."""
    canonical = json.dumps({k: v for k, v in body.items() if k != "checksum"}, sort_keys=True,
                           separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


_NODE_KINDS = {kind for _, kind in LOCATION_KINDS}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _node_problem(n: dict) -> str | None:
    """What is wrong with a node record's field types and their agreement, or None. (The checksum
    proves a file is intact, not that whoever re-signed it wrote sensible fields.)"""
    for key in ("name", "location", "kind"):
        if not isinstance(n[key], str):
            return f"{key!r} should be a string, got {n[key]!r}"
    for key in ("layer", "index"):
        if not _is_int(n[key]) or n[key] < 0:
            return f"{key!r} should be a whole number >= 0, got {n[key]!r}"
    if n.get("score") is not None and not _is_number(n["score"]):
        return f"'score' should be a number, got {n['score']!r}"
    if n["kind"] not in _NODE_KINDS:
        return f"'kind' should be one of {', '.join(sorted(_NODE_KINDS))}, got {n['kind']!r}"
    if n["name"] != f"{n['location']}[{n['index']}]":
        return f"'name' {n['name']!r} is not its location and index, {n['location']}[{n['index']}]"
    suffix = n["location"].partition(".")[2]
    if n["location"] != f"{n['layer']}.{suffix}" or (suffix, n["kind"]) not in LOCATION_KINDS:
        return f"location {n['location']!r} does not agree with layer {n['layer']} and kind {n['kind']!r}"
    return None


def _nodes(records: list, where: str) -> list[CircuitNode]:
    out = []
    for n in records:
        if not isinstance(n, dict) or not {"name", "location", "layer", "kind", "index"} <= set(n) \
                or not set(n) <= {f.name for f in fields(CircuitNode)}:
            raise CircuitError(f"{where}: malformed node {n!r}")
        problem = _node_problem(n)
        if problem:
            raise CircuitError(f"{where}: node {n.get('name')!r}: {problem}")
        out.append(CircuitNode(**n))
    return out


def _edges(records: list, nodes: list, where: str) -> list[CircuitEdge]:
    names = {n["name"] for n in nodes}
    out = []
    for e in records:
        if not isinstance(e, dict) or e.get("source") not in names or e.get("target") not in names:
            raise CircuitError(f"{where}: edge {e!r} does not join two of the circuit's nodes")
        if set(e) != {"source", "target", "weight", "matrix"}:
            raise CircuitError(f"{where}: malformed edge {e!r}")
        out.append(CircuitEdge(**e))
    return out


def _calibration(d: dict, where: str) -> Calibration:
    if not {"scale", "bias"} <= set(d) <= {"scale", "bias", "loss"}:
        raise CircuitError(f"{where}: malformed calibration {d!r}")
    return Calibration(**d)


def _metrics(d: dict, where: str) -> Metrics | None:
    try:
        return Metrics.from_dict(d) if d else None
    except MetricsError as e:
        raise CircuitError(f"{where}: {e}") from None


def load_circuit(path: str | Path, fingerprint: str | None = None) -> Circuit:
    """Circuit.load: read and check a circuit.json."""
    return Circuit.load(path, fingerprint)
