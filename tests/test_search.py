"""The budgeted search (Optuna TPE over the pruner's settings) on the planted model."""
import time

import pytest

from planted import PLANTED_NODES, prune_planted
from sparse_gpt.prune import PruneConfig


def test_budgeted_search_keeps_the_smallest_circuit_meeting_the_target():
    *_, layout, _, pruner, _ = prune_planted(steps=100, budget=0.5, max_trials=3)
    t0 = time.perf_counter()
    best, runs = pruner.search(progress=False)
    assert time.perf_counter() - t0 < 0.5 * 60 + 20  # the budget, plus at most one step's overrun
    assert 1 <= len(runs) <= 3
    assert runs[0].settings.steps == 100 and runs[0].settings.k_coef == pruner.cfg.k_coef  # trial 1: as configured
    assert best.loss <= 0.15
    meeting = [r.n_nodes for r in runs if r.loss <= 0.15]
    assert best.n_nodes <= min(meeting)  # refinement only ever removes nodes
    assert {layout.node_name(i) for i in best.keep.nonzero().flatten().tolist()} == PLANTED_NODES


def test_a_budget_stops_the_search():
    """No trial cap: only the budget (3 s) ends the search."""
    *_, pruner, _ = prune_planted(steps=100, budget=0.05)
    t0 = time.perf_counter()
    best, runs = pruner.search(progress=False)
    assert time.perf_counter() - t0 < 0.05 * 60 + 20 and runs and best.loss <= 0.15


def test_bad_budgets_are_refused():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="budget"):
            PruneConfig(budget=bad).validate()


def test_one_trial_is_the_configured_run():
    """--search-runs 1 with a budget: exactly the configured settings, once (the main job's test
    path); the enqueued first trial must not count before it has run."""
    *_, pruner, _ = prune_planted(steps=60, budget=2.0, max_trials=1, refine=False, edge_mask=False)
    best, runs = pruner.search(progress=False)
    assert len(runs) == 1 and runs[0].settings.steps == 60 and best is runs[0]
