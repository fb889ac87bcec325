"""Print what makes nodes fire: python -m sparse_gpt.explain --checkpoint DIR NODE [NODE ...]

NODE names look like 0.mlp.post_act[12], 2.attn.q[35], 1.attn.act_in[7] (a circuit.json lists its
nodes' names). The first call on a checkpoint scans its validation text once (seconds on the CPU
model) and caches the result beside the checkpoint (in the user cache directory, $XDG_CACHE_HOME/sparse_gpt,
when the checkpoint's directory cannot be written); later calls are instant and print the same.
"""
import argparse
import json
import sys

from sparse_gpt.checkpoint import CheckpointError
from sparse_gpt.cli import OneLineParser, whole_number
from sparse_gpt.explain import ExplainSettings, node_contexts
from sparse_gpt.config import resolve_device
from sparse_gpt.loading import load_any
from sparse_gpt.nodes import NodeLayout


def main(argv=None) -> int:
    d = ExplainSettings()
    p = OneLineParser(prog="python -m sparse_gpt.explain", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run or checkpoint directory, or an OpenAI model directory")
    p.add_argument("nodes", nargs="+", metavar="NODE", help="node name, e.g. 0.mlp.post_act[12]")
    p.add_argument("--contexts", type=whole_number(1), default=d.n_contexts, help="contexts shown per side")
    p.add_argument("--tokens", type=whole_number(1), default=d.n_tokens, help="validation tokens scanned")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = p.parse_args(argv)
    settings = ExplainSettings(n_tokens=args.tokens, n_contexts=max(d.n_contexts, args.contexts))
    try:
        loaded = load_any(args.checkpoint, resolve_device(args.device))
        # Names and sizes are checked before the (seconds-long) scan, so a typo costs nothing.
        layout = NodeLayout(loaded.model.config)
        for name in args.nodes:
            layout.node_index(name)
        block = loaded.model.config.block_size
        if args.tokens < block:
            raise ValueError(f"--tokens {args.tokens} is less than one window of the model's context "
                             f"({block} tokens)")
        contexts = node_contexts(loaded, settings, log=lambda m: print(m, file=sys.stderr))
        explanations = [contexts.explain(name, args.contexts) for name in args.nodes]
    except (CheckpointError, KeyError, IndexError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([e.to_dict() for e in explanations], indent=1))
    else:
        print("\n\n".join(e.format() for e in explanations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
