"""Tasks about brackets and argument lists: nesting depth, dict vs list, keyword defaults."""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer

from . import natural
from .base import Example
from .templates import Side, TemplateTask, code, with_pools


class BracketCounting(TemplateTask):
    """After a `]` closes a list, another `]` if a list is still open, else the line ends.

    The paper asks for `]` vs `]]` before the closing brackets. Our tokenizers never have a `]]`
    token (the pre-tokenizer keeps every `]` alone, sparse_gpt/tokenizer.py), so `]]` is written
    `]` `]`: the first token is `]` either way. So the prompt ends one token
    later, just after an inner list's `]`, and the first differing token is `]` (depth still >= 1)
    vs the newline `\\n` (depth 0). Pairs differ in one bracket: an extra opening `[` (`[[1, 2]` vs
    `[1, 2]`) or whether the outer list was already closed (`[[1], [2]` vs `[[1], [2]]`).
    Natural examples (`natural.mine_bracket_examples`) cut real code after any `]`, subscripts
    included, since nested list literals are rare in real code.
    On a tokenizer that merges a `]` with what follows (`]]`, `]\\n`), the prompts' last `]` merges
    with the answer, so the task is asked one token earlier, as the paper asks it: after `[[1, 2`,
    `]]` (or `]` then `]\\n`) against `]\\n` (base.encode_pair).
    """

    name = "bracket_counting"
    description = "close a nested list with ] or end the line, by the open-bracket depth"
    answers = ("]", "\n")
    sides = (Side("]", {"deep": "[", "shut": ""}), Side("\n", {"deep": "", "shut": "]"}))
    prune_templates = (
        code("""
            $ind$var = ${deep}[$num, $num2, $num3]${answer}
            $ind$stmt
            """),
        code("""
            $ind$var = [[$num, $num2], [$num3, $num4]${shut}${answer}
            $ind$stmt
            """),
        code("""
            ${ind}if $var is None:
            $ind    return ${deep}[$var2, $var3]${answer}
            $ind$stmt
            """),
        code("""
            $ind$var = ${deep}[$func($var2), $var3.$attr]${answer}
            $ind$stmt
            """),
        code("""
            $ind$var = [[$num], [$num2, $num3], [$num4]${shut}${answer}
            ${ind}return $var
            """),
        code("""
            $ind$stmt
            $ind$var = ${deep}[$q$word$q, $q$word2$q]${answer}
            $ind$stmt2
            """),
    )
    heldout_templates = (
        code("""
            ${ind}self.$attr = ${deep}[$var, $var2 + $num]${answer}
            $ind$stmt
            """),
        code("""
            $ind$var = [[$q$word$q, $num], [$q$word2$q, $num2]${shut}${answer}
            $ind$stmt
            """),
        code("""
            $ind$var = [[$var2] * $num for _ in range($num2)${shut}${answer}
            $ind$stmt
            """),
        code("""
            ${ind}yield ${deep}[$var, $var2, $var3]${answer}
            $ind$stmt
            """),
    )

    def natural_examples(self, texts: Iterable[str], n: int, seed: int,
                         tokenizer: Tokenizer | None = None) -> list[Example]:
        return natural.mine_bracket_examples(texts, n, seed, tokenizer)


class BracketBrace(TemplateTask):
    """`:` after the first element inside a dict `{`, `,` inside a list `[`.

    The pair differs only in the opening (and closing) bracket; the first element is a string,
    name, number or call, so the model must look back to the bracket to choose.
    """

    name = "bracket_brace"
    description = "':' after a key inside a dict, ',' after an element inside a list"
    answers = (":", ",")
    sides = (Side(":", {"o": "{", "c": "}"}), Side(",", {"o": "[", "c": "]"}))
    prune_templates = (
        code("""
            $ind$var = ${o}$q$word$q${answer} $num${c}
            """),
        code("""
            $ind$var = ${o}
            $ind    $q$word$q${answer} $var2,
            """),
        code("""
            $ind$stmt
            ${ind}return ${o}$var${answer} $var2${c}
            """),
        code("""
            $ind$func(${o}$q$word$q${answer} $var${c})
            """),
        code("""
            $ind$var = ${o}$var2.$attr${answer} $num${c}
            $ind$stmt
            """),
        code("""
            def $func(self):
                $stmt
                return ${o}$q$word$q${answer} self.$attr${c}
            """),
    )
    heldout_templates = (
        code("""
            ${ind}self.$attr = ${o}$num${answer} $q$word$q${c}
            """),
        code("""
            $ind$var = ${o}$var2[$num]${answer} $var3${c}
            """),
        code("""
            ${ind}yield ${o}$q$word$q${answer} $func($var)${c}
            """),
    )


class FinalKwarg(TemplateTask):
    """`=None` for the last parameter when the earlier ones had defaults, else `)`.

    A parameter without a default cannot follow ones with defaults, so after `def f(a=1, b=2, c`
    the model must write a default (`=None`, one token: the pre-tokenizer keeps `=` with the
    following word); after `def f(a, b, c` the list usually closes. The paper only names the
    `=None` side; `)` is the most common other next token, so it is the alternative.
    """

    name = "final_kwarg"
    description = "give the last parameter '=None' when the earlier ones had defaults"
    answers = ("=None", ")")
    sides = (
        Side("=None", {"args1": "$var=$val",
                       "args": "$var=$val, $var2=$val2",
                       "args3": "$var=$val, $var2=$val2, $var3=$val3"}),
        Side(")", {"args1": "$var", "args": "$var, $var2", "args3": "$var, $var2, $var3"}),
    )
    pools = with_pools(val=("None", "0", "1", "-1", "True", "False", "()", "10", "1.0", "8192",
                            "''", "b''"))
    prune_templates = (
        code("""
            def $func(${args}, $var4${answer}:
                $stmt
            """),
        code("""
            ${ind}def $func(self, ${args}, $var4${answer}:
            $ind    $stmt
            """),
        code("""
            def $func(${args3}, $var4${answer}:
            """),
        code("""
            ${ind}@staticmethod
            ${ind}def $func(${args}, $var4${answer}:
            """),
        code("""
            ${ind}async def $func(self, ${args1}, $var4${answer}:
            """),
        code("""
            $stmt

            def $func(${args1}, $var4${answer}:
            """),
    )
    heldout_templates = (
        code("""
            ${ind}def __init__(self, ${args}, $var4${answer}:
            $ind    self.$attr = $var
            """),
        code("""
            def $func(${args3}, $var4${answer} -> None:
            """),
        code("""
            ${ind}@classmethod
            ${ind}def $func(cls, ${args1}, $var4${answer}:
            """),
    )


TASKS = (BracketCounting, BracketBrace, FinalKwarg)
