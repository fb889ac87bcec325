"""Time the weight top-k alone on a model's real parameter shapes, and check it is exact.

    .venv/bin/python bench/sparsify.py                       # CPU, configs/cpu-small.yaml shapes
    .venv/bin/python bench/sparsify.py --device cuda --preset d1024

One "sweep" is what the optimiser does after every step: the top-k (with the neuron floor on the
matrices) of every sparse tensor at its target density. Methods:
  reference   torch.topk per tensor (sparse_gpt.sparsity.keep_topk_reference_)
  partition   per-group threshold by numpy.partition (the CPU default)
  topk        per-group threshold from torch.topk's values (the GPU default)
  bisect      per-group threshold found bit by bit, one counting pass per bit
  kthvalue    per-group threshold by torch.kthvalue (the former GPU default)
Every threshold method fills ties by the same exact rule (sparse_gpt.topk).
Exactness: each method's kept set must equal the reference's on every tensor (random weights have
no ties, so the sets must be identical); the table gives the mismatching entries (0 = exact).
Methods are interleaved over `--repeats` sweeps; medians. Writes bench/results/sparsify_<device>[_<preset>].json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment, interleaved, median, print_table, write_json  # noqa: E402
from bench.train_step import PRESETS, shape_from_args  # noqa: E402
from sparse_gpt.config import ModelConfig, SparsityConfig  # noqa: E402
from sparse_gpt.config import resolve_device  # noqa: E402
from sparse_gpt.model import GPT  # noqa: E402
from sparse_gpt.sparsity import keep_topk_group_, sparse_tensors  # noqa: E402

METHODS = ("reference", "partition", "topk", "bisect", "kthvalue")
DEFAULT = {"cpu": "reference,partition,topk,bisect", "cuda": "reference,topk,bisect,kthvalue"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cpu-small.yaml", help="shape source")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named GPU shape instead of --config")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--methods", help="comma-separated subset of " + ",".join(METHODS)
                   + f" (default {DEFAULT['cpu']} on CPU, {DEFAULT['cuda']} on CUDA)")
    p.add_argument("--repeats", type=int, default=15, help="timed sweeps per method")
    p.add_argument("--out", help="JSON path")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.n_layer = args.d_model = args.block_size = args.batch_size = args.vocab_size = None
    args.matrix_density = args.embed_density = None
    shape = shape_from_args(args)
    device = resolve_device(args.device)
    methods = [m for m in (args.methods or DEFAULT["cuda" if device == "cuda" else "cpu"]).split(",") if m]
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=shape["vocab_size"], block_size=shape["block_size"], n_layer=shape["n_layer"],
                            d_model=shape["d_model"], d_head=shape["d_head"], afrac=None)).to(device)
    tensors = sparse_tensors(model, SparsityConfig(matrix_density=shape["matrix_density"],
                                                   embed_density=shape["embed_density"]))
    groups: dict[tuple, list] = {}
    for t in tensors:
        groups.setdefault((tuple(t.param.shape), t.density, t.floor, t.unit_dim), []).append(t)
    # Dense weights as after an Adam step (no zeros, no ties); each method works on its own copies.
    originals = [t.param.detach().clone() for t in tensors]
    index = {id(t): i for i, t in enumerate(tensors)}

    def sweep_fn(method):
        work = [w.clone() for w in originals]

        def sweep():
            for w, o in zip(work, originals):
                w.copy_(o)
            for group in groups.values():
                t = group[0]
                keep_topk_group_([work[index[id(g)]] for g in group], t.k_at(1.0), t.floor, t.unit_dim, method)
        return sweep, work

    fns, results = {}, {}
    for m in methods:
        fns[m], results[m] = sweep_fn(m)
    fns["copy_only"] = lambda: [w.copy_(o) for w, o in zip(results[methods[0]], originals)]
    times = interleaved(fns, device, args.repeats)
    for m in methods:  # leave each method's output of its last sweep in results
        fns[m]()
    if "reference" in results:
        ref = results["reference"]
    else:
        fn_ref, ref = sweep_fn("reference")
        fn_ref()
    base = median(times["copy_only"])
    rows = []
    for m in methods:
        mismatch = sum(int(((a != 0) != (b != 0)).sum()) for a, b in zip(results[m], ref))
        ms = (median(times[m]) - base) * 1e3
        rows.append({"method": m, "sweep_ms": ms, "vs_reference": None, "mismatches": mismatch,
                     "kept": sum(int((w != 0).sum()) for w in results[m])})
    ref_ms = next((r["sweep_ms"] for r in rows if r["method"] == "reference"), None)
    for r in rows:
        r["vs_reference"] = r["sweep_ms"] / ref_ms if ref_ms else None
    shapes = [{"shape": list(k[0]), "density": k[1], "floor": k[2], "unit_dim": k[3], "count": len(v),
               "k": v[0].k_at(1.0)} for k, v in groups.items()]
    print(f"{environment(device)['device_name']}, torch {torch.__version__}, {len(tensors)} sparse tensors in "
          f"{len(groups)} shape groups, {sum(t.numel for t in tensors):,} weights, {args.repeats} repeats "
          f"(times exclude restoring the weights, {base * 1e3:.2f} ms)")
    print_table(rows, ["method", "sweep_ms", "vs_reference", "mismatches", "kept"])
    name = f"sparsify_{'cuda' if device == 'cuda' else 'cpu'}" + (f"_{args.preset}" if args.preset else "")
    write_json(name, {"benchmark": "sparsify", **environment(device), "shape": shape, "groups": shapes,
                      "repeats": args.repeats, "rows": rows, "seconds": times}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
