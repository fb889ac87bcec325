"""The binary next-token task interface, its tensor encoding, and the task metrics.

A task asks one question at one position: is the next token the `correct`
token or the `alternative` one? Its data are minimal pairs of prompts that differ in one detail,
where each prompt's answer is the other prompt's alternative, so a model (or a pruned circuit) can
only score well by reading that detail.

This module holds everything the pruner needs besides the tasks themselves:
- `Example`, `PromptPair` and the abstract `BinaryTask`;
- `encode_example` / `encode_pair`, which find the token a model would really see where an answer
  starts, and `encode_examples` / `encode_pairs`, which turn examples into a right-padded
  `TaskBatch`, leaving out those that cannot be posed on the tokenizer at hand;
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

from sparse_gpt.tokenizer import decode, describe_split, eot_id

SPLITS = ("prune", "heldout")


class TaskError(ValueError):
    """Task data that cannot be used as asked (base class of the task errors below)."""


class TaskTokenError(TaskError):
    """An answer that is not exactly one token, or not the token a model would see next."""


class PromptTooLongError(TaskError):
    """A prompt with more tokens than the model's context."""


@dataclass(frozen=True)
class Example:
    """One prompt, the answer that continues it, and the answer it is contrasted with.

    `answer` and `alternative` are source text, and `continuation` is the source text that follows
    the answer in the code the example stands for. The continuation is never shown to the model;
    it decides which token the model would really see: the answer token is the first token the
    tokenizer produces where the answer starts (base.EncodedExample), so on a tokenizer that merges
    a quote with the bracket after it the quote task asks for `")` rather than `"`, and a `:`
    followed by a newline is asked for as the token `:\\n` where the tokenizer has one.
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
    texts (the tokens they stand for depend on the tokenizer and the text after them), or None for tasks whose answers are copied from the prompt (e.g. class_init's argument
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


@dataclass(frozen=True)
class EncodedExample:
    """An example as the model sees it: the prompt's tokens and the two answer tokens.

    The answer token is the first token the tokenizer produces where the answer starts in the
    example's source text (prompt + answer + continuation). With a tokenizer that keeps quotes and
    brackets alone that is the answer itself; with a plain byte-level BPE it may run on into the
    continuation (`"` followed by `)` is the token `")`), and it may even start inside the prompt
    when the prompt's last characters merge with the answer (`[[1, 2]` + `]` is `...2` + `]]`). In
    that case the model is asked one token earlier, and `cut` (the number of prompt characters the
    prompt tokens cover) is less than the length of the prompt.
    """

    prompt_ids: list[int]
    answer_id: int
    alternative_id: int
    cut: int


class _NoBoundary(Exception):
    """The text has no single answer token at the prompt's end (message: how it splits)."""


def _pieces(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    return [decode(tokenizer, [i]) for i in ids]


def _token_at(tokenizer: Tokenizer, prompt: str, answer: str,
              continuation: str) -> tuple[list[int], int, int, int]:
    """(ids before, id, start, end) of the token of prompt + answer + continuation that holds the
    first character of `answer`; _NoBoundary when that token does not hold all of `answer`."""
    enc = tokenizer.encode(prompt + answer + continuation, add_special_tokens=False)
    boundary, answer_end = len(prompt), len(prompt) + len(answer)
    j = next((j for j, (_, end) in enumerate(enc.offsets) if end > boundary), None)
    if j is None or not answer:
        raise _NoBoundary(f"the answer {answer!r} is empty")
    start, end = enc.offsets[j]
    if end < answer_end:
        # Offsets are in characters; ids cut a multi-byte character into several tokens that all
        # share its offsets, so this also refuses an answer split inside a character.
        last = next((k for k in range(j, len(enc.ids)) if enc.offsets[k][1] >= answer_end),
                    len(enc.ids) - 1)
        raise _NoBoundary(f"the answer {answer!r} is split there: "
                          f"...{_pieces(tokenizer, enc.ids[max(0, j - 2):last + 2])}")
    if start >= answer_end:
        raise _NoBoundary(f"the tokenizer drops all of the answer {answer!r}")
    if start == 0:
        raise _NoBoundary(f"the whole prompt merges with the answer {answer!r}")
    # A tokenizer that drops whitespace (a word-level one) starts the token after the answer's
    # leading space: the model is still asked right where the prompt ends.
    return enc.ids[:j], enc.ids[j], min(start, boundary), end


def _label(task: BinaryTask | None) -> str:
    return f"task {task.name}: " if task is not None else ""


def _check_prompt(task: BinaryTask | None, example: Example, ids: Sequence[int],
                  block_size: int) -> None:
    if not example.prompt:
        raise TaskError(f"{_label(task)}empty prompt")
    if len(ids) > block_size:
        raise PromptTooLongError(
            f"{_label(task)}a prompt of {len(ids)} tokens does not fit the model's "
            f"context of {block_size} tokens: {example.prompt[:60]!r}...")


def encode_example(task: BinaryTask | None, example: Example, tokenizer: Tokenizer,
                   block_size: int) -> EncodedExample:
    """One unpaired example as the model sees it (see EncodedExample).

    The alternative token is taken in the same place: the alternative followed by as much of the
    continuation as the answer token took in (so `"` -> `")` is contrasted with `'` -> `')`), and
    it must start where the answer token starts and hold exactly that text. TaskTokenError says
    why an example cannot be posed (naming `task`, if given); PromptTooLongError when its prompt
    does not fit the context.
    """
    try:
        ids, answer_id, start, end = _token_at(tokenizer, example.prompt, example.answer,
                                               example.continuation)
        absorbed = example.continuation[:max(0, end - len(example.prompt) - len(example.answer))]
        _, alternative_id, alt_start, alt_end = _token_at(tokenizer, example.prompt,
                                                          example.alternative, absorbed)
    except _NoBoundary as e:
        raise _not_posable(task, example, str(e)) from None
    _check_prompt(task, example, ids, block_size)
    alt_text = example.alternative + absorbed
    if alt_start != start or alt_end != len(example.prompt) + len(alt_text):
        raise _not_posable(task, example, f"the alternative {alt_text!r} is not one token in its "
                                          f"place (a merge across the prompt/answer boundary)")
    if alternative_id == answer_id:
        raise _not_posable(task, example, f"answer and alternative are the same token "
                                          f"{decode(tokenizer, [answer_id])!r} there")
    return EncodedExample(ids, answer_id, alternative_id, start)


def _token_from(tokenizer: Tokenizer, example: Example, cut: int) -> tuple[list[int], int]:
    """(ids before, id) of the token of the example's source text that starts at character `cut`
    of its prompt, if it is the prompt's tail up to the answer or holds all of the answer;
    _NoBoundary otherwise."""
    text = example.prompt + example.answer + example.continuation
    enc = tokenizer.encode(text, add_special_tokens=False)
    j = next((j for j, (start, _) in enumerate(enc.offsets) if start >= cut), None)
    if j is None or enc.offsets[j][0] != cut:
        raise _NoBoundary(f"no token starts at {example.prompt[cut:]!r} + {example.answer!r}")
    end = enc.offsets[j][1]
    if end != len(example.prompt) and end < len(example.prompt) + len(example.answer):
        raise _NoBoundary(f"the answer {example.answer!r} is split there: "
                          f"...{_pieces(tokenizer, enc.ids[max(0, j - 2):j + 3])}")
    return enc.ids[:j], enc.ids[j]


def encode_pair(task: BinaryTask, pair: PromptPair, tokenizer: Tokenizer,
                block_size: int) -> tuple[EncodedExample, EncodedExample]:
    """Both prompts of a pair as the model sees them (see EncodedExample).

    Each prompt's answer token is taken in its own source text, and each one's alternative is the
    other's answer token. When one prompt's last characters merge with its answer and the other's
    do not (`[[1, 2]` + `]` vs `[1, 2]` + a line break, on a tokenizer with the token `]\\n` but
    not `]]`), both are asked where the merged token starts, if the prompts end in the same text
    there: then one side's token may be that text alone (`]`, the answer following as a token of
    its own) against the other's merged token (`]\\n`). TaskTokenError unless the two answer
    tokens are single tokens at the same place and differ; PromptTooLongError if a prompt does not
    fit the context.
    """
    found = []
    for ex in pair.examples():
        try:
            found.append(_token_at(tokenizer, ex.prompt, ex.answer, ex.continuation))
        except _NoBoundary as e:
            raise _not_posable(task, ex, str(e)) from None
    a, b = pair.examples()
    back = max(len(ex.prompt) - f[2] for ex, f in zip((a, b), found))
    if back and a.prompt[-back:] != b.prompt[-back:]:
        raise _not_posable(task, a, f"the token a model sees there starts {back} characters "
                                    f"before the prompt's end, where the two prompts differ (a "
                                    f"merge across the prompt/answer boundary)")
    encoded = []
    for ex, (ids, token, start, _end) in zip((a, b), found):
        cut = len(ex.prompt) - back
        if start != cut:
            try:
                ids, token = _token_from(tokenizer, ex, cut)
            except _NoBoundary as e:
                raise _not_posable(task, ex, str(e)) from None
        _check_prompt(task, ex, ids, block_size)
        encoded.append((ids, token, cut))
    (ids_a, tok_a, cut_a), (ids_b, tok_b, cut_b) = encoded
    if tok_a == tok_b:
        raise _not_posable(task, a, f"both answers are the token {decode(tokenizer, [tok_a])!r}")
    return EncodedExample(ids_a, tok_a, tok_b, cut_a), EncodedExample(ids_b, tok_b, tok_a, cut_b)


def boundary_problem(tokenizer: Tokenizer, example: Example) -> str | None:
    """Why `example` cannot be posed to a model with this tokenizer (see encode_example), or None
    if it can."""
    try:
        encode_example(None, example, tokenizer, block_size=1 << 30)
    except TaskTokenError as e:
        return str(e)
    return None


def _not_posable(task: BinaryTask | None, example: Example, problem: str) -> TaskTokenError:
    return TaskTokenError(f"{_label(task)}the answer {example.answer!r} is not one token "
                          f"right after the prompt ...{example.prompt[-40:]!r}: {problem}")


def _unposable_task(task: BinaryTask, pairs: Sequence[PromptPair], tokenizer: Tokenizer,
                    failed: Sequence[TaskTokenError]) -> TaskTokenError:
    """The error for a task that cannot be posed: its answer texts, how they split, an example."""
    texts = sorted({ex.answer for p in pairs for ex in p.examples()})
    splits = "; ".join(describe_split(tokenizer, t) for t in texts[:6])
    more = f" (and {len(texts) - 6} more)" if len(texts) > 6 else ""
    return TaskTokenError(
        f"task {task.name} cannot be posed on this tokenizer: {len(failed)} of {len(pairs)} pairs "
        f"have no single, distinct answer tokens where the prompts end. Answer texts and their "
        f"split alone: {splits}{more}. First failure: {failed[0]}")


def to_batch(rows: Sequence[tuple[list[int], int, int, int]], pad_id: int) -> TaskBatch:
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

    A prompt longer than `block_size` raises PromptTooLongError. An example that cannot be posed
    with this tokenizer (encode_example) is skipped (natural text has such cases) unless `strict`,
    where it raises TaskTokenError; so the batch can have fewer rows than `examples`.
    """
    rows = []
    for ex in examples:
        try:
            enc = encode_example(task, ex, tokenizer, block_size)
        except PromptTooLongError:
            raise
        except TaskTokenError:
            if strict:
                raise
            continue
        rows.append((enc.prompt_ids, enc.answer_id, enc.alternative_id, -1))
    return to_batch(rows, eot_id(tokenizer))


def encode_pairs(task: BinaryTask, pairs: Sequence[PromptPair], tokenizer: Tokenizer,
                 block_size: int) -> TaskBatch:
    """Encode both prompts of each pair, interleaved (a0, b0, a1, b1, ...), pair_ids = pair index.

    Each answer token is the one the tokenizer produces where the answer starts (encode_pair), so
    a task poses on any byte-level BPE where its answers are single, distinct tokens there. A pair
    where they are not is left out; when that is more than half of the pairs the task cannot be
    posed on this tokenizer, and TaskTokenError names the task, its answer texts and how they
    split. A prompt longer than the context raises PromptTooLongError.
    """
    rows, failed = [], []
    for pair in pairs:
        try:
            encoded = encode_pair(task, pair, tokenizer, block_size)
        except PromptTooLongError:
            raise
        except TaskTokenError as e:
            failed.append(e)
            continue
        pair_id = len(rows) // 2
        rows.extend((e.prompt_ids, e.answer_id, e.alternative_id, pair_id) for e in encoded)
    if failed and len(failed) > len(pairs) // 2:
        raise _unposable_task(task, pairs, tokenizer, failed)
    return to_batch(rows, eot_id(tokenizer))


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
    points to neither and counts as wrong. z (rows,) gives a scalar; z (C, rows), one share per row."""
    zc = z * scale + bias
    return torch.where(y > 0, zc > 0, zc < 0).float().mean(-1)


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
