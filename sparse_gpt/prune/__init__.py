"""Pruning: node masks and how they act on a model, the task objective, and the pruning optimiser."""
from .masks import gated, record_norm_scales
from .objective import Calibration, Evaluator, Score, calibrate
from .pruner import PruneConfig, Pruner, PruneRun, TargetUnreachableError

__all__ = ["Calibration", "Evaluator", "PruneConfig", "PruneRun", "Pruner", "Score", "TargetUnreachableError", "calibrate",
           "gated", "record_norm_scales"]
