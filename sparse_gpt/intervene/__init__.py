"""Interventions: set nodes to chosen values (or ablate them) and see what the model predicts instead.

    from sparse_gpt.intervene import intervene
    effects = intervene(model, tokenizer, ["x = 'abc"], {"0.mlp.post_act[12]": 0.0},
                        answers=[("'", '"')])
    print(format_effects(effects))

Each node is set at every position of the prompt (or only at the last one, `at="last"`), the same
way the pruner ablates nodes. `python -m sparse_gpt.intervene` is the command-line front end.
"""
from .core import PromptEffect, format_effects, intervene, intervene_task, node_values

__all__ = ["PromptEffect", "format_effects", "intervene", "intervene_task", "node_values"]
