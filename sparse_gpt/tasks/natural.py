"""Natural task examples mined from real Python source (held-out text, not templates).

Templated prompts are clean by construction; real code is not. A circuit that only works on
templates (an early pruned quote circuit was at chance on natural quote openings) is caught by scoring it on examples cut out of real files:

- quotes: a one-line string literal; the prompt is the code before its closing quote.
- brackets: a `]`; the answer is another `]` if a bracket is still open and closes at once, else
  the newline that ends the statement (bracket_counting's rephrasing, see that task).

Python's own `tokenize` finds the literals and brackets, so strings inside comments, docstrings or
other strings never count. Both answer classes are sampled equally (real code has many more `'`
than `"` strings, and many more flat lists than nested ones), deterministically from the seed.
"""
from __future__ import annotations

import io
import random
import re
import tokenize
from dataclasses import dataclass
from typing import Iterable, Iterator

from tokenizers import Tokenizer

from sparse_gpt.tokenizer import encode

from .base import Example, boundary_problem

# The prompt is at most this many characters of source before the cut (whole lines where
# possible): about 100 tokens of code for a 2048-token BPE, so it fits a 128-token context.
MAX_PROMPT_CHARS = 300
MAX_PROMPT_TOKENS = 110
# Candidates kept per answer class before validation, as a multiple of the number wanted.
OVERSAMPLE = 4

QUOTES = ('"', "'")


@dataclass(frozen=True)
class _Candidate:
    """A cut point in one text: the answer starts at `cut`; `starts` are the offsets a prompt may
    start at (statement starts, earliest first, all within MAX_PROMPT_CHARS of the cut)."""

    text: str
    starts: tuple[int, ...]
    cut: int
    answer: str
    alternative: str

    def example(self, start: int) -> Example:
        after = self.cut + len(self.answer)
        # The continuation runs to the end of the line, or of the next line when the answer is the
        # line break itself.
        line_end = self.text.find("\n", after + 1)
        end = len(self.text) if line_end < 0 else line_end + 1
        return Example(self.text[start:self.cut], self.answer, self.alternative,
                       self.text[after:end])


class _Reservoir:
    """A uniform sample of at most `k` items from a stream of unknown length (Algorithm R)."""

    def __init__(self, k: int, rng: random.Random):
        self.k, self.rng, self.seen = k, rng, 0
        self.items: list[_Candidate] = []

    def add(self, item: _Candidate) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.k:
                self.items[j] = item


def _python_tokens(text: str) -> list[tokenize.TokenInfo] | None:
    """Python's tokens of `text`, or None for text that is not valid Python 3 source."""
    try:
        return list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None


def _line_starts(text: str) -> list[int]:
    """Offset of the start of each line (1-based rows as in tokenize: row r starts at [r - 1])."""
    # tokenize reads lines split on "\n" only, so other line breaks must not count here.
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _statement_rows(tokens: list[tokenize.TokenInfo]) -> set[int]:
    """Rows that begin outside any bracket and any multi-line string: where a prompt may start.

    A prompt starting inside a bracket would hide that bracket's opening (fatal for bracket
    counting); one starting inside a docstring would show a stray closing quote.
    """
    rows, depth = {1}, 0
    for tok in tokens:
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type in (tokenize.NL, tokenize.NEWLINE) and depth == 0:
            # Lines inside a multi-line string or after a backslash get no NL token, so they are
            # never added.
            rows.add(tok.end[0] + 1)
    return rows


def _window_starts(line_starts: list[int], rows: set[int], cut_row: int,
                   cut: int) -> tuple[int, ...]:
    """Offsets of the statement rows at or above `cut_row` within MAX_PROMPT_CHARS of `cut`,
    earliest first."""
    found = []
    row = cut_row
    while row >= 1 and cut - line_starts[row - 1] <= MAX_PROMPT_CHARS:
        if row in rows:
            found.append(line_starts[row - 1])
        row -= 1
    return tuple(reversed(found))


def _quote_candidates(text: str) -> Iterator[_Candidate]:
    """One candidate per one-line, unprefixed, non-empty string literal without escapes or quotes
    inside: the cut is its closing quote."""
    tokens = _python_tokens(text)
    if tokens is None:
        return
    line_starts = _line_starts(text)
    rows = _statement_rows(tokens)
    for tok in tokens:
        s = tok.string
        if tok.type != tokenize.STRING or tok.start[0] != tok.end[0] or s[0] not in QUOTES:
            continue  # prefixed (f, r, b, u) and multi-line strings are left out
        body = s[1:-1]
        if not body or s[:3] in ('"""', "'''") or "\\" in body or any(q in body for q in QUOTES):
            continue
        cut = line_starts[tok.end[0] - 1] + tok.end[1] - 1
        starts = _window_starts(line_starts, rows, tok.start[0], cut)
        if starts:
            yield _Candidate(text, starts, cut, s[0], QUOTES[1 - QUOTES.index(s[0])])


def _bracket_candidates(text: str) -> Iterator[_Candidate]:
    """One candidate per `]` followed at once by another `]` (answer `]`), or by the end of a
    statement whose brackets are all closed and a non-blank next line (answer `\\n`).

    Any square bracket counts, list literal or subscript: real code nests list literals too rarely
    (a few per megabyte of the stdlib) for a sample, and the depth to track is the same.
    """
    tokens = _python_tokens(text)
    if tokens is None:
        return
    line_starts = _line_starts(text)
    rows = _statement_rows(tokens)
    depth = 0  # brackets of any kind open at this point
    for tok in tokens:
        if tok.type != tokenize.OP or tok.string not in "([{)]}":
            continue
        depth += 1 if tok.string in "([{" else -1
        if depth < 0:
            return  # unbalanced: give up on this text
        if tok.string != "]":
            continue
        cut = line_starts[tok.end[0] - 1] + tok.end[1]
        answer = _after_bracket(text, cut, depth)
        starts = _window_starts(line_starts, rows, tok.start[0], cut) if answer else ()
        if starts:
            yield _Candidate(text, starts, cut, answer, "\n" if answer == "]" else "]")


def _after_bracket(text: str, cut: int, depth: int) -> str | None:
    """The answer after a `]` ending at `cut` with `depth` brackets still open, or None if it is
    not a clean case."""
    if text.startswith("]", cut):
        return "]"
    # A statement that ends right after the `]`, followed by a line of code (a blank line would
    # make the next token "\n\n", not "\n").
    if depth == 0 and text.startswith("\n", cut):
        line_end = text.find("\n", cut + 1)
        if text[cut + 1:line_end if line_end >= 0 else len(text)].strip():
            return "\n"
    return None


def _sample(candidates: Iterator[_Candidate], answers: tuple[str, str], n: int, seed: int,
            tokenizer: Tokenizer | None) -> list[Example]:
    """Up to `n` examples, half per answer, valid for `tokenizer` when one is given."""
    rng = random.Random(seed)
    want = {a: (n + 1 - i) // 2 for i, a in enumerate(answers)}  # answers[0] gets the odd one
    pools = {a: _Reservoir(OVERSAMPLE * want[a] + 8, rng) for a in answers}
    for cand in candidates:
        pools[cand.answer].add(cand)
    chosen: dict[str, list[Example]] = {a: [] for a in answers}
    for a in answers:
        items = list(pools[a].items)
        rng.shuffle(items)
        for cand in items:
            if len(chosen[a]) == want[a]:
                break
            ex = _fit(cand, tokenizer)
            if ex is not None:
                chosen[a].append(ex)
    # Interleave the classes so any prefix of the list is balanced too.
    out = [ex for pair in zip(*chosen.values()) for ex in pair]
    longer = max(chosen.values(), key=len)
    return (out + longer[len(out) // 2:])[:n]


def _fit(cand: _Candidate, tokenizer: Tokenizer | None) -> Example | None:
    """The candidate's example with the longest prompt of at most MAX_PROMPT_TOKENS tokens, or None
    if there is none or the answer is not the next token for `tokenizer` (no checks without one)."""
    if tokenizer is None:
        return cand.example(cand.starts[0])
    for start in cand.starts:
        ex = cand.example(start)
        if len(encode(tokenizer, ex.prompt)) <= MAX_PROMPT_TOKENS:
            return ex if boundary_problem(tokenizer, ex) is None else None
    return None


def _all(texts: Iterable[str], find) -> Iterator[_Candidate]:
    for text in texts:
        yield from find(text)


def mine_quote_examples(texts: Iterable[str], n: int, seed: int,
                        tokenizer: Tokenizer | None = None) -> list[Example]:
    """single_double_quote examples from real code: the prompt runs up to a closing quote.

    The whole of `texts` is scanned (pass held-out source, not training text). With a tokenizer,
    only examples whose closing quote is the next token are kept. Half the examples close with `"`.
    """
    return _sample(_all(texts, _quote_candidates), QUOTES, n, seed, tokenizer)


def mine_bracket_examples(texts: Iterable[str], n: int, seed: int,
                          tokenizer: Tokenizer | None = None) -> list[Example]:
    """bracket_counting examples from real code: the prompt runs up to a `]`.

    The answer is `]` when another bracket closes right after it, `\\n` when the statement ends
    there. Half the examples answer `]`. See mine_quote_examples for `texts` and `tokenizer`.
    """
    return _sample(_all(texts, _bracket_candidates), ("]", "\n"), n, seed, tokenizer)
