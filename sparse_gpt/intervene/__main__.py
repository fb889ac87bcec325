"""Set or ablate nodes and see how the next-token prediction changes.

    python -m sparse_gpt.intervene --checkpoint runs/cpu-small --ablate '0.mlp.post_act[12]' \\
        --prompt "x = 'abc" --answers "'" '"'
    python -m sparse_gpt.intervene --checkpoint runs/cpu-small --set '3.attn.v[5]=2.5' --task single_double_quote

With --task, the prompts are the task's held-out pairs and each one's two-way probability is of its
own correct answer against the alternative, as tokens the task's own encoding picks (on a tokenizer
that merges a closing quote with what follows, `")` against `')`). --ablate sets a node to its mean over pretraining text
(--ablation zero: to 0). Nodes are set at every position unless --at last.
"""
import argparse
import math
import sys

import torch

from sparse_gpt.checkpoint import CheckpointError
from sparse_gpt.cli import OneLineParser, whole_number
from sparse_gpt.config import resolve_device
from sparse_gpt.intervene import format_effects, intervene, intervene_task, node_values
from sparse_gpt.loading import load_any
from sparse_gpt.nodes import ABLATIONS, NodeLayout, ablation_values, load_or_compute_means
from sparse_gpt.tasks import TaskError, get_task


def _parse_set(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NODE=VALUE, e.g. 0.mlp.post_act[12]=1.5, got {text!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r}: a node can only be set to a finite number")
    return name, number


def main(argv=None) -> int:
    p = OneLineParser(prog="python -m sparse_gpt.intervene", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run or checkpoint directory, or an OpenAI model directory")
    p.add_argument("--set", type=_parse_set, action="append", default=[], metavar="NODE=VALUE",
                   help="set a node to a value (repeatable)")
    p.add_argument("--ablate", action="append", default=[], metavar="NODE", help="ablate a node (repeatable)")
    p.add_argument("--ablation", choices=ABLATIONS, default="mean", help="what an ablated node carries")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--answers", nargs=2, metavar=("ANSWER", "ALTERNATIVE"),
                   help="report P(ANSWER) against ALTERNATIVE for every --prompt")
    p.add_argument("--task", help="take prompts and answers from this task's held-out pairs")
    p.add_argument("--pairs", type=whole_number(1), default=4, help="task pairs used with --task")
    p.add_argument("--at", choices=["all", "last"], default="all", help="positions the nodes are set at")
    p.add_argument("--top", type=whole_number(0), default=5, help="next tokens listed before and after")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = p.parse_args(argv)
    if not args.prompt and not args.task:
        p.error("give --prompt TEXT (repeatable) or --task NAME")
    if not args.set and not args.ablate:
        p.error("give --set NODE=VALUE or --ablate NODE")
    try:
        task = get_task(args.task) if args.task else None
        loaded = load_any(args.checkpoint, resolve_device(args.device))
        model, tok = loaded.model, loaded.tokenizer
        layout = NodeLayout(model.config)
        for name in [*dict(args.set), *args.ablate]:  # before the means are computed
            layout.node_index(name)
        values = dict(args.set)
        if args.ablate:
            # zero ablation needs no means: skip computing them
            means = (load_or_compute_means(model, layout, tok, loaded.path, loaded.fingerprint, loaded.data,
                                           log=lambda m: print(m, file=sys.stderr))
                     if args.ablation == "mean" else torch.zeros(layout.n_nodes))
            values |= node_values(layout, args.ablate, ablation_values(args.ablation, means))
        answers = [tuple(args.answers) if args.answers else None] * len(args.prompt)
        effects = intervene(model, tok, args.prompt, values, answers=answers, at=args.at, top=args.top)
        if task is not None:
            effects += intervene_task(model, tok, task, values, pairs=args.pairs, seed=1, split="heldout",
                                      at=args.at, top=args.top)
    except (CheckpointError, TaskError, KeyError, IndexError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print("setting " + ", ".join(f"{n} = {v:+.4f}" for n, v in values.items())
          + (" at every position" if args.at == "all" else " at the last position"))
    print(format_effects(effects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
