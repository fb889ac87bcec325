"""Circuit extraction: node masks, the pruning optimiser, the circuit artefact and its validation."""
from .circuit import CircuitError, keep_mask, load_circuit, save_circuit
from .nodes import NodeLayout, circuit_edges
from .pruner import PruneConfig, Pruner, TargetUnreachableError
from .validate import evaluate_circuit

__all__ = ["CircuitError", "NodeLayout", "PruneConfig", "Pruner", "TargetUnreachableError", "circuit_edges",
           "evaluate_circuit", "keep_mask", "load_circuit", "save_circuit"]
