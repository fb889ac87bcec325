"""Run a model with some nodes set to fixed values and compare its next-token predictions."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..nodes import NodeLayout
from ..tasks import BinaryTask, encode_pairs
from ..tokenizer import decode, encode, single_token_id


@dataclass
class PromptEffect:
    prompt: str
    original: dict[str, float]                 # each node's activation at the last position, unchanged model
    top_before: list[tuple[str, float]]        # most likely next tokens and their probabilities
    top_after: list[tuple[str, float]]
    kl: float                                  # KL(before || after) of the next-token distributions, nats
    answers: tuple[str, str] | None = None     # (answer, alternative) the two-way probability is about
    p_before: float | None = None              # P(answer) / (P(answer) + P(alternative))
    p_after: float | None = None


def _grouped(where: dict[str, tuple[str, int]], values: dict[str, float]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{hook name: (indices, values)} of the nodes to set."""
    groups: dict[str, tuple[list[int], list[float]]] = {}
    for name, value in values.items():
        loc, j = where[name]
        idx, vals = groups.setdefault(loc, ([], []))
        idx.append(j)
        vals.append(float(value))
    return {loc: (torch.tensor(idx), torch.tensor(vals)) for loc, (idx, vals) in groups.items()}


def node_values(layout: NodeLayout, nodes: list[str], ablate_to: torch.Tensor) -> dict[str, float]:
    """{name: value} of each node in `ablate_to` ((N,), from sparse_gpt.nodes.ablation_values): the
    values that ablate these nodes."""
    return {n: float(ablate_to[layout.node_index(n)]) for n in nodes}


def _answer_id(tokenizer, text: str) -> int:
    i = single_token_id(tokenizer, text)
    if i is None:
        raise ValueError(f"answer {text!r} is not a single token of this model's tokenizer "
                         f"(it encodes as {len(encode(tokenizer, text))} tokens)")
    return i


def intervene(model, tokenizer, prompts: list[str], values: dict[str, float], *,
              answers: list[tuple[str, str] | None] | None = None, at: str = "all", top: int = 5) -> list[PromptEffect]:
    """Next-token predictions of `model` on each prompt, before and after setting `values`
    ({node name: value}); `answers[i]` = (answer, alternative) adds prompt i's two-way probability
    (None: not for that prompt). Each answer must be a single token of the tokenizer on its own."""
    _check_values(values, at)
    if answers is not None and len(answers) != len(prompts):
        raise ValueError(f"{len(answers)} answer pairs for {len(prompts)} prompts")
    rows = []
    for j, prompt in enumerate(prompts):
        ids = encode(tokenizer, prompt)
        if not ids:
            raise ValueError(f"prompt {j} is empty")
        if len(ids) > model.config.block_size:
            raise ValueError(f"prompt {j} has {len(ids)} tokens, more than the model's context of "
                             f"{model.config.block_size}: {prompt[:60]!r}...")
        pair = answers[j] if answers is not None else None
        ids_ab = tuple(_answer_id(tokenizer, t) for t in pair) if pair is not None else None
        rows.append((prompt, ids, ids_ab, tuple(pair) if pair is not None else None))
    return _effects(model, tokenizer, rows, values, at, top)


def intervene_task(model, tokenizer, task: BinaryTask, values: dict[str, float], *, pairs: int = 4,
                   seed: int = 1, split: str = "heldout", at: str = "all",
                   top: int = 5) -> list[PromptEffect]:
    """`intervene` on both prompts of `pairs` of the task's pairs, each scored on its own correct
    answer against the alternative.

    The prompts and answer tokens are the task's own encoding (sparse_gpt.tasks.encode_pairs): on a
    tokenizer that merges an answer with what follows it (`")` on a plain byte-level BPE) the answers
    are those merged tokens, and a prompt whose end merges with its answer is asked one token
    earlier, exactly as the pruner asks it. Pairs that cannot be posed on this tokenizer are left
    out (TaskTokenError when most cannot)."""
    _check_values(values, at)
    batch = encode_pairs(task, task.pairs(pairs, seed=seed, split=split), tokenizer,
                         model.config.block_size)
    rows = []
    for i in range(len(batch)):
        ids = batch.tokens[i, :int(batch.lengths[i])].tolist()
        ab = (int(batch.correct[i]), int(batch.alternative[i]))
        rows.append((decode(tokenizer, ids), ids, ab, tuple(decode(tokenizer, [t]) for t in ab)))
    return _effects(model, tokenizer, rows, values, at, top)


def _check_values(values: dict[str, float], at: str) -> None:
    if at not in ("all", "last"):
        raise ValueError(f"at must be 'all' or 'last', got {at!r}")
    if not values:
        raise ValueError("no intervention given: name at least one node")
    # NaN or inf is no activation the model could have: whatever comes out (even a plausible answer,
    # when zeroed weights never read the node) says nothing about it.
    bad = {name: v for name, v in values.items() if not math.isfinite(float(v))}
    if bad:
        raise ValueError("a node can only be set to a finite number, got "
                         + ", ".join(f"{name} = {v}" for name, v in bad.items()))


@torch.no_grad()
def _effects(model, tokenizer, rows: list[tuple[str, list[int], tuple[int, int] | None, tuple[str, str] | None]],
             values: dict[str, float], at: str, top: int) -> list[PromptEffect]:
    """The effect of setting `values` on each (prompt, its token ids, (answer id, alternative id)
    or None, the answers as shown) row."""
    layout = NodeLayout(model.config)
    where = {name: layout.locate(name) for name in values}
    groups = _grouped(where, values)
    device = next(model.parameters()).device

    def setter(idx: torch.Tensor, vals: torch.Tensor):
        def fn(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            if at == "last":
                x[:, -1, idx.to(x.device)] = vals.to(x.device, x.dtype)
            else:
                x[..., idx.to(x.device)] = vals.to(x.device, x.dtype)
            return x
        return fn

    replace = {loc: setter(idx, vals) for loc, (idx, vals) in groups.items()}
    effects = []
    for prompt, ids, answer_ids, shown in rows:
        x = torch.tensor([ids], device=device)
        with model.hooks(record=list(groups)) as cache:
            before = model(x)[0, -1].float().log_softmax(-1)
        original = {name: float(cache[loc][0, -1, j]) for name, (loc, j) in where.items()}
        with model.hooks(replace=replace):
            after = model(x)[0, -1].float().log_softmax(-1)
        effect = PromptEffect(prompt=prompt, original=original, top_before=_top(tokenizer, before, top),
                              top_after=_top(tokenizer, after, top),
                              kl=float((before.exp() * (before - after)).sum()))
        if answer_ids is not None:
            a, b = answer_ids
            effect.answers = shown
            effect.p_before = float(torch.sigmoid(before[a] - before[b]))
            effect.p_after = float(torch.sigmoid(after[a] - after[b]))
        effects.append(effect)
    return effects


def _top(tokenizer, logp: torch.Tensor, k: int) -> list[tuple[str, float]]:
    p, i = logp.exp().topk(min(k, logp.numel()))
    return [(decode(tokenizer, [int(t)]), float(v)) for v, t in zip(p, i)]


def format_effects(effects: list[PromptEffect]) -> str:
    lines = []
    for e in effects:
        lines.append(f"prompt: {e.prompt[-70:]!r}")
        lines.append("  node activations (last position, unchanged model): "
                     + ", ".join(f"{n} = {v:+.4f}" for n, v in e.original.items()))
        if e.answers is not None:
            lines.append(f"  P({e.answers[0]!r} vs {e.answers[1]!r}): {e.p_before:.4f} -> {e.p_after:.4f}")
        lines.append(f"  KL(before || after) = {e.kl:.4f} nats")
        lines.append("  top next tokens before: " + ", ".join(f"{t!r} {p:.3f}" for t, p in e.top_before))
        lines.append("  top next tokens after:  " + ", ".join(f"{t!r} {p:.3f}" for t, p in e.top_after))
    if len(effects) > 1:
        lines.append(f"mean over {len(effects)} prompts: KL {sum(e.kl for e in effects) / len(effects):.4f} nats")
        scored = [e for e in effects if e.p_before is not None]
        if scored:
            lines.append(f"  two-way probability of the answer: {sum(e.p_before for e in scored) / len(scored):.4f}"
                         f" -> {sum(e.p_after for e in scored) / len(scored):.4f}")
    return "\n".join(lines)
