"""The circuit as two CSV tables, nodes.csv and edges.csv, for pandas and spreadsheets."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..circuit import Circuit
from ..fileio import atomic_write_text

NODES_FILE = "nodes.csv"
EDGES_FILE = "edges.csv"
NODE_COLUMNS = ("name", "location", "layer", "kind", "index", "score", "label")
EDGE_COLUMNS = ("source", "target", "weight", "matrix")


def _table(columns, rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(circuit: Circuit, out: Path, labels: dict[str, str] | None = None) -> list[Path]:
    """nodes.csv (one row per node: name, location, layer, kind, index within the location, the
    pruner's score, the explanation label) and edges.csv (source, target, weight, weight matrix)."""
    labels = labels or {}
    out.mkdir(parents=True, exist_ok=True)
    nodes = [(n.name, n.location, n.layer, n.kind, n.index, "" if n.score is None else n.score,
              labels.get(n.name, "")) for n in circuit.nodes]
    edges = [(e.source, e.target, e.weight, e.matrix) for e in circuit.edges]
    paths = [out / NODES_FILE, out / EDGES_FILE]
    atomic_write_text(paths[0], _table(NODE_COLUMNS, nodes))
    atomic_write_text(paths[1], _table(EDGE_COLUMNS, edges))
    return paths
