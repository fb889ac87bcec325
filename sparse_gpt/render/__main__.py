"""Re-render an existing circuit artefact: python -m sparse_gpt.render runs/x/circuits/TASK/circuit.json

Writes circuit.png and circuit.svg, and circuit.html, whose node panels need the model the circuit
was extracted from: by default the checkpoint named in circuit.json (--checkpoint to point at a
moved one; it must have the same weights). A circuit of at most 40 nodes also gets
circuit_labelled.png/.svg, drawn from the same model evidence. --static-only skips the HTML and the
labelled diagram and needs no checkpoint.
"""
import argparse
import sys
from pathlib import Path

from sparse_gpt.checkpoint import CheckpointError
from sparse_gpt.circuit import CircuitError, load_circuit


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("circuit", help="path to a circuit.json written by prune_circuit.py")
    p.add_argument("--out", help="output prefix (default: circuit.json's directory / circuit)")
    p.add_argument("--checkpoint", help="the checkpoint the circuit came from (default: as recorded in circuit.json)")
    p.add_argument("--static-only", action="store_true", help="only the PNG and SVG")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    from sparse_gpt.render import render_static  # after argument parsing: --help stays fast
    try:
        circuit = load_circuit(args.circuit)
    except CircuitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prefix = Path(args.out) if args.out else Path(args.circuit).with_name("circuit")
    for path in render_static(circuit, prefix):
        print(path)
    if args.static_only:
        return 0
    checkpoint = args.checkpoint or circuit.provenance.checkpoint
    try:
        if not checkpoint:
            raise CheckpointError("circuit.json does not record its checkpoint")
        from sparse_gpt.config import resolve_device
        from sparse_gpt.pipeline import rerender
        for path in rerender(args.circuit, checkpoint, prefix, resolve_device(args.device), not args.no_progress,
                             log=lambda m: print(m, file=sys.stderr)):
            print(path)
    except (CheckpointError, CircuitError, KeyError, ValueError) as e:
        print(f"error: circuit.html not written: {e.args[0] if isinstance(e, KeyError) else e} "
              "(pass --checkpoint DIR, or --static-only for the PNG and SVG alone)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
