"""Tasks about statement syntax: which keyword opened the line, and what the line needs next.

Many of these answers are a colon that ends a line. The pre-tokenizer glues a symbol run to the
newline after it, so in real code the token after `while x` is `:\\n`, never a bare `:` (that only
occurs before a space or a comment). The paper writes these answers as `:`; here they are `:\\n`,
the token a model actually sees, and the encoder's context check would reject a bare `:`.
"""
from __future__ import annotations

from .templates import Side, TemplateTask, code, with_pools


class ForWhile(TemplateTask):
    """` in` after `for x`, `:\\n` after `while x` (the paper's `:`; see the module docstring)."""

    name = "for_while"
    description = "' in' after 'for x', ':' and a newline after 'while x'"
    answers = (" in", ":\n")
    sides = (Side(" in", {"kw": "for", "rest": " $seq:"}), Side(":\n", {"kw": "while", "rest": ""}))
    prune_templates = (
        code("""
            $ind$stmt
            $ind${kw} $var${answer}${rest}
            $ind    $stmt2
            """),
        code("""
            def $func($var2):
                ${kw} $var${answer}${rest}
                    $stmt
            """),
        code("""
            ${ind}if $var2:
            $ind    ${kw} $var${answer}${rest}
            $ind        $stmt
            """),
        code("""
            $ind$var = $var2.$attr
            $ind${kw} $var${answer}${rest}
            $ind    $stmt
            """),
        code("""
            ${ind}try:
            $ind    ${kw} $var${answer}${rest}
            $ind        $stmt
            """),
        code("""
            $ind$stmt
            $ind$stmt2
            $ind${kw} $var${answer}${rest}
            $ind    $stmt3
            """),
    )
    heldout_templates = (
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}else:
            $ind    ${kw} $var${answer}${rest}
            $ind        $stmt
            """),
        code("""
            ${ind}with $var2:
            $ind    ${kw} $var${answer}${rest}
            """),
        code("""
            $ind# $comment
            $ind${kw} $var${answer}${rest}
            $ind    $stmt
            """),
    )


class ElseElif(TemplateTask):
    """`:\\n` after `else`, the start of a condition after `elif`.

    The condition's first token is the name tested by the `if` above (` x` in `if x == 1: ...
    elif x`), so the elif side's answer is that name (one token with its space) and `answers` is
    None. The colon is `:\\n` (see the module docstring).
    """

    name = "else_elif"
    description = "':' and a newline after else, a condition after elif"
    answers = None
    sides = (Side(":\n", {"kw": "else", "rest": ""}),
             Side(" $name", {"kw": "elif", "rest": " == $num2:"}))
    prune_templates = (
        code("""
            ${ind}if $name == $num:
            $ind    $stmt
            $ind${kw}${answer}${rest}
            $ind    $stmt2
            """),
        code("""
            ${ind}if $name is None:
            $ind    return $num
            $ind${kw}${answer}${rest}
            $ind    $stmt
            """),
        code("""
            def $func($name):
                if $name < 0:
                    raise ValueError
                ${kw}${answer}${rest}
                    $stmt
            """),
        code("""
            ${ind}for $var in $seq:
            $ind    if $name == $var:
            $ind        break
            $ind    ${kw}${answer}${rest}
            $ind        $stmt
            """),
        code("""
            ${ind}if $name in ($num, $num3):
            $ind    $stmt
            $ind${kw}${answer}${rest}
            """),
        code("""
            ${ind}if $name:
            $ind    $stmt
            $ind    $stmt2
            $ind${kw}${answer}${rest}
            $ind    pass
            """),
    )
    heldout_templates = (
        code("""
            ${ind}if $name.$method():
            $ind    $stmt
            $ind${kw}${answer}${rest}
            """),
        code("""
            ${ind}if $name > $num:
            $ind    $var = $num3
            $ind${kw}${answer}${rest}
            $ind    $var = $num4
            """),
        code("""
            ${ind}if $name == $q$word$q:
            $ind    return $var
            $ind${kw}${answer}${rest}
            """),
    )


class IfTernary(TemplateTask):
    """`:\\n` after an if statement's condition, ` else` after a conditional expression's.

    The pair differs in what precedes `if`: nothing (a statement) or `y = x` / `return x` (a
    ternary), with the same condition after it. The colon is `:\\n` (see the module docstring).
    """

    name = "if_ternary"
    description = "':' after an if statement's condition, ' else' inside a ternary"
    answers = (":\n", " else")
    sides = (Side(":\n", {"lead": "", "rlead": ""}),
             Side(" else", {"lead": "$var = $var2 ", "rlead": "return $var2 "}))
    prune_templates = (
        code("""
            $ind$stmt
            $ind${lead}if $name is None${answer}
            $ind    $stmt2
            """),
        code("""
            def $func($name):
                ${rlead}if $name${answer}
                    $stmt
            """),
        code("""
            ${ind}for $name in $seq:
            $ind    ${lead}if not $name${answer}
            $ind        $stmt
            """),
        code("""
            $ind${lead}if $name > $num${answer}
            $ind    $stmt
            """),
        code("""
            $ind$stmt
            $ind${rlead}if isinstance($name, $cls)${answer}
            $ind    $stmt2
            """),
        code("""
            $ind${lead}if $name in $seq${answer}
            $ind    $stmt
            """),
    )
    heldout_templates = (
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}else:
            $ind    ${lead}if $name.$attr${answer}
            $ind        $stmt
            """),
        code("""
            $ind${rlead}if $func($name)${answer}
            $ind    $stmt
            """),
        code("""
            $ind# $comment
            $ind${lead}if $name == $num${answer}
            $ind    $stmt
            """),
    )


class WhileReturnTrue(TemplateTask):
    """`:\\n` after `while True`, a bare newline `\\n` after `return True`.

    The templates put code after `return True` (an enclosing block goes on), since at the end of
    a function the next token would be a blank line's `\\n\\n`. Colon as `:\\n` (module docstring).
    """

    name = "while_return_true"
    description = "':' and a newline after 'while True', a newline after 'return True'"
    answers = (":\n", "\n")
    sides = (Side(":\n", {"kw": "while"}), Side("\n", {"kw": "return"}))
    prune_templates = (
        code("""
            ${ind}for $var in $seq:
            $ind    if $var.$attr:
            $ind        ${kw} True${answer}
            ${ind}return False
            """),
        code("""
            def $func(self):
                if self.$attr:
                    ${kw} True${answer}
                $stmt
            """),
        code("""
            ${ind}if $name is None:
            $ind    ${kw} True${answer}
            $ind$stmt
            """),
        code("""
            ${ind}try:
            $ind    $stmt
            $ind    ${kw} True${answer}
            ${ind}except $exc:
            """),
        code("""
            ${ind}with self._lock:
            $ind    ${kw} True${answer}
            $ind$stmt
            """),
        code("""
            $ind$stmt
            $ind${kw} True${answer}
            $ind    $stmt2
            """),
    )
    heldout_templates = (
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}else:
            $ind    ${kw} True${answer}
            $ind$stmt
            """),
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}elif $name:
            $ind    ${kw} True${answer}
            $ind$stmt
            """),
        code("""
            ${ind}try:
            $ind    $stmt8
            ${ind}except $exc:
            $ind    ${kw} True${answer}
            ${ind}finally:
            """),
    )


class IndentFor(TemplateTask):
    """The indentation after a `for` line: one level deeper than the `for`.

    The pre-tokenizer leaves the last space of an indentation run to the next word (`        x`
    is `       ` + ` x`), so the indentation token is one space short of the indentation. The pair
    differs in the line before the cut: a `for` line (the body is 4 spaces deeper) or a plain
    assignment (the next line keeps its indentation). Lines are indented 4 or 8 spaces (`$pad` is
    that minus one), so the answers are 7 vs 3 or 11 vs 7 spaces and `answers` is None.
    """

    name = "indent_for"
    description = "indent one level deeper on the line after a for line"
    answers = None
    sides = (Side("$pad    ", {"line": "for $loop:"}), Side("$pad", {"line": "$assign"}))
    pools = with_pools(
        pad=("   ", "       "),
        i=("i", "idx", "n", "j", "k", "lineno"),
        loop=("$var in $seq", "$i in range($num)", "$var, $var2 in $name.items()",
              "$var in sorted($seq)", "_ in range($num)", "$i, $var in enumerate($seq)"),
        assign=("$var = $func($seq)", "$var = $seq[$num]", "$var = len($seq)", "$var = $var2.$attr",
                "$var = $var2 + $num", "$var = list($seq)"),
    )
    prune_templates = (
        code("""
            $pad $stmt
            $pad ${line}
            ${answer} $var3 = $num2
            """),
        code("""
            $pad ${line}
            ${answer} $stmt
            """),
        code("""
            $pad if $name:
            $pad     return $num2
            $pad ${line}
            ${answer} $stmt
            """),
        code("""
            $pad # $comment
            $pad ${line}
            ${answer} $stmt
            """),
        code("""
            $pad $var3 = $num2
            $pad $stmt
            $pad ${line}
            ${answer} $stmt2
            """),
        code("""
            $pad while $name:
            $pad     $stmt
            $pad ${line}
            ${answer} $stmt2
            """),
    )
    heldout_templates = (
        code("""
            $pad try:
            $pad     $stmt
            $pad except $exc:
            $pad     raise
            $pad ${line}
            ${answer} $stmt2
            """),
        code('''
            $pad """$text."""
            $pad ${line}
            ${answer} $stmt
            '''),
        code("""
            $pad $var3 = {}
            $pad ${var3}[$q$word$q] = $num2
            $pad ${line}
            ${answer} $stmt
            """),
    )


class WithAs(TemplateTask):
    """` as` after `with open(...)`, `:\\n` after `with lock`.

    ` as` alone is not a choice between two plausible tokens, so the other prompt of the pair puts a
    lock or similar object after `with`, where the line ends at once (`with self._lock:`). The
    colon is `:\\n` (module docstring).
    """

    name = "with_as"
    description = "' as' after 'with open(...)', ':' and a newline after 'with lock'"
    answers = (" as", ":\n")
    sides = (Side(" as", {"cm": "$opener", "rest": " $fh:"}),
             Side(":\n", {"cm": "$lock", "rest": ""}))
    pools = with_pools(
        opener=("open($path)", "open($path, ${q}rb$q)", "open($path, ${q}w$q)", "io.open($path)",
                "open($path, encoding=${q}utf-8$q)", "gzip.open($path)"),
        path=("path", "filename", "self.path", "os.path.join(root, name)", "config_file", "fname",
              "args.output", "src"),
        lock=("self._lock", "lock", "self.lock", "_lock", "self._cond", "cv", "self._mutex",
              "self._rlock", "_global_lock"),
        fh=("f", "fp", "fh", "fd", "infile", "stream"),
    )
    prune_templates = (
        code("""
            ${ind}with ${cm}${answer}${rest}
            $ind    $stmt
            """),
        code("""
            def $func(self):
                $stmt
                with ${cm}${answer}${rest}
                    $stmt2
            """),
        code("""
            ${ind}if $name:
            $ind    with ${cm}${answer}${rest}
            $ind        $stmt
            """),
        code("""
            ${ind}try:
            $ind    with ${cm}${answer}${rest}
            $ind        $stmt
            """),
        code("""
            $ind$stmt
            $ind$stmt2
            ${ind}with ${cm}${answer}${rest}
            """),
        code("""
            ${ind}for $var in $seq:
            $ind    with ${cm}${answer}${rest}
            $ind        $stmt
            """),
    )
    heldout_templates = (
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}else:
            $ind    with ${cm}${answer}${rest}
            $ind        $stmt
            """),
        code("""
            $ind# $comment
            ${ind}with ${cm}${answer}${rest}
            $ind    $stmt
            """),
        code("""
            ${ind}while $name:
            $ind    with ${cm}${answer}${rest}
            $ind        $stmt
            """),
    )


class LambdaFunc(TemplateTask):
    """`:` after `lambda x`, `(` after `def f`.

    A lambda's colon is followed by a space, so here the bare `:` is the real next token. The pair
    is a statement binding a name either way: `key = lambda x` vs `def key`.
    """

    name = "lambda_func"
    description = "':' after 'lambda x', '(' after 'def f'"
    answers = (":", "(")
    sides = (Side(":", {"head": "$func = $lam"}), Side("(", {"head": "def $func"}))
    pools = with_pools(lam=("lambda $name", "lambda $name, $name2", "lambda self, $name",
                            "lambda _", "lambda $name=None", "lambda *args"))
    prune_templates = (
        code("""
            $ind$stmt
            $ind${head}${answer} $name3
            """),
        code("""
            def $func2($var):
                ${head}${answer} $name3
            """),
        code("""
            ${ind}if $var is None:
            $ind    ${head}${answer} $name3
            """),
        code("""
            class $cls:
                ${head}${answer} $name3
            """),
        code("""
            ${ind}try:
            $ind    ${head}${answer} $name3
            """),
        code("""
            $ind# $comment
            $ind${head}${answer} $name3
            """),
    )
    heldout_templates = (
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}else:
            $ind    ${head}${answer} $name3
            """),
        code("""
            ${ind}for $var in $seq:
            $ind    ${head}${answer} $name3
            """),
        code("""
            ${ind}with self._lock:
            $ind    ${head}${answer} $name3
            """),
    )


class IfEquals(TemplateTask):
    """` ==` after a name in a condition, ` =` after a name starting an assignment.

    The paper's `==` / `=` are written with the space that precedes them in ordinary style
    (` ==`, ` =`), the tokens a model sees there. The pair differs in the keyword before the
    name: `if x` / `while x` / `assert x` / `return x` vs just `x`.
    """

    name = "if_equals"
    description = "' ==' after 'if x', ' =' after a bare 'x' starting an assignment"
    answers = (" ==", " =")
    sides = (Side(" ==", {"head": "$ckw $name"}), Side(" =", {"head": "$name"}))
    pools = with_pools(ckw=("if", "while", "assert", "return", "if $var2 and"))
    prune_templates = (
        code("""
            $ind$stmt
            $ind${head}${answer} $num
            """),
        code("""
            def $func($name):
                ${head}${answer} $num
            """),
        code("""
            ${ind}for $var in $seq:
            $ind    ${head}${answer} $var
            """),
        code("""
            $ind$name = $num
            $ind${head}${answer} $num2
            """),
        code("""
            ${ind}try:
            $ind    ${head}${answer} $func($var)
            """),
        code("""
            ${ind}if $var:
            $ind    $stmt
            $ind${head}${answer} $num
            """),
    )
    heldout_templates = (
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}else:
            $ind    ${head}${answer} $q$word$q
            """),
        code("""
            $ind# $comment
            $ind${head}${answer} None
            """),
        code("""
            ${ind}with $var:
            $ind    ${head}${answer} $var2.$attr
            """),
    )


class VarIf(TemplateTask):
    """`if x == True` ends with `:\\n`, `x = True` with a bare newline `\\n`.

    The pair differs in the start of the line (`if x ==` vs `x =`); the prompt ends after the
    constant, where the statement's end shows which it was. Colon as `:\\n` (module docstring).
    """

    name = "var_if"
    description = "':' and a newline after 'if x == True', a newline after 'x = True'"
    answers = (":\n", "\n")
    sides = (Side(":\n", {"head": "if $name =="}), Side("\n", {"head": "$name ="}))
    pools = with_pools(const=("True", "False", "None"))
    prune_templates = (
        code("""
            $ind$stmt
            $ind${head} $const${answer}
            $ind    $stmt2
            """),
        code("""
            def $func($name):
                ${head} $const${answer}
                    $stmt
            """),
        code("""
            ${ind}for $var in $seq:
            $ind    ${head} $const${answer}
            $ind        $stmt
            """),
        code("""
            ${ind}try:
            $ind    ${head} $const${answer}
            $ind        $stmt
            """),
        code("""
            ${ind}if $var:
            $ind    $stmt
            $ind${head} $const${answer}
            $ind    $stmt2
            """),
        code("""
            $ind# $comment
            $ind${head} $const${answer}
            $ind    $stmt
            """),
    )
    heldout_templates = (
        code("""
            ${ind}if $var8:
            $ind    $stmt8
            ${ind}else:
            $ind    ${head} $const${answer}
            $ind        $stmt
            """),
        code("""
            ${ind}while $var:
            $ind    ${head} $const${answer}
            $ind        $stmt
            """),
        code("""
            ${ind}with $var:
            $ind    ${head} $const${answer}
            $ind        $stmt
            """),
    )


TASKS = (ForWhile, ElseElif, IfTernary, WhileReturnTrue, IndentFor, WithAs, LambdaFunc, IfEquals,
         VarIf)
