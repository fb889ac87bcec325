"""Markdown tables of a circuit's nodes, for writing up a circuit (docs/quote_circuit.md).

    python tools/node_table.py runs/cpu-small/circuits/single_double_quote/circuit.json --top 15

Prints where the nodes are (per layer and kind) and the most important nodes by the circuit's raw
loss without each one, with their mean activation on each side of the task at the answer position
and at the token where a pair's prompts differ (the opening quote of the quote task), their mean
over pretraining text and the full model's loss without them: the numbers the viewer shows when a
node is clicked, on more prompts (`--pairs`). With `--attention LAYER`, also where each head of
that layer looks from the answer position, in the full model and in the circuit: its share on the
token where the pair differs and on the sink. Reads the checkpoint named in circuit.json; not part
of the sparse_gpt package.
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
    p.add_argument("--attention", type=int, action="append", default=[], metavar="LAYER",
                   help="also tabulate where this layer's heads attend from the answer position (repeatable)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from sparse_gpt.circuit import attention_from_answer, load_circuit, node_details
    from sparse_gpt.loading import load_any
    from sparse_gpt.nodes import NodeLayout, load_or_compute_means
    from sparse_gpt.tasks import get_task

    try:
        circuit = load_circuit(args.circuit)
        loaded = load_any(circuit.provenance.checkpoint, args.device)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_layer = loaded.model.config.n_layer
    bad = [layer for layer in args.attention if not 0 <= layer < n_layer]
    if bad:
        print(f"error: --attention {bad[0]}: the model has layers 0-{n_layer - 1}", file=sys.stderr)
        return 2
    layout = NodeLayout(loaded.model.config)
    means = load_or_compute_means(loaded.model, layout, loaded.tokenizer, loaded.path, loaded.fingerprint,
                                  loaded.data)
    task = get_task(circuit.task)
    details = node_details(loaded.model, loaded.tokenizer, circuit, task, means,
                           n_pairs=args.pairs, progress=False)

    counts = Counter((n.layer, n.kind) for n in circuit.nodes)
    print("| layer | " + " | ".join(KINDS) + " |\n|---|" + "---|" * len(KINDS))
    for layer in range(loaded.model.config.n_layer):
        print(f"| {layer} | " + " | ".join(str(counts[(layer, k)]) for k in KINDS) + " |")

    b = details.baseline
    print(f"\n{details.n_prompts} templated prompts; circuit raw loss {b['circuit']:.3f}, full model {b['full']:.3f}\n")
    s0, s1 = details.sides
    print(f"| node | at the answer, {s0} | {s1} | at the token the pair differs in, {s0} | {s1} | "
          "pretraining mean | circuit without it | full model without it |")
    print("|---|---|---|---|---|---|---|---|")
    ranked = sorted(details.nodes.items(), key=lambda kv: -kv[1].circuit_without)
    for name, n in ranked[:args.top]:
        d0, d1 = n.difference_means or (float("nan"), float("nan"))
        print(f"| `{name}` | {n.side_means[0]:.3f} | {n.side_means[1]:.3f} | {d0:.3f} | {d1:.3f} | "
              f"{n.pretraining_mean:.3f} | {n.circuit_without:.3f} | {n.ablated_alone:.3f} |")
    for layer in args.attention:
        heads = attention_from_answer(loaded.model, loaded.tokenizer, circuit, task, means, layer,
                                      n_pairs=args.pairs)
        print(f"\nLayer {layer}: attention from the answer position ({2 * args.pairs} prompts)\n")
        print("| head | on the token the pair differs in, full | circuit | on the sink, full | circuit |")
        print("|---|---|---|---|---|")
        for h, a in enumerate(heads):
            print(f"| {h} | {a.on_difference[0]:.3f} | {a.on_difference[1]:.3f} | {a.on_sink[0]:.3f} | "
                  f"{a.on_sink[1]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
