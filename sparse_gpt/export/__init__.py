"""A circuit in the formats other viewers read.

    python -m sparse_gpt.export runs/x/circuits/single_double_quote/circuit.json --format neuronpedia --out DIR

- `neuronpedia` (neuronpedia.py): attribution-graph JSON, the format Neuronpedia's graph pages and
  circuit-tracer's local viewer read; one graph per representative prompt of the task.
- `openai` (openai_viz.py): the `viz_data.pt` dictionary OpenAI's circuit viewer reads.
- `csv` (tables.py): the circuit's nodes and edges as two tables.

Node labels come from the explanations (sparse_gpt.explain), computed once per checkpoint and
cached beside it.
"""
from .common import ExportError, ExportInput, load_export_input, node_labels
from .neuronpedia import GRAPH_INDEX, check_graph, neuronpedia_graphs, write_neuronpedia
from .openai_viz import VIZ_FILE, viz_data, write_openai
from .tables import EDGES_FILE, NODES_FILE, write_csv

FORMATS = ("neuronpedia", "openai", "csv")

__all__ = [
    "EDGES_FILE", "ExportError", "ExportInput", "FORMATS", "GRAPH_INDEX", "NODES_FILE", "VIZ_FILE",
    "check_graph", "load_export_input", "neuronpedia_graphs", "node_labels", "viz_data",
    "write_csv", "write_neuronpedia", "write_openai",
]
