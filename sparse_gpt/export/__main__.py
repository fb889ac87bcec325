"""Command line: export a circuit.json for another viewer.

    python -m sparse_gpt.export runs/x/circuits/single_double_quote/circuit.json --format neuronpedia --out DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from sparse_gpt.checkpoint import CheckpointError
from sparse_gpt.circuit import Circuit, CircuitError
from sparse_gpt.cli import OneLineParser, whole_number
from sparse_gpt.tasks import TaskError

from . import (FORMATS, ExportError, load_export_input, neuronpedia_graphs, node_labels,
               viz_data, write_csv, write_neuronpedia, write_openai)

VIEWER_HINT = """open them in circuit-tracer's local viewer (pip install circuit-tracer):
  python -c "from circuit_tracer.frontend.local_server import serve; serve(data_dir='{out}', port=8041); input('Enter stops the viewer')"
  then browse http://localhost:8041/index.html"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sparse_gpt.export",
                      description="Export a circuit for other viewers: Neuronpedia / "
                                  "circuit-tracer graphs, OpenAI's viewer, or CSV tables.")
    p.add_argument("circuit", help="a circuit.json written by prune_circuit.py")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="neuronpedia: attribution-graph JSON, one per representative prompt; "
                        "openai: viz_data.pt for OpenAI's viewer; csv: nodes.csv and edges.csv")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--checkpoint", default=None,
                   help="the checkpoint the circuit was extracted from (default: the one its "
                        "circuit.json names)")
    p.add_argument("--pairs", type=whole_number(1), default=2,
                   help="neuronpedia: prompt pairs to draw a graph for (two graphs each)")
    p.add_argument("--no-labels", action="store_true",
                   help="leave out the node labels (they need the explanations: one pass over "
                        "32,768 validation tokens, cached beside the checkpoint)")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a directory")
    if args.pairs < 1:
        raise ExportError(f"--pairs must be at least 1, got {args.pairs}")
    if args.format == "csv" and args.no_labels:
        circuit = Circuit.load(args.circuit)  # the tables alone need no model
        paths = write_csv(circuit, out)
    else:
        inp = load_export_input(args.circuit, args.checkpoint, args.device)
        labels = {} if args.no_labels else node_labels(inp, _log)
        if args.format == "csv":
            paths = write_csv(inp.circuit, out, labels)
        elif args.format == "neuronpedia":
            paths = write_neuronpedia(neuronpedia_graphs(inp, labels, args.pairs), out)
        else:
            contexts = None
            if not args.no_labels:
                from sparse_gpt.explain.contexts import ExplainSettings, node_contexts
                contexts = node_contexts(inp.loaded, ExplainSettings(), _log)
            paths = [write_openai(viz_data(inp, contexts, _log), out)]
    for path in paths:
        print(f"wrote {path}")
    if args.format == "neuronpedia":
        print(VIEWER_HINT.format(out=out))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (CircuitError, ExportError, CheckpointError, TaskError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
