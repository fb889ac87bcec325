"""Time AbsTopK alone (forward + backward) at a preset's activation shapes, and check it is exact.

    .venv/bin/python bench/abstopk.py                        # CPU, configs/cpu-small.yaml shapes
    .venv/bin/python bench/abstopk.py --device cuda --preset d512

One call is what one AbsTopK location costs in a training step: the forward on a (batch, ctx, width)
activation, then the backward of a random upstream gradient. The recipe has eight locations per
layer: seven of width d_model (attention input, q, k, v, attention output, MLP input and output)
and the MLP neurons (width 4 d_model); `step_ms` is the cost of all of them in all layers.
Methods: reference (torch.topk + scatter), triton (one kernel, sparse_gpt.topk_triton; the GPU
default) and the threshold methods of sparse_gpt.topk (topk, bisect, kthvalue, partition). Exactness: every method must keep, in every row, the same magnitudes
as the reference (the reference breaks ties arbitrarily) and exactly the entries of the library's
tie rule (a stable sort by magnitude): `rows_off` counts rows that break either. GPU: bf16.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment, interleaved, median, print_table, write_json  # noqa: E402
from bench.train_step import PRESETS, shape_from_args  # noqa: E402
from sparse_gpt.config import resolve_device  # noqa: E402
from sparse_gpt.model import abs_topk, abs_topk_reference  # noqa: E402

DEFAULT = {"cpu": "reference,partition,topk,bisect", "cuda": "reference,triton,topk,bisect"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cpu-small.yaml", help="shape source")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named GPU shape instead of --config")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--methods", help=f"comma-separated (default {DEFAULT['cpu']} on CPU, {DEFAULT['cuda']} on CUDA)")
    p.add_argument("--afrac", type=float, default=0.25, help="kept fraction")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", help="JSON path")
    return p.parse_args(argv)


def _rule_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(a, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(a, dtype=torch.bool).scatter_(-1, order, True)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.n_layer = args.d_model = args.block_size = args.batch_size = args.vocab_size = None
    args.matrix_density = args.embed_density = None
    shape = shape_from_args(args)
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    methods = [m for m in (args.methods or DEFAULT["cuda" if device == "cuda" else "cpu"]).split(",") if m]
    B, T, d = shape["batch_size"], shape["block_size"], shape["d_model"]
    widths = {d: 7 * shape["n_layer"], 4 * d: shape["n_layer"]}  # width -> locations per step
    gen = torch.Generator().manual_seed(0)
    rows, seconds = [], {}
    for width, count in widths.items():
        k = max(1, int(args.afrac * width))
        x = torch.randn(B, T, width, generator=gen).to(device, dtype).requires_grad_()
        up = torch.randn(B, T, width, generator=gen).to(device, dtype)

        def call(method):
            def run():
                out = abs_topk_reference(x, k) if method == "reference" else abs_topk(x, k, method)
                torch.autograd.grad(out, x, up)
            return run
        times = interleaved({m: call(m) for m in methods}, device, args.repeats)
        seconds[str(width)] = times
        with torch.no_grad():
            a = x.detach().abs()
            ref_sorted = abs_topk_reference(x.detach(), k).abs().float().sort(-1).values
            rule = _rule_mask(a.float(), k)  # bf16 -> fp32 is exact: the same order
        base = median(times["reference"]) if "reference" in times else None
        for m in methods:
            with torch.no_grad():
                out = abs_topk_reference(x.detach(), k) if m == "reference" else abs_topk(x.detach(), k, m)
                same_mags = (out.abs().float().sort(-1).values == ref_sorted).all(-1)
                same_rule = ((out != 0) == (rule & (a != 0))).all(-1) if m != "reference" else same_mags
                off = int((~(same_mags & same_rule)).sum())
            ms = median(times[m]) * 1e3
            rows.append({"width": width, "k": k, "method": m, "fwd_bwd_ms": ms, "locations": count,
                         "step_ms": ms * count, "vs_reference": ms / (base * 1e3) if base else None,
                         "rows_off": off})
    totals = {m: sum(r["step_ms"] for r in rows if r["method"] == m) for m in methods}
    for m in methods:
        rows.append({"width": "all", "method": m, "step_ms": totals[m],
                     "vs_reference": totals[m] / totals["reference"] if "reference" in totals else None,
                     "rows_off": sum(r["rows_off"] for r in rows if r["method"] == m and r["width"] != "all")})
    print(f"{environment(device)['device_name']}, torch {torch.__version__}, {dtype}, activations "
          f"({B}, {T}, width), afrac {args.afrac}, {args.repeats} repeats")
    print_table(rows, ["width", "k", "method", "fwd_bwd_ms", "locations", "step_ms", "vs_reference", "rows_off"])
    name = f"abstopk_{'cuda' if device == 'cuda' else 'cpu'}" + (f"_{args.preset}" if args.preset else "")
    write_json(name, {"benchmark": "abstopk", **environment(device), "shape": shape, "afrac": args.afrac,
                      "dtype": str(dtype), "repeats": args.repeats, "rows": rows, "seconds": seconds}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
