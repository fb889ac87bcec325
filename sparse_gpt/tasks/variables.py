"""Tasks that track a variable: its type, its name, or how many loop targets there are."""
from __future__ import annotations

from .templates import Side, TemplateTask, code, with_pools

# Accumulator names for set_or_string: none is assigned by a `stmt` filler line or is in the `var`
# pool, so no other slot can rebind or reuse the variable the task is about.
ACCUMULATORS = ("chars", "visited", "found", "unique", "collected", "tags", "acc", "ids", "labels",
                "extra", "matched", "pending", "known", "marks", "flags", "letters", "digits")


class SetOrString(TemplateTask):
    """`.add` for a variable made with `set()`, ` +=` for one made with an empty string.

    Both answers are single tokens (the pre-tokenizer keeps `.add` and ` +=` whole). The pair
    differs only in the initial value; the use comes a few lines later, usually inside a loop.
    """

    name = "set_or_string"
    description = "continue with .add after x = set(), with += after x = ''"
    answers = (".add", " +=")
    sides = (Side(".add", {"init": "set()", "use": "($var)"}),
             Side(" +=", {"init": "$empty", "use": " $var"}))
    pools = with_pools(acc=ACCUMULATORS, empty=('""', "''"))
    prune_templates = (
        code("""
            $ind$acc = ${init}
            ${ind}for $var in $seq:
            $ind    $acc${answer}${use}
            """),
        code("""
            $ind$acc = ${init}
            ${ind}for $var in $seq:
            $ind    if not $var:
            $ind        continue
            $ind    $acc${answer}${use}
            """),
        code("""
            def $func($name):
                $acc = ${init}
                for $var in $name:
                    $acc${answer}${use}
                return $acc
            """),
        code("""
            $ind$acc = ${init}
            $ind$stmt
            $ind$acc${answer}${use}
            """),
        code("""
            ${ind}def __init__(self):
            $ind    self.$acc = ${init}

            ${ind}def $func(self, $var):
            $ind    self.$acc${answer}${use}
            """),
        code("""
            $ind$acc = ${init}
            ${ind}while $var:
            $ind    $var = $var.$attr
            $ind    $acc${answer}${use}
            """),
    )
    heldout_templates = (
        code("""
            $ind$acc = ${init}
            ${ind}if $var is not None:
            $ind    $acc${answer}${use}
            """),
        code("""
            $ind$acc = ${init}
            ${ind}for $var2 in $seq:
            $ind    for $var in $var2:
            $ind        $acc${answer}${use}
            """),
        code("""
            $ind$acc = ${init}  # $comment
            ${ind}try:
            $ind    $acc${answer}${use}
            """),
    )


class SetOrStringFixedVarname(SetOrString):
    """set_or_string with the variable always named `current`, so its name carries no type hint.

    The answer can only come from the `set()` / `""` initialisation, never from a name that reads
    like a set (`seen`) or a string (`text`).
    """

    name = "set_or_string_fixedvarname"
    description = "set_or_string with the variable always named current"
    pools = with_pools(acc=("current",), empty=('""', "''"))


class ClassInit(TemplateTask):
    """Copy the argument name in `self.x = x`: the answer is ` x` for whichever name the pair uses.

    The pair differs in the name of the argument (in the signature and in `self.<name> =`), so
    each prompt's answer is its own name and the alternative is the other prompt's name; `answers`
    is None because the names change from pair to pair. Names come from a pool whose space-prefixed
    forms are single tokens of the stdlib tokenizer.
    """

    name = "class_init"
    description = "copy the argument's name in self.x = x"
    answers = None
    sides = (Side(" $name", {"arg": "${name}"}), Side(" $name2", {"arg": "${name2}"}))
    prune_templates = (
        code("""
            class $cls:
                def __init__(self, ${arg}):
                    self.${arg} =${answer}
                    $stmt
            """),
        code("""
            class $cls(object):
                def __init__(self, $name3, ${arg}):
                    self.$name3 = $name3
                    self.${arg} =${answer}
            """),
        code("""
            ${ind}def __init__(self, ${arg}=None):
            $ind    super().__init__()
            $ind    self.${arg} =${answer}
            """),
        code("""
            ${ind}def __init__(self, ${arg}):
            $ind    self._${arg} =${answer}
            """),
        code("""
            ${ind}def __init__(self, *, ${arg}, $name3=None):
            $ind    self.${arg} =${answer}
            $ind    self.$name3 = $name3
            """),
        code("""
            class $cls:
                def __init__(self, ${arg}):
                    self.$attr = None
                    self.${arg} =${answer}
            """),
    )
    heldout_templates = (
        code("""
            class $cls($cls2):
                def __init__(self, ${arg}, **kwargs):
                    super().__init__(**kwargs)
                    self.${arg} =${answer}
            """),
        code("""
            ${ind}def __init__(self, $name3, ${arg}, $name4):
            $ind    self.$name3 = $name3
            $ind    self.${arg} =${answer}
            """),
        code("""
            ${ind}def __init__(self, ${arg}: $cls2) -> None:
            $ind    self.${arg} =${answer}
            """),
    )


class VarSwap(TemplateTask):
    """The name in `x, y = y, x`: after `x, y = y,` the answer is ` x`.

    The pair swaps the two names on the left (`a, b = b,` vs `b, a = a,`), so the answer is the
    first name either way and the alternative the second; `answers` is None because the names
    change from pair to pair (all single tokens with a leading space).
    """

    name = "var_swap"
    description = "finish the swap x, y = y, x with the right name"
    answers = None
    sides = (Side(" $name", {"first": "${name}", "second": "${name2}"}),
             Side(" $name2", {"first": "${name2}", "second": "${name}"}))
    prune_templates = (
        code("""
            $ind$stmt
            $ind${first}, ${second} = ${second},${answer}
            """),
        code("""
            ${ind}while $name3 > 0:
            $ind    ${first}, ${second} = ${second},${answer}
            """),
        code("""
            ${ind}if ${first} > ${second}:
            $ind    ${first}, ${second} = ${second},${answer}
            """),
        code("""
            def $func(${first}, ${second}):
                ${first}, ${second} = ${second},${answer}
                return ${first}, ${second}
            """),
        code("""
            ${ind}for _ in range($num):
            $ind    ${first}, ${second} = ${second},${answer} + ${second}
            """),
        code("""
            $ind$stmt
            ${ind}for $var in $seq:
            $ind    if $var:
            $ind        ${first}, ${second} = ${second},${answer}
            """),
    )
    heldout_templates = (
        code("""
            $ind${first}, ${second} = (${second},${answer})
            """),
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}else:
            $ind    ${first}, ${second} = ${second},${answer}
            """),
        code("""
            $ind${first}[$num], ${second}[$num] = ${second}[$num],${answer}[$num]
            """),
    )


class EnumerateRange(TemplateTask):
    """`enumerate` for `for i, x in`, `range` for `for i in`.

    ` enumerate` is four tokens of the stdlib tokenizer (` en|ume|r|ate`), so the enumerate side's
    answer is its first token ` en`; ` range` is one token. The pair differs only in the number of
    loop targets (`for i, item in` vs `for i in`).
    """

    name = "enumerate_range"
    description = "loop with enumerate over two targets, with range over one"
    answers = (" en", " range")
    sides = (Side(" en", {"targets": "$i, $var", "rest": "umerate($seq)"}),
             Side(" range", {"targets": "$i", "rest": "(len($seq))"}))
    pools = with_pools(i=("i", "idx", "index", "n", "pos", "j", "k", "lineno", "num", "count"))
    prune_templates = (
        code("""
            ${ind}for ${targets} in${answer}${rest}:
            $ind    $stmt
            """),
        code("""
            def $func($name):
                $stmt
                for ${targets} in${answer}${rest}:
            """),
        code("""
            $ind$stmt
            ${ind}for ${targets} in${answer}${rest}:
            """),
        code("""
            ${ind}if $seq:
            $ind    for ${targets} in${answer}${rest}:
            """),
        code("""
            $ind$var2 = [$i for ${targets} in${answer}${rest}]
            """),
        code("""
            ${ind}for ${targets} in${answer}${rest}:
            $ind    if $i > $num:
            $ind        break
            """),
    )
    heldout_templates = (
        code("""
            ${ind}return {$i for ${targets} in${answer}${rest}}
            """),
        code("""
            ${ind}with open($var2) as f:
            $ind    for ${targets} in${answer}${rest}:
            """),
        code("""
            ${ind}while True:
            $ind    for ${targets} in${answer}${rest}:
            """),
    )


TASKS = (SetOrString, SetOrStringFixedVarname, ClassInit, VarSwap, EnumerateRange)
