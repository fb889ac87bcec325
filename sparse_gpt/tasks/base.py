"""The binary next-token task interface, its tensor encoding, and the task metrics.

A task asks one question at one position: is the next token the `correct`
token or the `alternative` one? Its data are minimal pairs of prompts that differ in one detail,
where each prompt's answer is the other prompt's alternative, so a model (or a pruned circuit) can
only score well by reading that detail.

This module holds everything the pruner needs besides the tasks themselves:
- `Example`, `PromptPair` and the abstract `BinaryTask`;
- `encode_examples` / `encode_pairs`, which turn examples into a right-padded `TaskBatch` and refuse
  any example whose answer would not really be the next token the model sees;
- `task_logits`, `logit_diff`, `oriented_logit_diff`, and the one task loss and accuracy
  (`two_way_loss` / `two_way_accuracy`, and `task_loss` / `task_accuracy` on logits), all on the
  two-way choice;
- `scored_logits`, the one loop that runs a model over a batch in chunks of similar length.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, fields, replace
from typing import Callable, ClassVar, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from sparse_gpt.tokenizer import decode, describe_split, encode, eot_id, single_token_id

SPLITS = ("prune", "heldout")


class TaskError(ValueError):
    """Task data that cannot be used as asked (base class of the task errors below)."""


class TaskTokenError(TaskError):
    """An answer that is not exactly one token, or not the token a model would see next."""


class PromptTooLongError(TaskError):
    """A prompt with more tokens than the model's context."""


@dataclass(frozen=True)
class Example:
    """One prompt, the token that follows it, and the token it is contrasted with.

    `continuation` is source text that follows the answer in the code the example stands for. It
    is never shown to the model; it only lets the encoder check that byte-pair merges with the
    following text would not swallow the answer into a longer token (e.g. `:` followed by a newline
    is the single token `:\\n` in real code, so a bare `:` answer would be one the model never sees
    there).
    """

    prompt: str
    answer: str
    alternative: str
    continuation: str = ""


@dataclass(frozen=True)
class PromptPair:
    """Two prompts that differ in one detail; each one's answer is the other's alternative."""

    a: Example
    b: Example

    def __post_init__(self) -> None:
        if (self.a.answer, self.a.alternative) != (self.b.alternative, self.b.answer):
            raise TaskError(f"not a minimal pair: a answers {self.a.answer!r} (vs "
                            f"{self.a.alternative!r}) but b answers {self.b.answer!r} (vs "
                            f"{self.b.alternative!r}); the answers must be swapped")
        if self.a.answer == self.a.alternative:
            raise TaskError(f"not a minimal pair: both prompts answer {self.a.answer!r}")

    def examples(self) -> tuple[Example, Example]:
        return self.a, self.b


class BinaryTask(abc.ABC):
    """A binary next-token task: a name, its two answers and a source of minimal prompt pairs.

    Subclasses set the class attributes and implement `pairs`. `answers` is the fixed pair of answer
    strings, or None for tasks whose answers are copied from the prompt (e.g. class_init's argument
    name), where every pair has its own two answers. A `control` task is not one of the paper's 20
    tasks but a baseline the pruner compares them with.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    answers: ClassVar[tuple[str, str] | None]
    control: ClassVar[bool] = False

    @abc.abstractmethod
    def pairs(self, n: int, seed: int, split: str = "prune") -> list[PromptPair]:
        """`n` minimal pairs, the same for the same (seed, split).

        split "prune" draws from the pruning templates, "heldout" from a disjoint set of templates,
        so a circuit can be tested on prompt shapes it was never pruned on.
        """

    def natural_examples(self, texts: Iterable[str], n: int, seed: int,
                         tokenizer: Tokenizer | None = None) -> list[Example]:
        """Up to `n` unpaired examples mined from real source `texts` (held-out code).

        The default is none: only tasks whose answer can be recognised in raw code mine any. With a
        `tokenizer`, only examples whose answer is the next token for that tokenizer are returned.
        """
        return []

    def __repr__(self) -> str:
        return f"<task {self.name}>"


def check_split(split: str) -> None:
    """Raise a clear error for a split name other than 'prune' or 'heldout'."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


# ----- encoding -----------------------------------------------------------------------------------


@dataclass
class TaskBatch:
    """Encoded prompts, one row each, right-padded with the end-of-text token.

    positions[i] is the index of row i's last prompt token: the logits there predict the answer.
    pair_ids[i] is the index of the pair row i came from, or -1 for an unpaired (natural) example.
    """

    tokens: torch.Tensor       # (N, T) int64
    lengths: torch.Tensor      # (N,) prompt lengths in tokens
    positions: torch.Tensor    # (N,) lengths - 1
    correct: torch.Tensor      # (N,) token id of the answer
    alternative: torch.Tensor  # (N,) token id of the other answer
    pair_ids: torch.Tensor     # (N,)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, rows: torch.Tensor | slice) -> TaskBatch:
        """The batch restricted to some rows (a slice, an index tensor or a boolean mask)."""
        return TaskBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def trimmed(self) -> TaskBatch:
        """The batch with its token columns cut to the longest prompt (causal: the padding after a
        prompt never reaches its scored position)."""
        return replace(self, tokens=self.tokens[:, :int(self.lengths.max())]) if len(self) else self


def _answer_id(task: BinaryTask, tokenizer: Tokenizer, answer: str, role: str) -> int:
    token = single_token_id(tokenizer, answer)
    if token is None:
        raise TaskTokenError(
            f"task {task.name}: the {role} {answer!r} is not a single token of this tokenizer "
            f"({describe_split(tokenizer, answer)}); the task needs a tokenizer that keeps it "
            f"whole (e.g. one trained with isolate_brackets=True and a 2048-token vocabulary)")
    return token


def _boundary_problem(tokenizer: Tokenizer, example: Example, prompt_ids: list[int],
                      answer_id: int) -> str | None:
    """Why the answer is not the next token of prompt + answer + continuation, or None if it is."""
    full = example.prompt + example.answer + example.continuation
    want = prompt_ids + [answer_id]
    got = encode(tokenizer, full)[:len(want)]
    if got == want:
        return None
    start = max(0, len(prompt_ids) - 3)
    return (f"in context the text tokenises as ...{[decode(tokenizer, [i]) for i in got[start:]]} "
            f"where the encoder expected ...{[decode(tokenizer, [i]) for i in want[start:]]} "
            f"(a merge across the prompt/answer boundary)")


def boundary_problem(tokenizer: Tokenizer, example: Example) -> str | None:
    """Why `example.answer` is not the single token a model sees right after the prompt in the
    example's source text, or None if it is."""
    answer_id = single_token_id(tokenizer, example.answer)
    if answer_id is None:
        return f"the answer is not one token: {describe_split(tokenizer, example.answer)}"
    return _boundary_problem(tokenizer, example, encode(tokenizer, example.prompt), answer_id)


def _encode_one(task: BinaryTask, example: Example, tokenizer: Tokenizer,
                block_size: int) -> tuple[list[int], int, int, str | None]:
    """(prompt ids, answer id, alternative id, boundary problem or None) for one example."""
    answer_id = _answer_id(task, tokenizer, example.answer, "answer")
    alternative_id = _answer_id(task, tokenizer, example.alternative, "alternative")
    prompt_ids = encode(tokenizer, example.prompt)
    if not prompt_ids:
        raise TaskError(f"task {task.name}: empty prompt")
    if len(prompt_ids) > block_size:
        raise PromptTooLongError(
            f"task {task.name}: a prompt of {len(prompt_ids)} tokens does not fit the model's "
            f"context of {block_size} tokens: {example.prompt[:60]!r}...")
    problem = _boundary_problem(tokenizer, example, prompt_ids, answer_id)
    return prompt_ids, answer_id, alternative_id, problem


def _not_next_token(task: BinaryTask, example: Example, problem: str) -> TaskTokenError:
    return TaskTokenError(f"task {task.name}: the answer {example.answer!r} is not the next token "
                          f"after the prompt ...{example.prompt[-40:]!r}: {problem}")


def _to_batch(rows: Sequence[tuple[list[int], int, int, int]], pad_id: int) -> TaskBatch:
    """Stack (prompt ids, answer id, alternative id, pair id) rows, right-padding with `pad_id`."""
    n = len(rows)
    width = max((len(r[0]) for r in rows), default=1)
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    for i, (ids, *_rest) in enumerate(rows):
        tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    lengths = torch.tensor([len(r[0]) for r in rows], dtype=torch.long)
    return TaskBatch(
        tokens=tokens,
        lengths=lengths,
        positions=lengths - 1,
        correct=torch.tensor([r[1] for r in rows], dtype=torch.long),
        alternative=torch.tensor([r[2] for r in rows], dtype=torch.long),
        pair_ids=torch.tensor([r[3] for r in rows], dtype=torch.long),
    )


def encode_examples(task: BinaryTask, examples: Sequence[Example], tokenizer: Tokenizer,
                    block_size: int, strict: bool = False) -> TaskBatch:
    """Encode unpaired examples (pair_ids -1), e.g. natural examples mined from real code.

    An answer or alternative that is not one token raises TaskTokenError, and a prompt longer than
    `block_size` raises PromptTooLongError. An example whose answer would merge with the text around
    it is skipped (natural text has such cases) unless `strict`, where it raises TaskTokenError; so
    the batch can have fewer rows than `examples`.
    """
    rows = []
    for ex in examples:
        ids, answer_id, alternative_id, problem = _encode_one(task, ex, tokenizer, block_size)
        if problem is not None:
            if strict:
                raise _not_next_token(task, ex, problem)
            continue
        rows.append((ids, answer_id, alternative_id, -1))
    return _to_batch(rows, eot_id(tokenizer))


def encode_pairs(task: BinaryTask, pairs: Sequence[PromptPair], tokenizer: Tokenizer,
                 block_size: int) -> TaskBatch:
    """Encode both prompts of each pair, interleaved (a0, b0, a1, b1, ...), pair_ids = pair index.

    Templated pairs must be clean: any answer that is not one token, or not the very next token of
    the prompt in context, raises TaskTokenError naming the task, the answer and the tokenisation.
    The one exception: tasks whose answers are names copied from the prompt (`answers is None`)
    skip pairs whose names this tokenizer splits, as long as most pairs survive, since whether a
    pool's name is one token depends on the corpus the tokenizer was trained on.
    """
    rows, skipped = [], []
    for pair in pairs:
        try:
            encoded = [_encode_one(task, ex, tokenizer, block_size) for ex in pair.examples()]
        except TaskTokenError as e:
            if task.answers is not None:
                raise
            skipped.append(e)
            continue
        for ex, (ids, answer_id, alternative_id, problem) in zip(pair.examples(), encoded):
            if problem is not None:
                raise _not_next_token(task, ex, problem)
            rows.append((ids, answer_id, alternative_id, len(rows) // 2))
    if len(skipped) > len(pairs) // 2:
        raise TaskTokenError(f"{len(skipped)} of {len(pairs)} pairs unusable with this tokenizer; "
                             f"first: {skipped[0]}")
    return _to_batch(rows, eot_id(tokenizer))


# ----- metrics ------------------------------------------------------------------------------------


def task_logits(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """(N, 2) logits of [correct, alternative] at each row's scored position.

    `logits` is the model's full output (N, T, V), or (N, V) when already taken at the positions.
    """
    if logits.dim() == 3:
        rows = torch.arange(logits.shape[0], device=logits.device)
        logits = logits[rows, batch.positions.to(logits.device)]  # (N, V)
    elif logits.dim() != 2:
        raise ValueError(f"logits must be (N, T, V) or (N, V), got shape {tuple(logits.shape)}")
    if logits.shape[0] != len(batch):
        raise ValueError(f"logits have {logits.shape[0]} rows but the batch has {len(batch)}")
    ids = torch.stack([batch.correct, batch.alternative], dim=1).to(logits.device)  # (N, 2)
    return logits.gather(1, ids)


def logit_diff(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """(N,) correct-minus-alternative logit per row, in fp32 (what the calibration fits on)."""
    two = task_logits(logits, batch).float()  # bf16 logits would round the difference
    return two[:, 0] - two[:, 1]


def oriented_logit_diff(logits: torch.Tensor, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """z = logit(lower id) - logit(higher id) of the two answers, and y = 1 where the lower id is correct.

    A fixed orientation per answer pair makes a bias on z meaningful for calibration."""
    d = logit_diff(logits, batch)
    lower_correct = (batch.correct < batch.alternative).to(d.device)
    return torch.where(lower_correct, d, -d), lower_correct.float()


def two_way_loss(z: torch.Tensor, y: torch.Tensor, scale=1.0, bias=0.0) -> torch.Tensor:
    """Two-way cross-entropy of the (calibrated) oriented logit difference, averaged over prompts.

    Averaged over prompts, so over both prompts of every pair: the released code summed the two
    prompts of a pair, which doubled every loss; here a loss of 0.15 means 0.15 nats per prompt.
    """
    return F.binary_cross_entropy_with_logits(z * scale + bias, y)


def two_way_accuracy(z: torch.Tensor, y: torch.Tensor, scale=1.0, bias=0.0) -> torch.Tensor:
    """Share of prompts whose (calibrated) logit difference points to the correct answer; a tie
    points to neither and counts as wrong."""
    zc = z * scale + bias
    return torch.where(y > 0, zc > 0, zc < 0).float().mean()


def task_loss(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """Two-way cross-entropy of the correct token against the alternative, in fp32 (two_way_loss)."""
    return two_way_loss(*oriented_logit_diff(logits, batch))


def task_accuracy(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """Share of rows whose correct token's logit beats the alternative's (ties count as wrong)."""
    return two_way_accuracy(*oriented_logit_diff(logits, batch))


# ----- scoring ------------------------------------------------------------------------------------


def length_chunks(batch: TaskBatch, chunk: int) -> Iterator[tuple[torch.Tensor, TaskBatch]]:
    """(rows, sub-batch) in order of prompt length, `chunk` rows at a time, each sub-batch trimmed
    to its longest prompt, so short prompts do not pay for the padding of long ones."""
    order = torch.argsort(batch.lengths.cpu(), stable=True).to(batch.lengths.device)
    for start in range(0, len(batch), chunk):
        rows = order[start:start + chunk]
        yield rows, batch.select(rows).trimmed()


def scored_logits(model, batch: TaskBatch, chunk: int = 64,
                  forward: Callable[[TaskBatch], torch.Tensor] | None = None) -> torch.Tensor:
    """(N, V) logits at each row's scored position, computed in length chunks (length_chunks).

    `forward(sub_batch)` returns a trimmed sub-batch's (n, V) logits at its scored positions; the
    default runs the unembedding at those positions only."""
    if forward is None:
        forward = lambda part: model(part.tokens, positions=part.positions)  # noqa: E731
    out = None
    for rows, part in length_chunks(batch, chunk):
        logits = forward(part)
        if out is None:
            out = logits.new_empty(len(batch), logits.shape[-1])
        out[rows] = logits
    return out
