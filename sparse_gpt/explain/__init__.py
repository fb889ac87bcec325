"""Node explanations: top- and bottom-activating contexts over pretraining text, cached per checkpoint.

    from sparse_gpt.explain import explain_node
    print(explain_node(load_any("runs/cpu-small"), "0.mlp.post_act[12]").format())

`python -m sparse_gpt.explain --checkpoint DIR NODE` prints the same.
"""
from .contexts import (
    Context,
    ExplainSettings,
    NodeContexts,
    NodeExplanation,
    TokenStat,
    compute_node_contexts,
    explain_node,
    node_contexts,
)

__all__ = ["Context", "ExplainSettings", "NodeContexts", "NodeExplanation", "TokenStat", "compute_node_contexts",
           "explain_node", "node_contexts"]
