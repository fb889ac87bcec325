"""Templated tasks: minimal pairs written as snippets of real-looking Python with slots.

A template is a code snippet with `string.Template` slots (`$name`, `${name}`); `$` never occurs in
the Python we imitate, so the snippets keep their own braces and quotes. Two kinds of slot:

- side slots, set by the task's two `Side`s: the detail the pair differs in (the opening quote, the
  keyword, ...). Their values may themselves contain pool slots.
- pool slots, filled at random from `POOLS` and shared by both prompts of a pair. The slot's name
  minus trailing digits picks the pool, and different names from one pool get different values
  (`$var` and `$var2` are two distinct variable names).

`${answer}` marks where the prompt ends: the side's answer goes there, and the text after it is the
continuation that the encoder uses to check the answer is the next token in context. The
continuation is never shown to a model, so it only needs the right first characters, not to be
valid code for both sides. An answer that ends in a newline (`:\n`, `\n`) stands for the line
break at the cut, so templates are written as plain multi-line code either way.
"""
from __future__ import annotations

import random
import re
import string
import textwrap
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Mapping

from .base import BinaryTask, Example, PromptPair, TaskError, check_split

ANSWER_SLOT = "answer"
# Marks where the answer slot was in a filled template; never occurs in source code.
_CUT = "\x00"


def _pool(*values: str) -> tuple[str, ...]:
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate values in a slot pool: {values}")
    return values


# Names whose space-prefixed form is one token of the stdlib tokenizer (checked by the tests), for
# tasks whose answer copies a name from the prompt.
SINGLE_TOKEN_NAMES = _pool(
    "x", "y", "z", "a", "b", "n", "key", "value", "name", "data", "path", "item", "result", "count",
    "size", "index", "line", "text", "node", "obj", "callback", "default", "mode", "level", "start",
    "end", "first", "last", "parent", "child", "source", "target", "msg", "options", "config",
    "state", "token", "values", "lines", "filename", "prefix", "pattern", "timeout", "user", "code",
    "message", "output", "module", "buffer",
)

POOLS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    # Ordinary variable names, one token or several.
    "var": _pool(
        "x", "y", "n", "key", "value", "name", "data", "path", "item", "result", "count", "size",
        "index", "line", "text", "node", "obj", "items", "total", "entry", "row", "offset",
        "length",
        "parts", "tokens", "record", "fields", "buf", "width", "height", "url", "host", "port",
        "query", "status", "label", "title", "tag", "attrs", "chunk", "words", "prev", "seen",
        "limit", "cur", "elem", "pair", "names", "config", "options", "state", "module", "target",
        "source", "user", "message", "response", "request", "header", "field", "filename",
        "prefix", "suffix", "pattern", "timeout", "retries", "delay", "level", "mode", "output",
    ),
    "name": SINGLE_TOKEN_NAMES,
    # Names that read as collections, for `for x in $seq`.
    "seq": _pool(
        "items", "values", "lines", "names", "rows", "entries", "records", "nodes", "args", "keys",
        "parts", "tokens", "self.items", "self.children", "data", "paths", "files", "results",
        "fields", "words", "chunks", "elements", "pairs", "options", "self._handlers", "users",
    ),
    "func": _pool(
        "process", "load_config", "parse", "handle", "update", "run", "build", "get_items", "check",
        "render", "read_data", "compute", "setup", "format_row", "validate", "convert", "main",
        "make_key", "encode", "decode", "normalize", "collect", "apply", "resolve", "dispatch",
        "find_match", "split_line", "merge", "emit", "flush", "reset", "close", "write_header",
        "parse_args", "get_value", "set_value", "add_item", "remove", "visit", "walk",
    ),
    "cls": _pool(
        "Parser", "Config", "Node", "Handler", "Request", "Response", "Record", "Buffer", "Client",
        "Server", "Item", "Entry", "Reader", "Writer", "Cache", "Token", "Event", "Message", "Task",
        "Worker", "Registry", "Session", "Field", "Option", "Result", "Context", "Loader",
        "Visitor",
    ),
    "attr": _pool(
        "name", "value", "data", "items", "parent", "children", "count", "size", "path", "mode",
        "options", "state", "enabled", "closed", "result", "text", "args", "level", "timeout",
    ),
    "method": _pool(
        "append", "extend", "update", "get", "pop", "strip", "split", "lower", "encode", "decode",
        "read", "write", "close", "copy", "keys", "values", "items", "clear", "flush", "join",
    ),
    # String contents: no quotes, backslashes or braces, so they never end or format a string.
    "word": _pool(
        "name", "value", "data", "path", "error", "utf-8", "ascii", "default", "id", "type", "key",
        "size", "text", "mode", "status", "title", "user", "host", "port", "version", "format",
        "encoding", "method", "items", "index", "count", "config", "debug", "info", "warning",
        "none", "true", "false", "GET", "POST", "OK", "main", "test", "result", "message", "time",
        "date", "length", "offset", "level", "source", "target", "file", "line", "args",
    ),
    "text": _pool(
        "hello world", "invalid value", "not found", "unexpected end of input", "done", "skipping",
        "file not found", "Processing", "bad format", "expected a string", "missing key",
        "unknown option", "timed out", "Loading data", "no such file", "connection closed",
        "%s: %s", "too many values", "cannot convert", "reading", "Starting server", "ok",
        "invalid literal", "empty", "end of file", "unsupported type", "not a directory",
    ),
    "num": _pool("0", "1", "2", "3", "4", "5", "8", "10", "16", "42", "100", "255", "1024", "-1"),
    # One-line statements used as surrounding lines; no quotes, so they never open a string.
    "stmt": _pool(
        "count = 0", "result = []", "self.reset()", "data = self.read()", "n = len(items)",
        "total += 1", "seen = set()", "args = list(args)", "index = 0", "self._closed = False",
        "value = int(value)", "pos = self.pos", "lines = text.splitlines()", "out = []",
        "node = node.parent", "size = max(size, 0)", "self.count += 1", "cache = {}",
        "key = key.lower()", "done = False", "i = j = 0",
        "log.debug(msg)", "path = os.path.abspath(path)", "del tmp", "assert n >= 0",
        "options = options or {}", "start = time.monotonic()", "self._lock.acquire()",
    ),
    "ind": _pool("    ", "        "),
    "q": _pool('"', "'"),
    "comment": _pool(
        "fast path", "main loop", "walk the tree", "drain the queue", "retry until done",
        "TODO: handle errors", "see above", "nothing to do", "keep the old value", "slow path",
        "flush pending output", "normalise first", "the common case",
    ),
    "exc": _pool("ValueError", "KeyError", "OSError", "TypeError", "IndexError", "RuntimeError"),
})


def with_pools(**extra: tuple[str, ...]) -> Mapping[str, tuple[str, ...]]:
    """POOLS plus (or overriding) some task-specific pools, read-only."""
    return MappingProxyType({**POOLS, **{k: _pool(*v) for k, v in extra.items()}})


def code(text: str) -> str:
    """A snippet written as an indented triple-quoted string, dedented, without its first newline.

    Lets the task modules write templates the way they read as code.
    """
    return textwrap.dedent(text).lstrip("\n")


@dataclass(frozen=True)
class Side:
    """One prompt of a pair: the side slots that set its detail, and the answer they imply.

    `answer` may contain pool slots (e.g. " $name" for a copied name).
    """

    answer: str
    slots: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Sides are class attributes shared by every instance of a task: keep them read-only.
        object.__setattr__(self, "slots", MappingProxyType(dict(self.slots)))


def _pool_name(slot: str) -> str:
    return re.sub(r"\d+$", "", slot)


class Filler:
    """Draws pool slot values for one pair, distinct within a pool, from a seeded `random.Random`.

    Every value is fully resolved before it is inserted, and a text is substituted in one pass, so
    an inserted value can never run into the text after it and form a different slot name.
    """

    # Pool values may contain slots (a loop header with `$var`); deeper nesting is a pool bug.
    MAX_DEPTH = 4

    def __init__(self, rng: random.Random, pools: Mapping[str, tuple[str, ...]]):
        self.rng = rng
        self.pools = pools
        self.drawn: dict[str, str] = {}   # slot -> the pool value picked (slots not yet filled)
        self.values: dict[str, str] = {}  # slot -> that value, filled

    def fill(self, text: str, fixed: Mapping[str, str] | None = None, depth: int = 0) -> str:
        """`text` with each slot replaced by `fixed[slot]` if given, else by its pool value.

        The answer slot becomes a marker character that `render` cuts the text at.
        """
        fixed = fixed or {}
        mapping = {ANSWER_SLOT: _CUT}
        for slot in string.Template(text).get_identifiers():
            if slot != ANSWER_SLOT:
                mapping[slot] = fixed[slot] if slot in fixed else self.value(slot, depth)
        try:
            return string.Template(text).substitute(mapping)
        except ValueError as e:  # a stray `$` the Template syntax cannot parse
            raise TaskError(f"bad template text {text!r}: {e}") from e

    def value(self, slot: str, depth: int = 0) -> str:
        """The filled value of a pool slot, drawn the first time it is asked for."""
        if slot not in self.values:
            if depth >= self.MAX_DEPTH:
                raise TaskError(f"slot ${slot}: pool values nest more than {self.MAX_DEPTH} deep")
            pool_name = _pool_name(slot)
            pool = self.pools.get(pool_name)
            if pool is None:
                raise TaskError(f"template slot ${slot} has no pool; pools: "
                                f"{', '.join(sorted(self.pools))}")
            taken = {v for k, v in self.drawn.items() if _pool_name(k) == pool_name}
            free = [v for v in pool if v not in taken]
            if not free:
                raise TaskError(f"pool {pool_name!r} has too few values for slot ${slot}")
            self.drawn[slot] = self.rng.choice(free)
            self.values[slot] = self.fill(self.drawn[slot], depth=depth + 1)
        return self.values[slot]


class TemplateTask(BinaryTask):
    """A task defined by two `Side`s and two disjoint lists of templates (prune / heldout).

    Each pair picks a template at random, fills the pool slots once, and renders it once per side;
    so the two prompts differ only in the side slots and the answers are swapped by construction.
    Before the template come `preamble_lines` (a range) filler lines (`$stmt` or `# $comment`) at
    the indentation of its first line, the same for both prompts, so prompts vary in length and
    surroundings beyond what the templates spell out.
    """

    sides: ClassVar[tuple[Side, Side]]
    prune_templates: ClassVar[tuple[str, ...]]
    heldout_templates: ClassVar[tuple[str, ...]]
    pools: ClassVar[Mapping[str, tuple[str, ...]]] = POOLS
    preamble_lines: ClassVar[tuple[int, int]] = (1, 5)
    # A pair is redrawn this many times at most to avoid repeating one already drawn.
    max_redraws: ClassVar[int] = 20

    def templates(self, split: str) -> tuple[str, ...]:
        check_split(split)
        return self.prune_templates if split == "prune" else self.heldout_templates

    def pairs(self, n: int, seed: int, split: str = "prune") -> list[PromptPair]:
        templates = self.templates(split)
        # A string seed is hashed by random.Random, so the stream depends on all three parts and is
        # the same on every machine and Python run.
        rng = random.Random(f"{self.name}/{split}/{seed}")
        out: list[PromptPair] = []
        seen: set[tuple[str, str]] = set()
        for _ in range(n):
            for _attempt in range(self.max_redraws):
                pair = self.render(rng.choice(templates), rng)
                if (pair.a.prompt, pair.b.prompt) not in seen:
                    break
            seen.add((pair.a.prompt, pair.b.prompt))
            out.append(pair)
        return out

    def render(self, template: str, rng: random.Random) -> PromptPair:
        """The pair one template gives with the pool values drawn from `rng`."""
        if ANSWER_SLOT not in string.Template(template).get_identifiers():
            raise TaskError(f"task {self.name}: template has no ${{{ANSWER_SLOT}}} slot: "
                            f"{template!r}")
        filler = Filler(rng, self.pools)
        rendered = []
        for side in self.sides:
            slots = {k: filler.fill(v) for k, v in side.slots.items()}
            text = filler.fill(template, slots)
            rendered.append((text, filler.fill(side.answer)))
        preamble = self._preamble(rendered[0][0], rng)
        examples = []
        for i, (text, answer) in enumerate(rendered):
            prompt, _, continuation = text.partition(_CUT)
            if answer.endswith("\n") and continuation.startswith("\n"):
                continuation = continuation[1:]  # the answer is the template's line break
            examples.append(Example(preamble + prompt, answer, rendered[1 - i][1], continuation))
        return PromptPair(*examples)

    def _preamble(self, text: str, rng: random.Random) -> str:
        """Distinct filler lines (a number in `preamble_lines`), indented like `text` starts."""
        indent = text[:len(text) - len(text.lstrip(" "))]
        lines = POOLS["stmt"] + tuple(f"# {c}" for c in POOLS["comment"])
        picked = rng.sample(lines, rng.randint(*self.preamble_lines))
        return "".join(f"{indent}{line}\n" for line in picked)
