"""Tasks about string literals: closing quotes, f-strings, file modes, and the nonsense control."""
from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer

from . import natural
from .base import Example
from .templates import Side, TemplateTask, code, with_pools


class SingleDoubleQuote(TemplateTask):
    """Close a string with the quote it was opened with: `"` or `'`.

    The prompt ends inside a one-line string literal, after its last content token; the pair
    differs only in the opening quote. Our pre-tokenizer isolates quote runs, so the closing quote
    is its own token whatever follows it; a plain byte-level BPE merges it with what follows, and
    the task then contrasts those tokens (`")` vs `')`, `"\\n` vs `'\\n`; base.EncodedExample).
    Natural examples: `natural.mine_quote_examples`.
    """

    name = "single_double_quote"
    description = "close a string with the quote it was opened with"
    answers = ('"', "'")
    sides = (Side('"', {"q": '"'}), Side("'", {"q": "'"}))
    prune_templates = (
        code("""
            $ind$var = ${q}$word${answer}
            $ind$stmt
            """),
        code("""
            def $func($var):
                if not $var:
                    raise ValueError(${q}$text${answer})
                return $var
            """),
        code("""
            $ind$stmt
            $ind$var = $var2.get(${q}$word${answer}, $num)
            """),
        code("""
            $ind$var[${q}$word${answer}] = $var2
            """),
        code("""
            $ind$stmt
            ${ind}print(${q}$text${answer})
            """),
        code("""
            ${ind}if $var == ${q}$word${answer}:
            $ind    $stmt
            """),
        code("""
            $ind$func($var, ${q}$word${answer})
            """),
    )
    heldout_templates = (
        code("""
            $ind$stmt
            ${ind}return ${q}$text${answer}
            """),
        code("""
            $ind$var = ${q}$text${answer} % $var2
            """),
        code("""
            $ind${var}.append(${q}$word${answer})
            """),
        code("""
            ${ind}assert $var, ${q}$text${answer}
            """),
    )

    def natural_examples(self, texts: Iterable[str], n: int, seed: int,
                         tokenizer: Tokenizer | None = None) -> list[Example]:
        return natural.mine_quote_examples(texts, n, seed, tokenizer)


class NonsenseQuote(TemplateTask):
    """Control: the closing quote is set by which function is called, not by the opening quote.

    Same prompt shapes as single_double_quote, but every string is an argument of `info(...)` or
    `debug(...)`: after `info(` the answer is `"` and after `debug(` it is `'`, whichever quote
    opened the string (the opening quote is drawn at random and shared by both prompts of a pair).
    No model has a reason to know this rule, so a circuit that "solves" it shows how much the pruner
    can build out of mean-ablated parts.
    """

    name = "nonsense_quote"
    description = "control: closing quote set by the called function's name, not the opening quote"
    answers = ('"', "'")
    control = True
    sides = (Side('"', {"fn": "info"}), Side("'", {"fn": "debug"}))
    prune_templates = (
        code("""
            $ind$var = ${fn}($q$word${answer})
            $ind$stmt
            """),
        code("""
            def $func($var):
                if not $var:
                    ${fn}($q$text${answer})
                return $var
            """),
        code("""
            $ind$stmt
            $ind$var = $var2.get(${fn}($q$word${answer}), $num)
            """),
        code("""
            $ind$var[${fn}($q$word${answer})] = $var2
            """),
        code("""
            $ind$stmt
            $ind${fn}($q$text${answer})
            """),
        code("""
            ${ind}if $var == ${fn}($q$word${answer}):
            $ind    $stmt
            """),
        code("""
            $ind$func($var, ${fn}($q$word${answer}))
            """),
    )
    heldout_templates = (
        code("""
            $ind$stmt
            ${ind}return ${fn}($q$text${answer})
            """),
        code("""
            $ind$var = ${fn}($q$text${answer}) % $var2
            """),
        code("""
            $ind${var}.append(${fn}($q$word${answer}))
            """),
        code("""
            ${ind}assert $var, ${fn}($q$text${answer})
            """),
    )


class FstringBrace(TemplateTask):
    """Whether a print is an f-string: `{` (interpolate) vs `"` (close the string).

    `print(f"count=` goes on with `{count}`, `print("count=` closes the string and passes the value
    as a second argument (`print("count=", count)`). The prompt ends after `=`, `: ` or ` ` inside
    the string, so both continuations are natural; the pair differs only in the `f` prefix.
    """

    name = "fstring_brace"
    description = "open a {field} in an f-string print, close the string in a plain one"
    answers = ("{", '"')
    # `rest` is how each line goes on: `{count}")` vs `", count)`.
    sides = (Side("{", {"f": "f", "rest": '$var}"'}), Side('"', {"f": "", "rest": ", $var"}))
    pools = with_pools(label=("count", "total", "size", "name", "n", "value", "x", "result", "id",
                              "path", "error", "status", "step", "loss", "key", "elapsed"))
    prune_templates = (
        code("""
            $ind$stmt
            ${ind}print(${f}"$label=${answer}${rest})
            """),
        code("""
            ${ind}print(${f}"$text: ${answer}${rest})
            """),
        code("""
            def $func($var):
                print(${f}"$word ${answer}${rest})
                return $var
            """),
        code("""
            ${ind}for $var in $seq:
            $ind    print(${f}"  $label=${answer}${rest})
            """),
        code("""
            ${ind}if $var is None:
            $ind    print(${f}"no $word: ${answer}${rest})
            """),
        code("""
            ${ind}print(${f}"$text ${answer}${rest}, file=sys.stderr)
            """),
    )
    heldout_templates = (
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}else:
            $ind    print(${f}"$text ${answer}${rest})
            """),
        code("""
            ${ind}print(${f}"[$word] ${answer}${rest})
            """),
        code("""
            ${ind}print()
            ${ind}print(${f}"Total $label: ${answer}${rest})
            """),
        code("""
            ${ind}print(${f}"$label -> ${answer}${rest})
            """),
    )


class WithOpen(TemplateTask):
    """File mode `r` vs `w` from the file's name: `open(input_path, '` vs `open(output_path, '`.

    The quote before the mode is isolated by the pre-tokenizer, so the mode letter is its own token;
    the paper's answers `'r'` / `'w'` become their first differing token, `r` / `w`. The name's role
    word (input, src, read, ... vs output, dst, write, ...) is drawn per pair and is the detail.
    """

    name = "with_open"
    description = "open a file for reading or writing according to its variable's name"
    answers = ("r", "w")
    sides = (Side("r", {"role": "${rrole}"}), Side("w", {"role": "${wrole}"}))
    pools = with_pools(rrole=("input", "in", "src", "source", "read", "infile"),
                       wrole=("output", "out", "dst", "dest", "write", "outfile"),
                       noun=("path", "file", "filename", "name", "fname"))
    prune_templates = (
        code("""
            ${ind}with open(${role}_$noun, $q${answer}$q) as f:
            $ind    $stmt
            """),
        code("""
            def $func(${role}_$noun):
                with open(${role}_$noun, $q${answer}$q) as fp:
                    $stmt
            """),
        code("""
            $ind$var = open(${role}_$noun, $q${answer}$q)
            """),
        code("""
            $ind${role}_$noun = os.path.join($var, $q$word.txt$q)
            ${ind}with open(${role}_$noun, $q${answer}$q) as fh:
            """),
        code("""
            ${ind}with open(self.${role}_$noun, $q${answer}$q, encoding=${q}utf-8$q) as f:
            """),
        code("""
            ${ind}f = open(${role}_$noun, mode=$q${answer}$q)
            """),
    )
    heldout_templates = (
        code("""
            ${ind}fh = io.open(${role}_$noun, $q${answer}$q)
            """),
        code("""
            ${ind}if os.path.exists(${role}_$noun):
            $ind    with open(${role}_$noun, $q${answer}$q) as f:
            """),
        code("""
            ${ind}return open(${role}_$noun, $q${answer}$q)
            """),
    )


TASKS = (SingleDoubleQuote, NonsenseQuote, FstringBrace, WithOpen)
