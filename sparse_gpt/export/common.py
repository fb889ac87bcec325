"""What every export needs: the circuit, the model it was extracted from, and node labels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..circuit import Circuit, CircuitError
from ..explain.contexts import ExplainSettings, NodeExplanation, node_contexts
from ..loading import LoadedModel, load_any
from ..nodes import NodeLayout


class ExportError(ValueError):
    """A circuit that cannot be exported as asked (no checkpoint, unknown task, bad output)."""


@dataclass
class ExportInput:
    circuit: Circuit
    loaded: LoadedModel
    layout: NodeLayout
    path: Path          # the circuit.json


def load_export_input(circuit_path: str | Path, checkpoint: str | Path | None = None,
                      device: str = "cpu") -> ExportInput:
    """The circuit and its checkpoint (the one its provenance names, unless `checkpoint` is given);
    a circuit extracted from other weights than the checkpoint's is refused."""
    path = Path(circuit_path)
    circuit = Circuit.load(path)
    where = checkpoint or circuit.provenance.checkpoint
    if where is None:
        raise ExportError(f"{path} names no checkpoint: pass --checkpoint")
    if not Path(where).exists():
        raise ExportError(f"{path} was extracted from {where}, which does not exist here: "
                          f"pass --checkpoint")
    loaded = load_any(where, device)
    circuit = Circuit.load(path, loaded.fingerprint)  # refuses other weights
    return ExportInput(circuit, loaded, NodeLayout(loaded.model.config), path)


def _label(e: NodeExplanation) -> str:
    """A one-line label: the tokens the node is most and least active on over validation text."""
    def tokens(stats) -> str:
        return " ".join(repr(s.token) for s in stats[:3]) or "-"
    return f"{e.name}  top: {tokens(e.top_tokens)}  bottom: {tokens(e.bottom_tokens)}"


def node_labels(inp: ExportInput, log=print) -> dict[str, str]:
    """{node name: label} for the circuit's nodes, from the checkpoint's cached explanations."""
    contexts = node_contexts(inp.loaded, ExplainSettings(), log)
    return {name: _label(contexts.explain(name, n_contexts=0)) for name in inp.circuit.node_names}
