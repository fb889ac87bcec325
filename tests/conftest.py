import os
from pathlib import Path

# One intra-op thread per process, set before torch is imported: on a 2-core machine torch's default
# pool oversubscribes the cores (tests/test_prune.py took 10x longer). Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from inprocess import run_main, script_main  # noqa: E402
from planted import prune_planted  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items):
    """The slow tests first (the shortened main job above all): spread over workers by pytest-xdist
    (scripts/test.sh), a minute-long test that started last would leave the other workers idle
    while it runs."""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, "test_main_job" not in item.nodeid))


@pytest.fixture(scope="session")
def planted():
    """The planted model pruned once with the default test settings (about 5 s)."""
    return prune_planted()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint: configs/tiny.yaml trained for 20 steps by train.py's main (in-process)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    proc = run_main(script_main("train.py"), ["--config", "configs/tiny.yaml", "--no-progress", "--out", str(out),
                                              "--steps", "20"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out
