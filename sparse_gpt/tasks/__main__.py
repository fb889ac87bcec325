"""Command line: list the tasks, or show a task's examples (and a model's score on it).

    python -m sparse_gpt.tasks list
    python -m sparse_gpt.tasks show single_double_quote --n 4 --tokenizer runs/x/tokenizer.json
    python -m sparse_gpt.tasks show bracket_counting --split natural --checkpoint runs/x
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tokenizers import Tokenizer

from sparse_gpt.checkpoint import CheckpointError
from sparse_gpt.cli import OneLineParser, whole_number
from sparse_gpt.config import ConfigError, resolve_device
from sparse_gpt.tokenizer import TokenizerError, decode, eot_id, load_tokenizer, token_strings

from . import (
    BinaryTask,
    EncodedExample,
    Example,
    TaskError,
    UnknownTaskError,
    encode_example,
    encode_examples,
    encode_pair,
    encode_pairs,
    get_task,
    list_tasks,
    logit_diff,
    scored_logits,
    task_accuracy,
    task_loss,
)
from .base import TaskBatch, to_batch

SPLITS = ("prune", "heldout", "natural")


class UsageError(Exception):
    """A command-line input that names something unusable (the message says what)."""


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


def _shown(task: BinaryTask, split: str, n: int, seed: int, source: str | None,
           tokenizer: Tokenizer | None) -> list[tuple[str, Example, EncodedExample | str | None]]:
    """(label, example, its encoding or why it cannot be posed, None without a tokenizer) for the
    examples of one split: both prompts of `n` pairs, or `n` natural examples."""
    if split == "natural":
        examples = task.natural_examples(_held_out_texts(source), n, seed, tokenizer)
        return [(f"natural {i}", ex, _encoded(lambda ex=ex: [encode_example(
            task, ex, tokenizer, _NO_LIMIT)], tokenizer)[0]) for i, ex in enumerate(examples)]
    out = []
    for i, pair in enumerate(task.pairs(n, seed, split)):
        encoded = _encoded(lambda pair=pair: encode_pair(task, pair, tokenizer, _NO_LIMIT),
                           tokenizer, 2)
        out += [(f"pair {i}{side}", ex, enc) for side, ex, enc in zip("ab", pair.examples(), encoded)]
    return out


# The shown prompts are never cut to a context; the model's own limit applies when it scores them.
_NO_LIMIT = 1 << 30


def _encoded(encode, tokenizer: Tokenizer | None, n: int = 1) -> list:
    """`encode()`'s encodings, or the reason it raised `n` times, or `n` Nones without a
    tokenizer."""
    if tokenizer is None:
        return [None] * n
    try:
        return list(encode())
    except TaskError as e:
        return [str(e)] * n


def _answer_line(tokenizer: Tokenizer | None, ex: Example, enc: EncodedExample | str | None) -> str:
    """The answers shown for one example: the texts, and the tokens the model is asked for."""
    if enc is None:
        return f"correct {_token(ex.answer)}  alternative {_token(ex.alternative)}"
    if isinstance(enc, str):
        return (f"correct {_token(ex.answer)}  alternative {_token(ex.alternative)}  "
                f"NOT POSABLE on this tokenizer: {enc}")
    correct, alternative = (decode(tokenizer, [i]) for i in (enc.answer_id, enc.alternative_id))
    line = f"correct {_token(correct)}  alternative {_token(alternative)}"
    if (correct, alternative) != (ex.answer, ex.alternative):
        line += f"  (answer texts {_token(ex.answer)} vs {_token(ex.alternative)})"
    if enc.cut < len(ex.prompt):
        line += f"  asked before the prompt's last {_token(ex.prompt[enc.cut:])}"
    return line


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
        raise UsageError(f"--source {source}: no such file or directory")
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

        model, tokenizer = load_model(args.checkpoint, device=resolve_device(args.device))
    elif args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)

    shown = _shown(task, args.split, args.n, args.seed, args.source, tokenizer)
    print(f"{task.name}: {task.description}  (split {args.split}, seed {args.seed})")
    if not shown:
        print("no examples: this task mines no natural examples, or none were found in the source")
        return 0
    if tokenizer is not None:
        batch = _eval_batch(task, tokenizer, args, model.config.block_size if model else _NO_LIMIT)
        counts = Counter(zip(batch.correct.tolist(), batch.alternative.tolist()))
        pairs = ", ".join(f"{_token(decode(tokenizer, [c]))} vs {_token(decode(tokenizer, [a]))} "
                          f"x{k}" for (c, a), k in counts.most_common(6))
        print(f"answer tokens (correct vs alternative, per prompt) over {_eval_what(args, batch)}: "
              f"{pairs}{' ...' if len(counts) > 6 else ''}")
    probs = None
    if model is not None:
        probs = _evaluate(model, batch, shown, tokenizer, args)
    for i, (label, ex, enc) in enumerate(shown):
        score = f"  p(correct) two-way {probs[i]:.3f}" if probs and probs[i] is not None else ""
        print(f"\n--- {label}: {_answer_line(tokenizer, ex, enc)}{score}")
        if isinstance(enc, EncodedExample):
            print(show_tokens(tokenizer, ex.prompt[:enc.cut]))
        else:
            print(show_tokens(tokenizer, ex.prompt) if tokenizer else visible(ex.prompt))
    if tokenizer is None:
        print("\n(pass --tokenizer or --checkpoint to see token boundaries and answer tokens)")
    return 0


def _eval_batch(task: BinaryTask, tokenizer: Tokenizer, args: argparse.Namespace,
                block_size: int) -> TaskBatch:
    """The `--eval-pairs` pairs (or natural examples) the model is scored on."""
    if args.split == "natural":
        mined = task.natural_examples(_held_out_texts(args.source), args.eval_pairs, args.seed,
                                      tokenizer)
        return encode_examples(task, mined, tokenizer, block_size)
    return encode_pairs(task, task.pairs(args.eval_pairs, args.seed, args.split), tokenizer,
                        block_size)


def _eval_what(args: argparse.Namespace, batch: TaskBatch) -> str:
    if args.split == "natural":
        return f"{len(batch)} natural examples"
    return f"{len(batch) // 2} of {args.eval_pairs} pairs"


@torch.no_grad()
def _evaluate(model: torch.nn.Module, batch: TaskBatch, shown, tokenizer: Tokenizer,
              args: argparse.Namespace) -> list[float | None]:
    """Print the model's accuracy and loss on `batch`; return the two-way probability of the
    correct answer for each shown example (None where it cannot be posed)."""
    batch = batch.to(args.device)
    logits = scored_logits(model, batch)
    print(f"full model on {_eval_what(args, batch)}: two-way accuracy "
          f"{task_accuracy(logits, batch):.3f}, mean task loss {task_loss(logits, batch):.4f} "
          f"nats per prompt")
    posed = [(i, enc) for i, (_, _, enc) in enumerate(shown)
             if isinstance(enc, EncodedExample) and len(enc.prompt_ids) <= model.config.block_size]
    out: list[float | None] = [None] * len(shown)
    if posed:
        rows = [(enc.prompt_ids, enc.answer_id, enc.alternative_id, -1) for _, enc in posed]
        shown_batch = to_batch(rows, eot_id(tokenizer)).to(args.device)
        probs = torch.sigmoid(logit_diff(scored_logits(model, shown_batch), shown_batch)).tolist()
        for (i, _), p in zip(posed, probs):
            out[i] = p
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m sparse_gpt.tasks",
        description="List the binary next-token tasks or show examples.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the tasks with one-line descriptions")
    p_list.set_defaults(func=_cmd_list)

    p_show = sub.add_parser("show", help="print a task's examples with their token boundaries")
    p_show.add_argument("task", help="task name (see `list`)")
    p_show.add_argument("--n", type=whole_number(1), default=4,
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
    p_show.add_argument("--eval-pairs", type=whole_number(1), default=256,
                        help="with --checkpoint: number of pairs (or natural examples) the model "
                             "is scored on")
    p_show.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                        help="with --checkpoint: where the model runs")
    p_show.set_defaults(func=_cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TaskError, CheckpointError, TokenizerError, ConfigError, UsageError) as e:
        # One line, exit code 2, like every other error of the project's commands.
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
