"""A circuit's validation results, typed: what circuit.json's "metrics" holds.

On disk the metrics stay one flat object ({"full_templated": {...}, "circuit_templated": {...},
"necessity": {...}, ...}); in memory the scores are grouped by what was measured on which prompts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..prune.objective import Score

SPLITS = ("templated", "heldout", "natural")  # pruning templates, held-out templates, mined real code


class MetricsError(ValueError):
    """A metrics object that does not have the fields a circuit's validation writes."""


@dataclass(frozen=True)
class RandomBaseline:
    """Task loss of random node sets with the circuit's size at every location."""
    n: int
    losses: list[float]
    mean: float
    min: float


@dataclass(frozen=True)
class Control:
    """The circuit the pruner builds for a nonsense task: how much it can make out of nothing."""
    task: str
    nodes: int
    loss: float
    calibrated_loss: float
    full_loss: float
    reached_target: bool


@dataclass
class Metrics:
    target_loss: float
    nodes: int
    edges: int
    full: dict[str, Score]              # the full model, by split (templated, heldout[, natural])
    circuit: dict[str, Score]           # the calibrated circuit, by split
    circuit_uncalibrated: dict[str, Score]  # the raw circuit (no calibration), by split: what "passed" judges
    necessity: Score                    # the full model with only the circuit ablated
    random: RandomBaseline
    final_resid_rms_ratio: float | None
    checks: dict[str, bool]
    passed: bool
    search: list[dict] = field(default_factory=list)   # PruneRun.summary() of every run of the search
    total_nodes: int | None = None
    control: Control | None = None
    seconds: float | None = None
    faithfulness: dict | None = None    # the faithfulness curve over the node ranking (circuit.faithfulness)
    variants: dict | None = None        # the circuit's size under other ablation rules, beside the default
    node_level_edges: int | None = None  # nonzero weights between the nodes (`edges`: those the circuit keeps)
    edge_stage: dict | None = None      # what the weight-level pruning did (sparse_gpt.prune.edges)
    stages: list[dict] = field(default_factory=list)  # the circuit's size and raw loss after each stage of its run

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"target_loss": self.target_loss, "nodes": self.nodes, "edges": self.edges}
        for split in SPLITS:
            if split in self.full:
                out[f"full_{split}"] = self.full[split].to_dict()
                out[f"circuit_{split}"] = self.circuit[split].to_dict()
        for split in SPLITS:
            if split in self.circuit_uncalibrated:
                out[f"circuit_uncalibrated_{split}"] = self.circuit_uncalibrated[split].to_dict()
        out |= {"necessity": self.necessity.to_dict(), "random": asdict(self.random)}
        if self.final_resid_rms_ratio is not None:
            out["final_resid_rms_ratio"] = self.final_resid_rms_ratio
        out |= {"checks": self.checks, "passed": self.passed}
        for key in ("search", "total_nodes", "control", "seconds", "faithfulness", "variants", "node_level_edges",
                    "edge_stage", "stages"):
            value = getattr(self, key)
            if value is not None and not (key in ("search", "stages") and not value):
                out[key] = asdict(value) if key == "control" else value
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Metrics:
        unknown = set(d) - cls.known_keys()
        if unknown:
            raise MetricsError(f"unknown metrics field(s) {', '.join(sorted(unknown))}")
        try:
            score = lambda key: Score(**d[key])  # noqa: E731
            full = {s: score(f"full_{s}") for s in SPLITS if f"full_{s}" in d}
            return cls(target_loss=d["target_loss"], nodes=d["nodes"], edges=d["edges"], full=full,
                       circuit={s: score(f"circuit_{s}") for s in full},
                       circuit_uncalibrated={s: score(f"circuit_uncalibrated_{s}") for s in SPLITS
                                             if f"circuit_uncalibrated_{s}" in d or s == "templated"},
                       necessity=score("necessity"),
                       random=RandomBaseline(**d["random"]), final_resid_rms_ratio=d.get("final_resid_rms_ratio"),
                       checks=d["checks"], passed=d["passed"], search=d.get("search", []),
                       total_nodes=d.get("total_nodes"),
                       control=Control(**d["control"]) if d.get("control") is not None else None,
                       seconds=d.get("seconds"), faithfulness=d.get("faithfulness"), variants=d.get("variants"),
                       node_level_edges=d.get("node_level_edges"), edge_stage=d.get("edge_stage"),
                       stages=d.get("stages", []))
        except KeyError as e:
            raise MetricsError(f"metrics without {e.args[0]!r}") from None
        except TypeError as e:
            raise MetricsError(f"malformed metrics: {e}") from None

    @staticmethod
    def known_keys() -> set[str]:
        flat = {f.name for f in fields(Metrics)} - {"full", "circuit", "circuit_uncalibrated"}
        return flat | {f"{w}_{s}" for w in ("full", "circuit", "circuit_uncalibrated") for s in SPLITS}
