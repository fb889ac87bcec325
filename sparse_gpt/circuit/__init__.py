"""The circuit: the typed artefact pruning produces (circuit.json), its validation, and the per-node
numbers the viewer shows. Everything after pruning reads a `Circuit`."""
from .artefact import SCHEMA, Circuit, CircuitError, Provenance, load_circuit
from .details import HeadAttention, NodeDetails, attention_from_answer, node_details
from .metrics import Control, Metrics, RandomBaseline
from .validate import evaluate_circuit

__all__ = ["SCHEMA", "Circuit", "CircuitError", "Control", "HeadAttention", "Metrics", "NodeDetails", "Provenance",
           "RandomBaseline", "attention_from_answer", "evaluate_circuit", "load_circuit", "node_details"]
