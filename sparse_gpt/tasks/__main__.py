"""Command line: list the tasks, or show a task's examples (and a model's score on it).

    python -m sparse_gpt.tasks list
    python -m sparse_gpt.tasks show single_double_quote --n 4 --tokenizer runs/x/tokenizer.json
    python -m sparse_gpt.tasks show bracket_counting --split natural --checkpoint runs/x
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tokenizers import Tokenizer

from sparse_gpt.tokenizer import load_tokenizer, token_strings

from . import (
    BinaryTask,
    Example,
    TaskError,
    UnknownTaskError,
    encode_examples,
    encode_pairs,
    get_task,
    list_tasks,
    logit_diff,
    scored_logits,
    task_accuracy,
    task_loss,
)

SPLITS = ("prune", "heldout", "natural")


def visible(text: str) -> str:
    """`text` with spaces, tabs and line breaks drawn as visible marks (the breaks still break)."""
    return text.replace(" ", "·").replace("\t", "→").replace("\n", "↵\n")


def show_tokens(tokenizer: Tokenizer, text: str) -> str:
    """`text` as its tokens joined by `|`, whitespace made visible.

    A token with a line break always ends with it (the pre-tokenizer's rules), so the line break
    itself marks that boundary and the next line starts without a `|`.
    """
    return "|".join(visible(t) for t in token_strings(tokenizer, text)).replace("\n|", "\n")


def _token(s: str) -> str:
    """An answer as a quoted string with its spaces visible (indentation answers are all spaces)."""
    return repr(s).replace(" ", "·")


def _examples(task: BinaryTask, split: str, n: int, seed: int, source: str | None,
              tokenizer: Tokenizer | None) -> tuple[list[Example], list[int]]:
    """(examples, pair id of each) for one split; natural examples have pair id -1."""
    if split == "natural":
        examples = task.natural_examples(_held_out_texts(source), n, seed, tokenizer)
        return examples, [-1] * len(examples)
    pairs = task.pairs(n, seed, split)
    return [ex for p in pairs for ex in p.examples()], [i for i in range(len(pairs)) for _ in "ab"]


def _held_out_texts(source: str | None) -> Iterator[str]:
    """Source texts to mine natural examples from: a .py file, a directory of them, or by default
    the validation split of the stdlib corpus (files the stdlib-trained models never saw)."""
    if source is None:
        from sparse_gpt.config import DataConfig
        from sparse_gpt.corpus import collect_corpus, iter_texts

        corpus = collect_corpus(DataConfig(source="stdlib"))
        yield from iter_texts(corpus, corpus.split("val"))
        return
    path = Path(source)
    if not path.exists():
        raise SystemExit(f"--source {source}: no such file or directory")
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    for f in files:
        yield f.read_text(encoding="utf-8", errors="replace")


def _cmd_list(_args: argparse.Namespace) -> int:
    width = max(len(n) for n in list_tasks())
    for name in list_tasks():
        task = get_task(name)
        flag = "[control] " if task.control else ""
        print(f"{name:<{width}}  {flag}{task.description}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    try:
        task = get_task(args.task)
    except UnknownTaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, tokenizer = None, None
    if args.checkpoint:
        from sparse_gpt import load_model

        model, tokenizer = load_model(args.checkpoint, device=args.device)
    elif args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)

    examples, pair_ids = _examples(task, args.split, args.n, args.seed, args.source, tokenizer)
    print(f"{task.name}: {task.description}  (split {args.split}, seed {args.seed})")
    if not examples:
        print("no examples: this task mines no natural examples, or none were found in the source")
        return 0
    probs = None
    if model is not None:
        probs = _evaluate(task, model, tokenizer, examples, args)
    for i, (ex, pair_id) in enumerate(zip(examples, pair_ids)):
        label = f"pair {pair_id}{'ab'[i % 2]}" if pair_id >= 0 else f"natural {i}"
        score = f"  p(correct) two-way {probs[i]:.3f}" if probs is not None else ""
        print(f"\n--- {label}: correct {_token(ex.answer)}  alternative {_token(ex.alternative)}"
              f"{score}")
        print(show_tokens(tokenizer, ex.prompt) if tokenizer else visible(ex.prompt))
    if tokenizer is None:
        print("\n(pass --tokenizer or --checkpoint to see token boundaries)")
    return 0


@torch.no_grad()
def _evaluate(task: BinaryTask, model: torch.nn.Module, tokenizer: Tokenizer,
              shown: Sequence[Example], args: argparse.Namespace) -> list[float]:
    """Print the model's accuracy and loss on `args.eval_pairs` pairs (or natural examples);
    return the two-way probability of the correct answer for each shown example."""
    block_size = model.config.block_size
    if args.split == "natural":
        mined, _ = _examples(task, "natural", args.eval_pairs, args.seed, args.source, tokenizer)
        batch = encode_examples(task, mined, tokenizer, block_size)
        what = f"{len(batch)} natural examples"
    else:
        batch = encode_pairs(task, task.pairs(args.eval_pairs, args.seed, args.split), tokenizer,
                             block_size)
        what = f"{args.eval_pairs} pairs"
    batch = batch.to(args.device)
    logits = scored_logits(model, batch)
    print(f"full model on {what}: two-way accuracy {task_accuracy(logits, batch):.3f}, "
          f"mean task loss {task_loss(logits, batch):.4f} nats per prompt")
    shown_batch = encode_examples(task, shown, tokenizer, block_size, strict=True).to(args.device)
    return torch.sigmoid(logit_diff(scored_logits(model, shown_batch), shown_batch)).tolist()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_gpt.tasks",
        description="List the binary next-token tasks or show examples.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the tasks with one-line descriptions")
    p_list.set_defaults(func=_cmd_list)

    p_show = sub.add_parser("show", help="print a task's examples with their token boundaries")
    p_show.add_argument("task", help="task name (see `list`)")
    p_show.add_argument("--n", type=int, default=4,
                        help="number of pairs to show (of natural examples with --split natural)")
    p_show.add_argument("--split", choices=SPLITS, default="prune",
                        help="prune: pruning templates; heldout: held-out templates; natural: "
                             "examples mined from real code (see --source)")
    p_show.add_argument("--seed", type=int, default=0, help="seed of the examples drawn")
    p_show.add_argument("--checkpoint", default=None,
                        help="run or checkpoint directory: also score the model (its tokenizer "
                             "is used)")
    p_show.add_argument("--tokenizer", default=None,
                        help="tokenizer.json to show token boundaries with (ignored with "
                             "--checkpoint)")
    p_show.add_argument("--source", default=None,
                        help="for --split natural: a .py file or a directory of them to mine "
                             "(default: the validation split of the stdlib corpus)")
    p_show.add_argument("--eval-pairs", type=int, default=256,
                        help="with --checkpoint: number of pairs (or natural examples) the model "
                             "is scored on")
    p_show.add_argument("--device", default="cpu", help="with --checkpoint: torch device")
    p_show.set_defaults(func=_cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TaskError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
