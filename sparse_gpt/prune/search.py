"""Searching the pruner's settings within a time budget, for the smallest circuit meeting the target.

Optuna's TPE sampler proposes k_coef, learning rate, steps, the penalty's warm-up, the surrogate's
temperature and its annealing, the mask's initial bias and the seed; each trial is one pruning run
(train, repair, discretise) scored by its circuit's size on held-out pairs, a run that misses the
target scoring above every run that meets it. Hopeless runs stop early: every 20 steps a trial
reports its active node count (or, while its task loss is far above the target, a value worse than
any circuit), and a median pruner stops trials doing worse than earlier ones at the same step.
The first trial is the configured settings, so a budget of one trial is the plain run. The best
run is then refined (sparse_gpt.prune.refine) in the time left, and with cfg.edge_mask its weights
are pruned (sparse_gpt.prune.edges), on a clock of its own.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from .edges import prune_edges
from .pruner import PruneConfig, Pruner, PruneRun
from .refine import refine

# share of the budget the refinement of the best run keeps for itself
REFINE_SHARE = 0.35


class _OutOfTime(Exception):
    pass


def _first_trial(cfg: PruneConfig) -> dict:
    """The configured settings, as the search's first trial."""
    return {"k_coef": cfg.k_coef, "lr": cfg.lr, "steps": cfg.steps, "k_warmup": cfg.k_warmup,
            "temperature": cfg.temperature, "temperature_final": cfg.temperature_final or cfg.temperature,
            "init_bias": cfg.init_bias, "seed": cfg.seed}


def _trial_settings(trial, cfg: PruneConfig) -> PruneConfig:
    """The settings a trial samples: each range widened to hold the configured value (trial 1 runs
    exactly that)."""
    first = _first_trial(cfg)

    def span(name: str, lo, hi):
        v = first[name]
        return (min(lo, v), max(hi, v)) if (v > 0 or lo == 0) else (lo, hi)

    return replace(
        cfg,
        k_coef=trial.suggest_float("k_coef", *span("k_coef", 3e-4, 3e-2), log=True),
        lr=trial.suggest_float("lr", *span("lr", 1e-3, 3e-2), log=True),
        steps=trial.suggest_int("steps", *span("steps", 100, 600), log=True),
        k_warmup=trial.suggest_float("k_warmup", *span("k_warmup", 0.0, 0.5)),
        temperature=trial.suggest_float("temperature", *span("temperature", 0.3, 3.0), log=True),
        temperature_final=trial.suggest_float("temperature_final", *span("temperature_final", 0.1, 3.0), log=True),
        init_bias=trial.suggest_float("init_bias", *span("init_bias", 0.02, 0.5), log=True),
        seed=trial.suggest_int("seed", cfg.seed, cfg.seed + 1000))


def budget_search(pruner: Pruner, progress: bool = True, log=None) -> tuple[PruneRun, list[PruneRun]]:
    """(best run, every finished run) within pruner.cfg.budget minutes, refinement included."""
    import optuna  # imported here: only the budgeted search needs it

    cfg = pruner.cfg
    t0 = time.perf_counter()
    deadline = t0 + 60.0 * cfg.budget
    search_deadline = t0 + 60.0 * cfg.budget * (1 - REFINE_SHARE if cfg.refine else 1.0)
    N, target = pruner.layout.n_nodes, cfg.search_target
    runs: list[PruneRun] = []

    first = _first_trial(cfg)

    def objective(trial):
        settings = _trial_settings(trial, cfg)

        def report(step, task_loss, active):
            if time.perf_counter() > search_deadline and runs:
                raise _OutOfTime
            trial.report(active if task_loss <= 3 * target else N, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        try:
            run = pruner.run(settings=settings, progress=progress, report=report,
                             desc=f"{pruner.task.name} trial {trial.number + 1}")
        except _OutOfTime:
            raise optuna.TrialPruned() from None
        runs.append(run)
        if log is not None:
            log(f"trial {trial.number + 1}: {run.n_nodes} nodes, raw held-out loss {run.loss:.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
        return run.n_nodes + (N if run.loss > target else 0)

    optuna.logging.set_verbosity(logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=4)
    study = optuna.create_study(direction="minimize", sampler=sampler,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=60))
    study.enqueue_trial(first)
    while not runs or time.perf_counter() < search_deadline:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        if runs and cfg.max_trials and len(study.get_trials(deepcopy=False, states=states)) >= cfg.max_trials:
            break  # (the enqueued first trial waits in the study before it runs: count the ones that ran)
        study.optimize(objective, n_trials=1)
    best = min(runs, key=lambda r: (r.loss > target, r.n_nodes, r.loss))
    if cfg.refine:
        best = refine(pruner, best, deadline=deadline)
    if cfg.edge_mask:
        best = prune_edges(pruner, best, log=log)
    return best, runs


def fixed_search(pruner: Pruner, progress: bool = True, log=None) -> tuple[PruneRun, list[PruneRun]]:
    """The budget-free search: search_runs runs, k_coef up after a run whose mask met the target
    (try smaller), down after one that missed; learning rate and seed vary per run; the smallest
    circuit meeting the target is refined."""
    cfg = pruner.cfg
    k_coef, runs = cfg.k_coef, []
    for i in range(cfg.search_runs):
        lr = cfg.lr * (1.0 if i % 2 == 0 else 0.5)
        run = pruner.run(k_coef=k_coef, lr=lr, seed=cfg.seed + i, progress=progress,
                         desc=f"{pruner.task.name} run {i + 1}/{cfg.search_runs}")
        runs.append(run)
        k_coef = k_coef * 3 if run.converged else k_coef / 3
    best = min(runs, key=lambda r: (r.loss > cfg.search_target, r.n_nodes, r.loss))
    if cfg.refine:
        best = refine(pruner, best)
    if cfg.edge_mask:
        best = prune_edges(pruner, best, log=log)
    return best, runs


def search(pruner: Pruner, progress: bool = True, log=None) -> tuple[PruneRun, list[PruneRun]]:
    """The budgeted search if the settings give a budget, else the fixed one."""
    if pruner.cfg.budget > 0:
        return budget_search(pruner, progress, log)
    return fixed_search(pruner, progress, log)

