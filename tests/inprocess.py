"""Run a command line's `main(argv)` inside the test process.

A command through a real subprocess costs ~1.4 s of start-up on 2 cores (a new interpreter
importing torch, and `datasets` for the Hugging Face source) before it does anything; a bad-input
case in-process costs milliseconds. Every command's `__main__` block is only `sys.exit(main())`, so
calling `main` with the same arguments (from the repository root, as the subprocess cases run)
exercises the same code, and a few cases per command still go through the real entry point to keep
that last step proven. Runs compared bit for bit with other processes' stay processes of their own.

Running in-process is only sound if a command leaves the process as it found it: `run_main`
fails a test whose command changed the working directory, the environment, the signal handlers,
torch's threads, default dtype or grad mode, or the logging handlers, and puts the global random
generators back as they were.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    """What subprocess.CompletedProcess gives the assertions: exit status, stdout, stderr."""
    returncode: int
    stdout: str
    stderr: str


def script_module(script: str) -> ModuleType:
    """A script in the repository root (train.py, prune_circuit.py) as a module, loaded once."""
    name = f"_script_{Path(script).stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def script_main(script: str) -> Callable[[Sequence[str]], int]:
    """`main` of a script in the repository root."""
    return script_module(script).main


def module_main(module: str) -> Callable[[Sequence[str]], int]:
    """`main` of a package run as `python -m module`."""
    return importlib.import_module(f"{module}.__main__").main


def _process_state() -> dict:
    return {
        "working directory": os.getcwd(),
        # torch's compiler records the cache directory it picked for itself the first time it looks
        "environment": {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"},
        "signal handlers": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)},
        "torch threads": torch.get_num_threads(),
        "torch default dtype": torch.get_default_dtype(),
        "torch grad mode": torch.is_grad_enabled(),
        "logging handlers": list(logging.getLogger().handlers),
    }


def _difference(before, after) -> str:
    if isinstance(before, dict):
        return ", ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in before.keys() | after.keys()
                         if before.get(k) != after.get(k))
    return f"{before!r} -> {after!r}"


def run_main(main: Callable[[Sequence[str]], int], argv: Sequence[str], capsys=None) -> Result:
    """Call `main(argv)` from the repository root; an exception other than SystemExit propagates
    (it would have been a traceback). Output is read through pytest's `capsys`, or, where there is
    none (module and session fixtures), caught by redirecting sys.stdout and sys.stderr. Fails if the
    command changed process-wide state."""
    buffers = None if capsys is not None else (io.StringIO(), io.StringIO())
    if capsys is not None:
        capsys.readouterr()  # drop what fixtures printed
    cwd = os.getcwd()
    # Training seeds the global generators (its model init is drawn from them), which a process of
    # its own may do: they are put back, so no later test sees a difference.
    generators = torch.get_rng_state(), np.random.get_state(), random.getstate()
    os.chdir(ROOT)
    try:
        with contextlib.ExitStack() as stack:
            if buffers is not None:
                stack.enter_context(contextlib.redirect_stdout(buffers[0]))
                stack.enter_context(contextlib.redirect_stderr(buffers[1]))
            before = _process_state()
            try:
                code = main(list(argv))
            except SystemExit as e:  # argparse's errors, as in a real process
                code = e.code
            after = _process_state()
    finally:
        os.chdir(cwd)
        torch.set_rng_state(generators[0])
        np.random.set_state(generators[1])
        random.setstate(generators[2])
    out, err = capsys.readouterr() if capsys is not None else (buffers[0].getvalue(), buffers[1].getvalue())
    changed = [f"{k}: {_difference(before[k], after[k])}" for k in before if before[k] != after[k]]
    assert not changed, f"{list(argv)} changed process-wide state: {'; '.join(changed)}"
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message") prints it and exits 1
        err, code = err + f"{code}\n", 1
    return Result(code, out, err)
