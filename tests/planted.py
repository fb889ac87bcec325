"""A hand-built weight-sparse model whose quote-closing circuit is known exactly, plus distractors.

Vocabulary (a real word-level tokenizer): `"` and `'` open a string, a-f are filler words, `=` asks
for the answer, X answers `"` and Y answers `'`. Prompt: `" c a f =` -> X, `' c a f =` -> Y.

The planted mechanism (two layers, d_model 16, four heads of width 4, 16 MLP neurons), shaped like
the paper's quote circuit:
  layer 0: neurons 0 and 1 detect `"` and `'` (reading their embedding channels 8 and 9) and write
           channel 0, "a quote is here", and channel 1, the quote type (+ for `"`, - for `'`)
  layer 1: head 0 has q[0] reading channel 2 (+1 on `=`, -1 on fillers), k[0] reading channel 0 and
           v[0] reading channel 1, so the `=` position copies the type into channel 4, which the
           unembedding reads (X up, Y down).
Filler words also write noise into channel 1: unless attention picks out the quote, averaging over
the prompt drowns its type.
Distractors the task does not need: channel 3 (which filler word) with a layer-0 head attending on
it and writing channel 5, a layer-1 neuron reading it and writing channel 7, and an unembedding row
reading it. Every other weight is exactly zero.
"""
from __future__ import annotations

import random

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from sparse_gpt.config import ModelConfig
from sparse_gpt.model import GPT
from sparse_gpt.tasks.base import BinaryTask, Example, PromptPair

VOCAB = ["<|endoftext|>", '"', "'", "a", "b", "c", "d", "e", "f", "=", "X", "Y"]
FILLERS = ["a", "b", "c", "d", "e", "f"]

PLANTED_NODES = {
    "0.mlp.act_in[8]", "0.mlp.act_in[9]", "0.mlp.post_act[0]", "0.mlp.post_act[1]",
    "0.mlp.resid_delta[0]", "0.mlp.resid_delta[1]",
    "1.attn.act_in[0]", "1.attn.act_in[1]", "1.attn.act_in[2]",
    "1.attn.q[0]", "1.attn.k[0]", "1.attn.v[0]", "1.attn.resid_delta[4]",
}


def planted_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


def planted_model(redundant: bool = False) -> GPT:
    """The planted model. `redundant` adds a second copy of the whole mechanism on channels 10-15
    (neurons 2-3, head 2), so that ablating one copy leaves the task solved: no circuit is necessary."""
    cfg = ModelConfig(vocab_size=len(VOCAB), block_size=32, n_layer=2, d_model=16, d_head=4, d_mlp=16,
                      afrac=None, attn_sink=True, bias=True)
    model = GPT(cfg)
    ids = {t: i for i, t in enumerate(VOCAB)}
    h0, h1 = model.transformer.h
    q, k, v = 0, 16, 32  # row offsets of q, k, v in c_attn
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (h0.ln_1, h0.ln_2, h1.ln_1, h1.ln_2, model.transformer.ln_f):
            norm.weight.fill_(1.0)
        for block in (h0, h1):
            block.attn.sink_logit.fill_(2.0)
        wte = model.transformer.wte.weight
        #         dq  sq  here typ marker neurons head out
        copies = [(8, 9, 0, 1, 2, (0, 1), 0, 4)]
        if redundant:
            copies.append((10, 11, 12, 13, 14, (2, 3), 8, 15))
        for dq, sq, here, typ, marker, (n_d, n_s), head, out in copies:
            wte[ids['"'], dq], wte[ids["'"], sq] = 1.0, 1.0
            wte[ids["="], marker] = 1.0
            for j, f in enumerate(FILLERS):
                wte[ids[f], typ] = 0.5 if j < 3 else -0.5
                # a negative marker on fillers makes the query's mean negative: a mean-ablated
                # query looks away from the quote instead of still finding it
                wte[ids[f], marker] = -1.0
            for n, ch, sign in ((n_d, dq, 1.0), (n_s, sq, -1.0)):
                h0.mlp.c_fc.weight[n, ch], h0.mlp.c_fc.bias[n] = 2.0, -1.0   # fires on its quote only
                h0.mlp.c_proj.weight[here, n] = 0.25
                h0.mlp.c_proj.weight[typ, n] = 0.25 * sign
            h1.attn.c_attn.weight[q + head, marker] = 1.0
            h1.attn.c_attn.weight[k + head, here] = 2.0
            h1.attn.c_attn.weight[v + head, typ] = 1.0
            h1.attn.c_proj.weight[out, head] = 1.0
            model.lm_head.weight[ids["X"], out], model.lm_head.weight[ids["Y"], out] = 0.4, -0.4
        # distractors
        for j, f in enumerate(FILLERS):
            wte[ids[f], 3] = 1.0 if j % 2 else -1.0
        h0.attn.c_attn.weight[q + 4, 3], h0.attn.c_attn.weight[k + 4, 3] = 3.0, 3.0
        h0.attn.c_attn.weight[v + 4, 3] = 1.0
        h0.attn.c_proj.weight[5, 4] = 1.0
        h1.mlp.c_fc.weight[5, 3] = 2.0
        h1.mlp.c_proj.weight[7, 5] = 1.0
        model.lm_head.weight[ids["a"], 3] = 1.0
    return model.eval()


class PlantedQuoteTask(BinaryTask):
    name = "planted_quote"
    description = "close the planted toy string: X after a \" opening, Y after a ' opening"
    answers = (" X", " Y")

    def pairs(self, n: int, seed: int, split: str = "prune") -> list[PromptPair]:
        rng = random.Random(f"{seed}-{split}")
        out = []
        for _ in range(n):
            before = " ".join(rng.choices(FILLERS, k=rng.randint(0, 3)))
            after = " ".join(rng.choices(FILLERS, k=rng.randint(1, 6)))
            a = f'{before} " {after} ='.strip()
            b = f"{before} ' {after} =".strip()
            out.append(PromptPair(Example(a, " X", " Y"), Example(b, " Y", " X")))
        return out


def pretraining_windows(n: int = 64, length: int = 32, seed: int = 0) -> torch.Tensor:
    """'Pretraining text' for the node means: random sequences where quotes and `=` are rare."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.tensor([0.02, 0.05, 0.05] + [0.13] * 6 + [0.05, 0.02, 0.03])
    return torch.multinomial(weights, n * length, replacement=True, generator=g).view(n, length)


# ----- pruning the planted model (shared by the pruner and renderer tests) ---------------------------

SETTINGS = dict(steps=300, batch_pairs=16, pool_pairs=256, eval_pairs=64, k_coef=3e-4, lr=3e-3)


def prune_planted(redundant: bool = False, **overrides):
    """Prune the planted model; returns (model, tokenizer, task, layout, means, pruner, run)."""
    from sparse_gpt.nodes import NodeLayout, compute_node_means
    from sparse_gpt.prune import PruneConfig, Pruner

    model, tok, task = planted_model(redundant), planted_tokenizer(), PlantedQuoteTask()
    layout = NodeLayout(model.config)
    means = compute_node_means(model, layout, pretraining_windows())
    pruner = Pruner(model, layout, means, task, tok, PruneConfig(**(SETTINGS | overrides)))
    return model, tok, task, layout, means, pruner, pruner.run(progress=False)


def circuit_of(model, layout, run, fingerprint: str = "planted"):
    """A Circuit (without validation metrics) for a pruning run on the planted model."""
    from dataclasses import asdict

    from sparse_gpt.circuit import Circuit, Provenance
    from sparse_gpt.nodes import circuit_edges

    return Circuit(provenance=Provenance(task="planted_quote", pruner=run.settings, checkpoint_fingerprint=fingerprint),
                   model=asdict(model.config), nodes=layout.circuit_nodes(run.keep, run.scores),
                   edges=circuit_edges(model, layout, run.keep), calibration=run.calibration, bisection=run.curve)
