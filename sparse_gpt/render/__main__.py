"""Re-render an existing circuit artefact: python -m sparse_gpt.render runs/x/circuits/TASK/circuit.json"""
import argparse
import sys
from pathlib import Path

from sparse_gpt.prune.circuit import CircuitError, load_circuit
from sparse_gpt.render import render_static


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("circuit", help="path to a circuit.json written by prune_circuit.py")
    p.add_argument("--out", help="output prefix (default: circuit.json's directory / circuit)")
    args = p.parse_args(argv)
    try:
        circuit = load_circuit(args.circuit)
    except CircuitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prefix = Path(args.out) if args.out else Path(args.circuit).with_name("circuit")
    for path in render_static(circuit, prefix):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
