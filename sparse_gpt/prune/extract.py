"""From a checkpoint and a task name to a validated circuit.json: the pipeline prune_circuit.py runs."""
from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..loading import LoadedModel
from ..explain import NodeContexts, node_contexts
from ..render import node_details, render_html, render_static
from ..tasks import get_task
from .circuit import make_circuit, node_records, save_circuit
from .means import load_or_compute_means, validation_texts
from .nodes import NodeLayout, circuit_edges
from .pruner import PruneConfig, Pruner
from .validate import evaluate_circuit

CONTROL_TASK = "nonsense_quote"


class CircuitPipeline:
    """Shared state for pruning one model on several tasks: means, layout, validation text."""

    def __init__(self, loaded: LoadedModel, cfg: PruneConfig, device: str, log=print):
        self.loaded, self.cfg, self.device, self.log = loaded, cfg.validate(), device, log
        self.layout = NodeLayout(loaded.model.config)
        self.means = load_or_compute_means(loaded.model, self.layout, loaded.tokenizer, loaded.path,
                                           loaded.fingerprint, loaded.data, log=log).to(device)
        self.natural_texts = validation_texts(loaded.data, max_bytes=3_000_000)
        self._control: dict | None = None
        self._contexts: NodeContexts | None = None

    def contexts(self) -> NodeContexts:
        """Every node's top-activating contexts (computed once per checkpoint, then cached beside it)."""
        if self._contexts is None:
            self._contexts = node_contexts(self.loaded, log=self.log)
        return self._contexts

    def pruner(self, task_name: str, require_full: bool = True) -> Pruner:
        return Pruner(self.loaded.model, self.layout, self.means, get_task(task_name), self.loaded.tokenizer,
                      self.cfg, natural_texts=self.natural_texts, device=self.device, require_full=require_full)

    def control(self, progress: bool = True) -> dict:
        """Size of the circuit the pruner builds for a nonsense task (computed once per model)."""
        if self._control is None:
            pruner = self.pruner(CONTROL_TASK, require_full=False)
            best, _ = pruner.search(progress=progress)
            self._control = {"task": CONTROL_TASK, "nodes": best.n_nodes, "loss": best.loss,
                             "calibrated_loss": best.calibration["loss"], "full_loss": pruner.full_loss,
                             "reached_target": best.loss <= self.cfg.target_loss}
        return self._control

    def extract(self, task_name: str, out_dir: Path, progress: bool = True, with_control: bool = True,
                viewer: bool = True) -> dict:
        """Prune, validate and write out_dir/circuit.json for one task, with circuit.png/.svg and
        (unless viewer=False) the interactive circuit.html beside it; returns the circuit."""
        t0 = time.perf_counter()
        task = get_task(task_name)
        pruner = self.pruner(task_name)
        best, runs = pruner.search(progress=progress)
        model = self.loaded.model
        edges = circuit_edges(model, self.layout, best.keep)
        provenance = {
            "checkpoint": str(self.loaded.path), "checkpoint_fingerprint": self.loaded.fingerprint,
            "checkpoint_kind": self.loaded.kind, "task": task_name, "seed": self.cfg.seed,
            "pruner": best.settings, "sparse_gpt_version": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        circuit = make_circuit(
            provenance=provenance, model_config=asdict(model.config),
            nodes=node_records(self.layout, best.keep, best.scores), edges=edges,
            calibration=best.calibration, bisection=best.curve, metrics={})
        metrics = evaluate_circuit(model, circuit, task, self.loaded.tokenizer, self.means,
                                   natural_texts=self.natural_texts)
        metrics["search"] = [r.summary() for r in runs]
        metrics["total_nodes"] = self.layout.n_nodes
        if with_control:
            metrics["control"] = self.control(progress)
        metrics["seconds"] = round(time.perf_counter() - t0, 1)
        circuit["metrics"] = metrics
        save_circuit(circuit, Path(out_dir) / "circuit.json")
        render_static(circuit, Path(out_dir) / "circuit")
        if viewer:
            details = node_details(model, self.loaded.tokenizer, circuit, task, self.means, self.contexts(),
                                   progress=progress)
            render_html(circuit, details, Path(out_dir) / "circuit.html")
        return circuit


def geometric_mean(values: list[float]) -> float:
    values = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan
