"""Markdown tables of a circuit's nodes, for writing up a circuit (docs/quote_circuit.md).

    python tools/node_table.py runs/cpu-small/circuits/single_double_quote/circuit.json --top 15

Prints where the nodes are (per layer and kind) and the most important nodes by the circuit's raw
loss without each one, with their mean activation at the answer position on each side of the task,
their mean over pretraining text and the full model's loss without them: the numbers the viewer
shows when a node is clicked, on more prompts (`--pairs`). Reads the checkpoint named in
circuit.json; not part of the sparse_gpt package.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

KINDS = ("resid_read", "attn_q", "attn_k", "attn_v", "resid_write", "mlp_neuron")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("circuit", type=Path, help="circuit.json")
    p.add_argument("--top", type=int, default=15, help="rows of the importance table")
    p.add_argument("--pairs", type=int, default=64, help="templated pairs the numbers are measured on")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from sparse_gpt.circuit import load_circuit, node_details
    from sparse_gpt.loading import load_any
    from sparse_gpt.nodes import NodeLayout, load_or_compute_means
    from sparse_gpt.tasks import get_task

    try:
        circuit = load_circuit(args.circuit)
        loaded = load_any(circuit.provenance.checkpoint, args.device)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    layout = NodeLayout(loaded.model.config)
    means = load_or_compute_means(loaded.model, layout, loaded.tokenizer, loaded.path, loaded.fingerprint,
                                  loaded.data)
    details = node_details(loaded.model, loaded.tokenizer, circuit, get_task(circuit.task), means,
                           n_pairs=args.pairs, progress=False)

    counts = Counter((n.layer, n.kind) for n in circuit.nodes)
    print("| layer | " + " | ".join(KINDS) + " |\n|---|" + "---|" * len(KINDS))
    for layer in range(loaded.model.config.n_layer):
        print(f"| {layer} | " + " | ".join(str(counts[(layer, k)]) for k in KINDS) + " |")

    b = details.baseline
    print(f"\n{details.n_prompts} templated prompts; circuit raw loss {b['circuit']:.3f}, full model {b['full']:.3f}\n")
    s0, s1 = details.sides
    print(f"| node | mean act., {s0} | {s1} | pretraining mean | circuit without it | full model without it |")
    print("|---|---|---|---|---|---|")
    ranked = sorted(details.nodes.items(), key=lambda kv: -kv[1].circuit_without)
    for name, n in ranked[:args.top]:
        print(f"| `{name}` | {n.side_means[0]:.3f} | {n.side_means[1]:.3f} | {n.pretraining_mean:.3f} | "
              f"{n.circuit_without:.3f} | {n.ablated_alone:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
