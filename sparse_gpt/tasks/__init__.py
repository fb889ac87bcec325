"""Binary next-token tasks on Python code, and how to encode and score them.

    from sparse_gpt.tasks import get_task, encode_pairs, task_loss
    task = get_task("single_double_quote")
    batch = encode_pairs(task, task.pairs(64, seed=0), tokenizer, model.config.block_size)
    loss = task_loss(model(batch.tokens), batch)

`python -m sparse_gpt.tasks list` lists the tasks; `... show TASK` prints examples.
"""
from __future__ import annotations

import difflib

from . import brackets, quotes, statements, variables
from .base import (
    BinaryTask,
    EncodedExample,
    Example,
    PromptPair,
    PromptTooLongError,
    TaskBatch,
    TaskError,
    TaskTokenError,
    boundary_problem,
    encode_example,
    encode_examples,
    encode_pair,
    encode_pairs,
    length_chunks,
    logit_diff,
    oriented_logit_diff,
    scored_logits,
    task_accuracy,
    task_logits,
    task_loss,
    two_way_accuracy,
    two_way_loss,
)

# The paper's 20 tasks, in the order of the paper's table, then the controls.
PAPER_TASKS = (
    "single_double_quote", "bracket_counting", "set_or_string", "set_or_string_fixedvarname",
    "final_kwarg", "class_init", "with_as", "bracket_brace", "with_open", "for_while", "else_elif",
    "fstring_brace", "if_ternary", "var_swap", "indent_for", "lambda_func", "if_equals",
    "enumerate_range", "var_if", "while_return_true",
)

_CLASSES: dict[str, type[BinaryTask]] = {
    cls.name: cls
    for module in (quotes, brackets, variables, statements)
    for cls in module.TASKS
}
_ORDER = PAPER_TASKS + tuple(sorted(n for n in _CLASSES if n not in PAPER_TASKS))


class UnknownTaskError(KeyError):
    """A task name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def list_tasks(include_controls: bool = True) -> list[str]:
    """Task names: the paper's 20 in the paper's order, then the controls (unless excluded)."""
    return [n for n in _ORDER if include_controls or not _CLASSES[n].control]


def get_task(name: str) -> BinaryTask:
    """The task called `name`; UnknownTaskError (a KeyError) lists the valid names otherwise."""
    cls = _CLASSES.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, _ORDER, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise UnknownTaskError(f"unknown task {name!r}{hint} Valid tasks: {', '.join(_ORDER)}")
    return cls()


__all__ = [
    "BinaryTask", "EncodedExample", "Example", "PromptPair", "TaskBatch", "TaskError", "TaskTokenError",
    "PromptTooLongError", "UnknownTaskError", "PAPER_TASKS", "boundary_problem", "encode_example",
    "encode_examples", "encode_pair", "encode_pairs", "get_task", "length_chunks", "list_tasks", "logit_diff", "oriented_logit_diff",
    "scored_logits", "task_accuracy", "task_logits", "task_loss", "two_way_accuracy", "two_way_loss",
]
