"""From a checkpoint and a task name to a circuit directory: prune, validate, compare with a control,
then draw (circuit.json, circuit.png/.svg, circuit.html). prune_circuit.py runs `CircuitPipeline`;
`python -m sparse_gpt.render` redraws a saved circuit through `rerender`, so the viewer is made by
one sequence (node means -> contexts -> node details -> page) wherever it is made.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from . import __version__
from .circuit import Circuit, Control, Provenance, evaluate_circuit, load_circuit, node_details
from .data import corpus_texts, validation_texts
from .explain import NodeContexts, node_contexts
from .loading import LoadedModel, load_any
from .nodes import NodeLayout, circuit_edges, edge_set, load_or_compute_means
from .prune import PruneConfig, Pruner, PruneRun
from .render import MAX_NODES, render_html, render_labelled, render_static
from .tasks import get_task

CONTROL_TASK = "nonsense_quote"
NATURAL_BYTES = 3_000_000  # of each split's text to mine natural examples from


def write_viewer(loaded: LoadedModel, circuit: Circuit, means: torch.Tensor, contexts: NodeContexts,
                 path: Path, progress: bool = True) -> list[Path]:
    """circuit.html for `circuit`, with node panels computed on the model it was extracted from, and
    for a circuit of at most MAX_NODES nodes the labelled diagram (PATH's stem + _labelled .png/.svg)
    drawn from the same numbers; returns the paths written."""
    details = node_details(loaded.model, loaded.tokenizer, circuit, get_task(circuit.task), means,
                           progress=progress)
    written = [render_html(circuit, details, path, contexts)]
    if len(circuit.nodes) <= MAX_NODES:
        written += render_labelled(circuit, details, contexts, path.with_name(f"{path.stem}_labelled"))
    return written


def rerender(circuit_path: str | Path, checkpoint: str | Path, prefix: Path, device: str,
             progress: bool = True, log=print) -> list[Path]:
    """Redraw the viewer (and a small circuit's labelled diagram) of a saved circuit from its
    checkpoint, which must have the same weights."""
    loaded = load_any(checkpoint, device)
    circuit = load_circuit(circuit_path, fingerprint=loaded.fingerprint)  # refuse other weights
    layout = NodeLayout(loaded.model.config)
    means = load_or_compute_means(loaded.model, layout, loaded.tokenizer, loaded.path, loaded.fingerprint,
                                  loaded.data, log=log)
    return write_viewer(loaded, circuit, means, node_contexts(loaded, log=log), prefix.with_suffix(".html"),
                        progress)


class CircuitPipeline:
    """Shared state for pruning one model on several tasks: means, layout, validation text."""

    def __init__(self, loaded: LoadedModel, cfg: PruneConfig, device: str, log=print):
        self.loaded, self.cfg, self.device, self.log = loaded, cfg.validate(), device, log
        self.layout = NodeLayout(loaded.model.config)
        self.means = load_or_compute_means(loaded.model, self.layout, loaded.tokenizer, loaded.path,
                                           loaded.fingerprint, loaded.data, log=log).to(device)
        # validation judges natural examples from held-out text; the pruner mines its own (for
        # --natural-frac and --natural-judge) from training text, so the two sets never share an example
        self.natural_texts = validation_texts(loaded.data, max_bytes=NATURAL_BYTES)
        self._prune_texts: list[str] | None = None
        self._control: Control | None = None
        self._contexts: NodeContexts | None = None

    def contexts(self) -> NodeContexts:
        """Every node's top-activating contexts (computed once per checkpoint, then cached beside it)."""
        if self._contexts is None:
            self._contexts = node_contexts(self.loaded, log=self.log)
        return self._contexts

    def pruner(self, task_name: str, require_full: bool = True, cfg: PruneConfig | None = None) -> Pruner:
        cfg = cfg or self.cfg
        if (cfg.natural_frac > 0 or cfg.natural_judge) and self._prune_texts is None:
            self._prune_texts = corpus_texts(self.loaded.data, "train", max_bytes=NATURAL_BYTES)
        return Pruner(self.loaded.model, self.layout, self.means, get_task(task_name), self.loaded.tokenizer,
                      cfg, natural_texts=self._prune_texts, device=self.device, require_full=require_full)

    def variants(self, task_name: str, progress: bool = True) -> dict:
        """The same search under the other rules a circuit's size depends on, reported beside the
        default (never instead of it): every norm's scale frozen at the full model's, and zero
        ablation instead of the pretraining mean. Node-level circuits (their edges: every weight
        between their nodes), so the sizes compare with the default's node-level edges."""
        out = {}
        for label, change in (("frozen_norms", {"freeze_norms": True}), ("zero_ablation", {"ablation": "zero"})):
            change = change | {"edge_mask": False}
            cfg = replace(self.cfg, **change)
            best, _ = self.pruner(task_name, cfg=cfg).search(progress=progress, log=self.log)
            out[label] = {"nodes": best.n_nodes, "edges": len(circuit_edges(self.loaded.model, self.layout, best.keep)),
                          "loss": best.loss, "met_target": best.loss <= cfg.target_loss}
            self.log(f"{task_name} with {label.replace('_', ' ')}: {best.n_nodes} nodes, raw held-out loss "
                     f"{best.loss:.3f}")
        return out

    def control(self, progress: bool = True) -> Control:
        """Size of the circuit the pruner builds for a nonsense task (computed once per model)."""
        if self._control is None:
            # one run of the configured settings, discretised like the task's own runs (no search and
            # no repair: they would spend the main job's budget on a circuit that should not exist)
            pruner = self.pruner(CONTROL_TASK, require_full=False,
                                 cfg=replace(self.cfg, retrain_rounds=0, repair_rounds=0, natural_frac=0.0,
                                             natural_judge=False))
            best = pruner.run(progress=progress, desc=CONTROL_TASK)
            self._control = Control(task=CONTROL_TASK, nodes=best.n_nodes, loss=best.loss,
                                    calibrated_loss=best.calibration.loss, full_loss=pruner.full_loss,
                                    reached_target=best.loss <= self.cfg.target_loss)
        return self._control

    def _circuit(self, task_name: str, best: PruneRun) -> Circuit:
        """The circuit of the best pruning run, before validation."""
        loaded, model = self.loaded, self.loaded.model
        provenance = Provenance(
            checkpoint=str(loaded.path), checkpoint_fingerprint=loaded.fingerprint, checkpoint_kind=loaded.kind,
            task=task_name, seed=self.cfg.seed, pruner=best.settings, sparse_gpt_version=__version__,
            torch=torch.__version__, python=platform.python_version(),
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        edges = edge_set(model, self.layout, best.keep)
        return Circuit(provenance=provenance, model=asdict(model.config),
                       nodes=self.layout.circuit_nodes(best.keep, best.scores),
                       edges=edges.records(best.edge_keep), calibration=best.calibration, bisection=best.curve,
                       node_level_edges=len(edges) if best.edge_keep is not None else None)

    def extract(self, task_name: str, out_dir: Path, progress: bool = True, with_control: bool = True,
                viewer: bool = True, variants: bool = False) -> Circuit:
        """Prune, validate and write out_dir/circuit.json for one task, with circuit.png/.svg and
        (unless viewer=False) the interactive circuit.html beside it; returns the circuit."""
        t0 = time.perf_counter()
        best, runs = self.pruner(task_name).search(progress=progress, log=self.log)
        circuit = self._circuit(task_name, best)
        metrics = evaluate_circuit(self.loaded.model, circuit, get_task(task_name), self.loaded.tokenizer,
                                   self.means, natural_texts=self.natural_texts, scores=best.scores)
        metrics.search = [r.summary() for r in runs]
        metrics.edge_stage = best.edge_stage
        metrics.stages = best.stages
        metrics.total_nodes = self.layout.n_nodes
        if with_control:
            metrics.control = self.control(progress)
        if variants:
            metrics.variants = self.variants(task_name, progress)
        metrics.seconds = round(time.perf_counter() - t0, 1)
        circuit.metrics = metrics
        out_dir = Path(out_dir)
        circuit.save(out_dir / "circuit.json")
        render_static(circuit, out_dir / "circuit")
        if viewer:
            write_viewer(self.loaded, circuit, self.means, self.contexts(), out_dir / "circuit.html", progress)
        return circuit


def geometric_mean(values: list[float]) -> float:
    values = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan
