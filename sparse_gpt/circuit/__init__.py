"""The circuit: the typed artefact pruning produces (circuit.json), its validation, and the per-node
numbers the viewer shows. Everything after pruning reads a `Circuit`."""
from .artefact import SCHEMA, Circuit, CircuitError, Provenance, load_circuit
from .details import NodeDetails, node_details
from .validate import evaluate_circuit

__all__ = ["SCHEMA", "Circuit", "CircuitError", "NodeDetails", "Provenance", "evaluate_circuit", "load_circuit",
           "node_details"]
