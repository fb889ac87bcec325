"""Time one training step: dense vs weight-sparse vs the full paper recipe, side by side.

    .venv/bin/python bench/train_step.py                          # CPU, the configs/cpu-small.yaml shape
    .venv/bin/python bench/train_step.py --device cuda --preset d512 --compile
    .venv/bin/python bench/train_step.py --device cuda --preset d1024 --compile

A step is what train.py does: forward, fp32 loss, backward, gradient RMS normalisation, Adam, the
weight top-k of every sparse tensor (annealing finished, so at the target density), weight decay.
Variants (same shape, same random tokens):
  plain          the floor: a plain dense GPT, no sink, standard 64-wide heads
  nosink         dense, the recipe's 16-wide heads, no attention sink
  dense          dense with the attention sink (flash path): no weight or activation sparsity
  dense_sinkmask dense with the sink passed to SDPA as a float mask (the reference path)
  sparse         + weight top-k (the library's default, fast path)
  sparse_ref     + weight top-k by torch.topk per tensor (the reference)
  recipe         + AbsTopK at all eight locations (fast path) + weight top-k + bigram table
  recipe_ref     the same with the torch.topk references for both top-k's
Every variant is timed `--repeats` times, the variants interleaved (a b c a b c ...), and the
table gives the medians and each median's ratio to dense. GPU: bf16 autocast, CUDA sync around
each timed step, optional torch.compile. `opt_ms` is the optimiser step alone (Adam, top-k, decay),
timed from the loss read to the gradient RMS read that ends it; `--profile` prints where the time goes. Writes bench/results/train_step_<device>[_<preset>].json.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment, interleaved, median, print_table, write_json  # noqa: E402
from sparse_gpt.config import ModelConfig, SparsityConfig, TrainConfig  # noqa: E402
from sparse_gpt.flops import flops_per_token, peak_flops  # noqa: E402
from sparse_gpt.config import resolve_device  # noqa: E402
from sparse_gpt.model import GPT, AbsTopK, CausalSelfAttention  # noqa: E402
from sparse_gpt.sparsity import SparseAdam  # noqa: E402
from sparse_gpt.trainer import cross_entropy  # noqa: E402

# The GPU shapes: 8 layers, vocab 4096, 32k tokens per step.
PRESETS = {
    "d512": dict(n_layer=8, d_model=512, block_size=512, batch_size=64, vocab_size=4096,
                 matrix_density=1 / 64, embed_density=1 / 16),
    "d1024": dict(n_layer=8, d_model=1024, block_size=1024, batch_size=32, vocab_size=4096,
                  matrix_density=1 / 64, embed_density=1 / 16),
}
VARIANTS = ("plain", "nosink", "dense", "dense_sinkmask", "sparse", "sparse_ref", "recipe", "recipe_ref")
DEFAULT_VARIANTS = ("plain", "nosink", "dense", "sparse", "sparse_ref", "recipe", "recipe_ref")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/cpu-small.yaml", help="shape source (model, sparsity, batch)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named GPU shape instead of --config")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    for name in ("n_layer", "d_model", "block_size", "batch_size", "vocab_size"):
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"override {name}")
    p.add_argument("--matrix-density", type=float, help="override sparsity.matrix_density")
    p.add_argument("--embed-density", type=float, help="override sparsity.embed_density")
    p.add_argument("--afrac", type=float, default=0.25, help="AbsTopK fraction of the recipe variants")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--topk-method", default="auto", help="weight top-k method of the non-_ref variants (sparsity.TOPK_METHODS)")
    p.add_argument("--abstopk-method", default="auto", help="AbsTopK method of the non-_ref recipe (topk.METHODS)")
    p.add_argument("--repeats", type=int, help="timed steps per variant (default 10 on CPU, 30 on GPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on cuda")
    p.add_argument("--profile", help="comma-separated variants to profile (3 steps each, torch.profiler table)")
    p.add_argument("--out", help="JSON path (default bench/results/train_step_<device>[_<preset>].json)")
    return p.parse_args(argv)


def shape_from_args(args) -> dict:
    if args.preset:
        shape = dict(PRESETS[args.preset])
    else:
        raw = yaml.safe_load(Path(args.config).read_text())
        m, s, t = raw.get("model", {}), raw.get("sparsity", {}), raw.get("train", {})
        shape = dict(n_layer=m.get("n_layer", 8), d_model=m.get("d_model", 256), block_size=m.get("block_size", 256),
                     batch_size=t.get("batch_size", 32), vocab_size=raw.get("data", {}).get("vocab_size", 2048),
                     matrix_density=s.get("matrix_density", 1 / 64), embed_density=s.get("embed_density", 1 / 16),
                     neuron_floor=s.get("neuron_floor", 4), attn_sink=m.get("attn_sink", True), d_head=m.get("d_head", 16))
    for key in ("n_layer", "d_model", "block_size", "batch_size", "vocab_size", "matrix_density", "embed_density"):
        if getattr(args, key, None) is not None:
            shape[key] = getattr(args, key)
    shape.setdefault("neuron_floor", 4)
    shape.setdefault("attn_sink", True)
    shape.setdefault("d_head", 16)
    return shape


def build(variant: str, shape: dict, afrac: float, device: str, compile_model: bool,
          topk_method: str = "auto", abstopk_method: str = "auto"):
    recipe = variant.startswith("recipe")
    plain = variant == "plain"
    mcfg = ModelConfig(vocab_size=shape["vocab_size"], block_size=shape["block_size"], n_layer=shape["n_layer"],
                       d_model=shape["d_model"], d_head=64 if plain and shape["d_model"] % 64 == 0 else shape["d_head"],
                       attn_sink=shape["attn_sink"] and variant not in ("plain", "nosink"),
                       bigram_table=recipe, afrac=afrac if recipe else None)
    dense = variant in ("plain", "nosink", "dense", "dense_sinkmask")
    scfg = SparsityConfig(matrix_density=1.0 if dense else shape["matrix_density"],
                          embed_density=1.0 if dense else shape["embed_density"],
                          neuron_floor=shape["neuron_floor"])
    tcfg = TrainConfig(steps=1000, batch_size=shape["batch_size"])
    torch.manual_seed(0)
    model = GPT(mcfg).to(device)
    opt = SparseAdam(model, scfg, tcfg)
    ref = variant.endswith("_ref")
    opt.topk_method = "reference" if ref else topk_method
    for m in model.modules():
        if isinstance(m, AbsTopK):
            m.method = "reference" if ref else abstopk_method
        if isinstance(m, CausalSelfAttention):
            m.flash_sink = variant != "dense_sinkmask"
    return model, opt, (torch.compile(model) if compile_model else model)


def profile(fns: dict, variants: list[str], device: str, steps: int = 3) -> None:
    """Print where a step's time goes (top kernels/ops by device time, or CPU time on CPU)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    for v in variants:
        with torch_profile(activities=activities) as prof:
            for _ in range(steps):
                fns[v]()
        print(f"--- profile: {v}, {steps} steps")
        print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60))


def main(argv=None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    shape = shape_from_args(args)
    variants = [v for v in args.variants.split(",") if v]
    repeats = args.repeats or (30 if device == "cuda" else 10)
    use_bf16 = args.dtype == "bf16" or (args.dtype == "auto" and device == "cuda")
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    gen = torch.Generator().manual_seed(0)
    B, T = shape["batch_size"], shape["block_size"]
    tokens = torch.randint(0, shape["vocab_size"], (B, T + 1), generator=gen).to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    step_idx = 750  # after annealing (ends at 50%): every top-k runs at the target density

    fns, models, opt_seconds = {}, {}, {v: [] for v in variants}
    for v in variants:
        model, opt, run_model = build(v, shape, args.afrac, device, args.compile, args.topk_method,
                                      args.abstopk_method)
        models[v] = model

        def step(model=model, opt=opt, run_model=run_model, opt_s=opt_seconds[v]):
            with autocast():
                loss = cross_entropy(run_model(x), y)
            loss.backward()
            loss.item()  # train.py reads the loss every step: the device is idle from here
            t0 = time.perf_counter()
            opt.step(step_idx)  # ends by reading the gradient RMS: the optimiser's work is done
            opt_s.append(time.perf_counter() - t0)
            opt.zero_grad()
        fns[v] = step
    times = interleaved(fns, device, repeats, warmup=args.warmup)
    if args.profile:
        profile(fns, [v for v in args.profile.split(",") if v in fns], device)

    flops_tok = flops_per_token(models[variants[0]].config)  # the same for every variant (d_head aside)
    peak = peak_flops(device)
    base = median(times["dense"]) if "dense" in times else None
    rows = []
    for v in variants:
        med = median(times[v])
        tok_s = B * T / med
        rows.append({"variant": v, "step_ms": med * 1e3, "min_ms": min(times[v]) * 1e3, "tokens_per_s": tok_s,
                     "vs_dense": med / base if base else None,
                     "opt_ms": median(opt_seconds[v][-repeats:]) * 1e3,
                     "mfu": flops_per_token(models[v].config) * tok_s / peak if peak else None,
                     "params": models[v].num_params()})
    print(f"{environment(device)['device_name']}, torch {torch.__version__}, shape {shape}, {repeats} repeats")
    print_table(rows, ["variant", "step_ms", "min_ms", "opt_ms", "tokens_per_s", "vs_dense", "mfu"])
    name = f"train_step_{'cuda' if device == 'cuda' else 'cpu'}" + (f"_{args.preset}" if args.preset else "")
    write_json(name, {"benchmark": "train_step", **environment(device), "shape": shape, "afrac": args.afrac,
                      "topk_method": args.topk_method, "abstopk_method": args.abstopk_method,
                      "compile": args.compile, "bf16_autocast": use_bf16, "repeats": repeats,
                      "flops_per_token": flops_tok, "peak_flops": peak, "rows": rows,
                      "seconds": {v: times[v] for v in variants}}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
