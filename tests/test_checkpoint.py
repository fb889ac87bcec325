"""Tests for sparse_gpt.checkpoint: bit-exact round trips, compact storage, pruning, verification
and crash safety (including real SIGKILLs of a saving subprocess)."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sparse_gpt.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_size_report,
    latest_checkpoint,
    load_checkpoint,
    load_state_dict,
    load_train_state,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from sparse_gpt.fileio import atomic_write_text, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = "model:\n  n_layer: 2\n"


def _sparse(shape: tuple[int, ...], density: float, seed: int,
            dtype: torch.dtype = torch.float32, signed_zeros: bool = False) -> torch.Tensor:
    """Random weights with about ``density`` of them nonzero. ``signed_zeros`` masks by
    multiplication, as a training loop might, which leaves -0.0 where weights were negative."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < density
    weights = torch.randn(shape, generator=g)
    masked = weights * mask if signed_zeros else torch.where(mask, weights, 0.0)
    return masked.to(dtype)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Dtype, shape and every bit equal (so -0.0 vs 0.0 and NaN payloads count)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                       b.contiguous().reshape(-1).view(torch.uint8))


@pytest.fixture
def tokenizer(tmp_path: Path) -> Path:
    path = tmp_path / "tokenizer_src.json"
    path.write_text('{"version": "1.0", "model": {"type": "BPE"}}', encoding="utf-8")
    return path


def _mixed_state_dict() -> dict[str, torch.Tensor]:
    sparse = _sparse((64, 128), 1 / 64, seed=0, signed_zeros=True)
    sparse[0, 1] = float("nan")
    return {
        "blocks.0.attn.w": sparse,
        "blocks.0.mlp.w": torch.randn(32, 16),                       # dense
        "blocks.0.mlp.b": torch.zeros(16),                           # all zero
        "step_count": torch.tensor(7, dtype=torch.int64),            # 0-dim int
        "scalar_zero": torch.tensor(0.0),                            # 0-dim zero
        "ids": torch.arange(100, dtype=torch.int64) * (torch.arange(100) % 10 == 0),
        "bf16_sparse": _sparse((128, 64), 1 / 64, seed=1, dtype=torch.bfloat16),
        "bf16_signed_zeros": _sparse((16, 64), 0.1, seed=5, dtype=torch.bfloat16,
                                     signed_zeros=True),
        "bf16_dense": torch.randn(8, 8).to(torch.bfloat16),
        "mask": torch.zeros(50, dtype=torch.bool).index_fill_(0, torch.tensor([3, 7]), True),
        "empty": torch.zeros(0, 5),
        "int8": torch.tensor([[0, 0, 0, -3], [0, 0, 0, 0]], dtype=torch.int8),
        "noncontig": torch.randn(6, 4).t(),
        # Dtypes whose CPU kernels lack index_put/masked_fill: decoding must use bit views.
        "fp8_sparse": _sparse((32, 32), 0.1, seed=6, signed_zeros=True).to(torch.float8_e4m3fn),
        "uint16_sparse": torch.tensor([0, 0, 0, 65535, 0, 0, 0, 0], dtype=torch.uint16),
    }


def test_round_trip_is_bit_exact(tmp_path: Path, tokenizer: Path) -> None:
    sd = _mixed_state_dict()
    run = tmp_path / "run"
    ckpt = save_checkpoint(run, 200, sd, CONFIG, tokenizer, extra_files={"meta.json": b"{}"})
    assert ckpt == run / "checkpoints" / "step_000200"

    loaded = load_state_dict(ckpt)
    assert list(loaded) == list(sd)  # original order is restored
    for name, tensor in sd.items():
        assert _same_bits(loaded[name], tensor), name

    # The storage layout is as documented: compact tensors as values + int32 flat indices.
    with safe_open(ckpt / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("blocks.0.attn.w::indices").dtype == torch.int32
        assert f.get_tensor("blocks.0.attn.w::values").dtype == torch.float32
    assert {"blocks.0.attn.w::values", "blocks.0.attn.w::indices", "blocks.0.attn.w::negzero",
            "fp8_sparse::negzero", "uint16_sparse::values",
            "blocks.0.mlp.b::values", "bf16_sparse::values", "bf16_signed_zeros::negzero",
            "blocks.0.mlp.w", "bf16_dense"} <= keys
    assert "blocks.0.attn.w" not in keys and "bf16_sparse::negzero" not in keys

    full = load_checkpoint(run)
    assert isinstance(full, Checkpoint)
    assert full.path == ckpt and full.step == 200 and full.config_yaml == CONFIG
    assert full.tokenizer_path.read_bytes() == tokenizer.read_bytes()
    assert full.train_state is None
    assert (ckpt / "meta.json").read_bytes() == b"{}"
    assert all(_same_bits(full.state_dict[k], v) for k, v in sd.items())


def test_tied_weights_are_saved(tmp_path: Path, tokenizer: Path) -> None:
    # Tied embeddings share storage, which safetensors alone refuses to save.
    weight = torch.randn(10, 4)
    sd = {"wte.weight": weight, "lm_head.weight": weight}
    ckpt = save_checkpoint(tmp_path / "run", 1, sd, CONFIG, tokenizer)
    loaded = load_state_dict(ckpt)
    assert _same_bits(loaded["wte.weight"], weight) and _same_bits(loaded["lm_head.weight"], weight)


@pytest.mark.parametrize("signed_zeros, max_ratio", [(False, 0.04), (True, 0.07)])
def test_compact_storage_is_smaller(tmp_path: Path, tokenizer: Path, signed_zeros: bool,
                                    max_ratio: float) -> None:
    sd = {"w": _sparse((1024, 4096), 1 / 64, seed=2, signed_zeros=signed_zeros)}
    ckpt = save_checkpoint(tmp_path / "run", 1, sd, CONFIG, tokenizer)
    report = checkpoint_size_report(ckpt)
    assert report["dense_bytes"] == report["dense_fp32_bytes"] == 1024 * 4096 * 4
    assert report["n_compact"] == 1 and report["n_tensors"] == 1
    # ~1/64 of elements at 4 value bytes + 4 index bytes each is about 1/32 of dense; a -0.0
    # bitmask adds 1 bit per element, another 1/32.
    assert report["file_bytes"] / report["dense_bytes"] < max_ratio
    assert (ckpt / "model.safetensors").stat().st_size == report["file_bytes"]
    assert _same_bits(load_state_dict(ckpt)["w"], sd["w"])


def test_compact_only_when_smaller(tmp_path: Path, tokenizer: Path) -> None:
    # 40% nonzero bf16: below the 50% share, but values + int32 indices (6 bytes each) would
    # exceed the dense 2 bytes per element, so it stays dense.
    sd = {"b": _sparse((100, 100), 0.4, seed=3, dtype=torch.bfloat16),
          "f": _sparse((100, 100), 0.4, seed=4)}
    ckpt = save_checkpoint(tmp_path / "run", 1, sd, CONFIG, tokenizer)
    with safe_open(ckpt / "model.safetensors", framework="pt") as f:
        assert set(f.keys()) == {"b", "f::values", "f::indices"}
    loaded = load_state_dict(ckpt)
    assert all(_same_bits(loaded[k], v) for k, v in sd.items())


def test_keep_prunes_old_checkpoints_and_latest_follows(tmp_path: Path, tokenizer: Path) -> None:
    run = tmp_path / "run"
    for step in (200, 400, 600, 800):
        ckpt = save_checkpoint(run, step, {"w": torch.full((3,), float(step))}, CONFIG, tokenizer)
        assert latest_checkpoint(run) == ckpt
        assert (run / "checkpoints" / "LATEST").read_text().strip() == ckpt.name
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["LATEST", "step_000600", "step_000800"]
    assert load_checkpoint(run).step == 800

    save_checkpoint(run, 1000, {"w": torch.ones(3)}, CONFIG, tokenizer, keep=1)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step_001000"]
    with pytest.raises(CheckpointError, match="keep"):
        save_checkpoint(run, 1200, {"w": torch.ones(3)}, CONFIG, tokenizer, keep=0)


def test_latest_checkpoint_none_before_first_save(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "nothing") is None
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert latest_checkpoint(tmp_path / "run") is None
    with pytest.raises(CheckpointError, match="no completed checkpoint"):
        load_checkpoint(tmp_path / "run")


def test_resolve_checkpoint(tmp_path: Path, tokenizer: Path) -> None:
    run = tmp_path / "run"
    first = save_checkpoint(run, 1, {"w": torch.ones(2)}, CONFIG, tokenizer)
    second = save_checkpoint(run, 2, {"w": torch.ones(2)}, CONFIG, tokenizer)
    assert resolve_checkpoint(run) == second
    assert resolve_checkpoint(run / "checkpoints") == second
    assert resolve_checkpoint(first) == first
    assert load_checkpoint(first).step == 1

    with pytest.raises(CheckpointError, match="neither a run directory"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(tokenizer)


def test_corrupt_model_is_detected(tmp_path: Path, tokenizer: Path) -> None:
    run = tmp_path / "run"
    save_checkpoint(run, 200, {"w": torch.randn(64, 64)}, CONFIG, tokenizer)
    ckpt = save_checkpoint(run, 400, {"w": torch.randn(64, 64)}, CONFIG, tokenizer)
    model = ckpt / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))

    expected = f"checkpoint {ckpt}: model.safetensors is corrupt (sha256 mismatch)"
    for call in (verify_checkpoint, load_state_dict, load_checkpoint):
        with pytest.raises(CheckpointError) as info:
            call(ckpt)
        assert str(info.value) == expected
    # LATEST names the corrupt one: loading the run fails loudly instead of using step 200.
    with pytest.raises(CheckpointError, match="step_000400: model.safetensors is corrupt"):
        load_checkpoint(run)

    model.write_bytes(bytes(data[:-1]))  # truncation is reported too
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        verify_checkpoint(ckpt)


def test_missing_files_are_detected(tmp_path: Path, tokenizer: Path) -> None:
    run = tmp_path / "run"
    ckpt = save_checkpoint(run, 200, {"w": torch.ones(4)}, CONFIG, tokenizer,
                           train_state={"step": 200})
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(run)
    assert str(info.value) == f"checkpoint {ckpt} is missing tokenizer.json"

    (ckpt / "checksums.json").unlink()
    with pytest.raises(CheckpointError, match="is missing checksums.json"):
        load_checkpoint(run)


def test_latest_naming_missing_dir_is_an_error(tmp_path: Path, tokenizer: Path) -> None:
    run = tmp_path / "run"
    save_checkpoint(run, 1, {"w": torch.ones(1)}, CONFIG, tokenizer)
    (run / "checkpoints" / "LATEST").write_text("step_000009\n")
    with pytest.raises(CheckpointError, match="names step_000009"):
        latest_checkpoint(run)
    # A later save repairs the dangling pointer.
    repaired = save_checkpoint(run, 9, {"w": torch.ones(1)}, CONFIG, tokenizer)
    assert latest_checkpoint(run) == repaired
    (run / "checkpoints" / "LATEST").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="should name a step_NNNNNN"):
        latest_checkpoint(run)


def test_train_state_and_extra_files(tmp_path: Path, tokenizer: Path) -> None:
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 5, "torch_rng": torch.get_rng_state(),
             "python_rng": random.getstate(), "data_position": {"shard": 3, "offset": 1234}}
    run = tmp_path / "run"
    meta = json.dumps({"tokens_seen": 10}).encode()
    ckpt = save_checkpoint(run, 5, model.state_dict(), CONFIG, tokenizer, train_state=state,
                           extra_files={"meta.json": meta})

    loaded = load_train_state(run)
    assert loaded["step"] == 5 and loaded["python_rng"] == state["python_rng"]
    assert torch.equal(loaded["torch_rng"], state["torch_rng"])
    assert loaded["data_position"] == {"shard": 3, "offset": 1234}
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["optimizer"])
    assert load_checkpoint(run, with_train_state=False).train_state is None

    checksums = verify_checkpoint(ckpt)
    assert checksums["step"] == 5 and checksums["format_version"] == 1
    assert set(checksums["files"]) == {"config.yaml", "model.safetensors", "tokenizer.json",
                                       "train_state.pt", "meta.json"}
    assert checksums["files"]["meta.json"] == {"sha256": hashlib.sha256(meta).hexdigest(),
                                               "size": len(meta)}

    # A corrupt train state is refused before it is unpickled.
    (ckpt / "train_state.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="train_state.pt is corrupt"):
        load_train_state(ckpt)

    no_state = save_checkpoint(run, 6, model.state_dict(), CONFIG, tokenizer)
    assert load_train_state(no_state) is None


@pytest.mark.parametrize("name", ["../evil", "sub/dir.json", ".hidden", "", "checksums.json",
                                  "model.safetensors"])
def test_bad_extra_file_names_are_refused(tmp_path: Path, tokenizer: Path, name: str) -> None:
    with pytest.raises(CheckpointError, match="extra file name"):
        save_checkpoint(tmp_path / "run", 1, {"w": torch.ones(1)}, CONFIG, tokenizer,
                        extra_files={name: b"x"})
    assert not (tmp_path / "run" / "checkpoints" / "step_000001").exists()


def test_bad_inputs_are_refused(tmp_path: Path, tokenizer: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match="'a::values' contains '::'"):
        save_checkpoint(run, 1, {"a::values": torch.ones(1)}, CONFIG, tokenizer)
    with pytest.raises(CheckpointError, match="expected a torch.Tensor"):
        save_checkpoint(run, 1, {"a": [1.0]}, CONFIG, tokenizer)  # type: ignore[dict-item]
    with pytest.raises(CheckpointError, match="tokenizer file"):
        save_checkpoint(run, 1, {"a": torch.ones(1)}, CONFIG, tmp_path / "nope.json")
    with pytest.raises(CheckpointError, match="step must be"):
        save_checkpoint(run, -1, {"a": torch.ones(1)}, CONFIG, tokenizer)
    assert latest_checkpoint(run) is None
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").glob("*"))


def test_refuses_to_overwrite_latest(tmp_path: Path, tokenizer: Path) -> None:
    run = tmp_path / "run"
    ckpt = save_checkpoint(run, 200, {"w": torch.ones(2)}, CONFIG, tokenizer)
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_checkpoint(run, 200, {"w": torch.zeros(2)}, CONFIG, tokenizer)
    assert torch.equal(load_state_dict(ckpt)["w"], torch.ones(2))


def test_simulated_crash_leftovers(tmp_path: Path, tokenizer: Path) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    good = save_checkpoint(run, 200, {"w": torch.ones(2)}, CONFIG, tokenizer)
    # A crash while assembling step 400, and a half-written step dir with no checksums.json.
    tmp = root / ".tmp-step_000400-0123456789ab"
    tmp.mkdir()
    (tmp / "config.yaml").write_text(CONFIG)
    half = root / "step_000600"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x00" * 10)
    # A complete step dir renamed into place just before a crash, never made LATEST.
    orphan = save_checkpoint(tmp_path / "other", 400, {"w": torch.full((2,), 9.0)}, CONFIG,
                             tokenizer)
    orphan.rename(root / "step_000400")

    assert latest_checkpoint(run) == good
    assert load_checkpoint(run).step == 200
    with pytest.raises(CheckpointError, match="step_000600 is missing checksums.json"):
        resolve_checkpoint(half)

    new = save_checkpoint(run, 400, {"w": torch.full((2,), 4.0)}, CONFIG, tokenizer)
    assert latest_checkpoint(run) == new
    assert torch.equal(load_checkpoint(run).state_dict["w"], torch.full((2,), 4.0))
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "step_000200", "step_000400"]


def test_atomic_write_and_sha256(tmp_path: Path) -> None:
    path = tmp_path / "LATEST"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["LATEST"]
    assert sha256_file(path) == hashlib.sha256(b"new\n").hexdigest()


# --------------------------------------------------------------------------------------------
# Real kills
# --------------------------------------------------------------------------------------------

# Saves deterministic checkpoints forever; step k's weights can be recomputed from (seed, k).
_SAVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from sparse_gpt.checkpoint import save_checkpoint

    run, tokenizer, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    print("ready", flush=True)
    step = 0
    while True:
        step += 1
        g = torch.Generator().manual_seed(seed * 100003 + step)
        w = torch.randn(256, 512, generator=g) * (torch.rand(256, 512, generator=g) < 1 / 64)
        sd = {"w": w, "b": torch.randn(512, generator=g)}
        save_checkpoint(run, step, sd, "seed: %d\\n" % seed, tokenizer,
                        train_state={"step": step, "rng": torch.get_rng_state()},
                        extra_files={"meta.json": b"{}"}, keep=2)
""")


def _expected_weights(seed: int, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 100003 + step)
    w = torch.randn(256, 512, generator=g) * (torch.rand(256, 512, generator=g) < 1 / 64)
    return {"w": w, "b": torch.randn(512, generator=g)}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path: Path, tokenizer: Path,
                                                           seed: int) -> None:
    rng = random.Random(seed)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(run), str(tokenizer), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read().decode()
        time.sleep(rng.uniform(0.05, 0.5))
        assert proc.poll() is None, proc.stderr.read().decode()  # still saving when killed
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    if latest_checkpoint(run) is None:
        # Killed before any save finished; a step dir may have been renamed into place just
        # before the kill, but it was never made LATEST, so nothing is loaded from it.
        assert not (run / "checkpoints" / "LATEST").exists()
        next_step, names_before = 1, []
    else:
        loaded = load_checkpoint(run)  # verifies every file
        assert loaded.train_state["step"] == loaded.step
        expected = _expected_weights(seed, loaded.step)
        assert all(_same_bits(loaded.state_dict[k], v) for k, v in expected.items())
        next_step, names_before = loaded.step + 1, [f"step_{loaded.step:06d}"]

    # The next save commits and sweeps whatever the kill left behind. A step dir renamed in but
    # never made LATEST can only be next_step, which this save replaces.
    save_checkpoint(run, next_step, _expected_weights(seed, next_step), CONFIG, tokenizer, keep=2)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["LATEST", *names_before, f"step_{next_step:06d}"]
    assert load_checkpoint(run).step == next_step


# --------------------------------------------------------------------------------------------
# Hostile checkpoints
# --------------------------------------------------------------------------------------------

class _CreatesFileOnLoad:
    """Unpickles as open(path, "w"): what a crafted train_state.pt could do instead (any code)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def resign(ckpt: Path, name: str, data: bytes) -> None:
    """Replace one file of a checkpoint and recompute checksums.json, as an attacker would."""
    (ckpt / name).write_bytes(data)
    manifest = json.loads((ckpt / "checksums.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (ckpt / "checksums.json").write_text(json.dumps(manifest))


def test_a_malicious_train_state_runs_no_code(tmp_path: Path, tokenizer: Path) -> None:
    marker = tmp_path / "pwned"
    ckpt = save_checkpoint(tmp_path / "run", 1, {"w": torch.ones(2)}, CONFIG, tokenizer,
                           train_state={"step": 1, "rng": torch.get_rng_state()})
    import io
    buffer = io.BytesIO()
    torch.save({"step": 1, "optimizer": _CreatesFileOnLoad(marker)}, buffer)
    resign(ckpt, "train_state.pt", buffer.getvalue())
    verify_checkpoint(ckpt)  # the checksums match: they cannot tell a crafted file from a good one
    with pytest.raises(CheckpointError, match=r"train_state.pt was refused: .*\((io|builtins)\.open\)"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="train_state.pt was refused"):
        load_train_state(ckpt)
    assert not marker.exists()
    # Loading only the weights never touches the train state at all.
    assert load_checkpoint(ckpt, with_train_state=False).train_state is None
    assert not marker.exists()


def test_a_train_state_that_cannot_load_without_pickle_is_refused_at_save(tmp_path: Path,
                                                                          tokenizer: Path) -> None:
    import numpy as np
    with pytest.raises(CheckpointError, match=r"train_state\['rng'\] is a ndarray"):
        save_checkpoint(tmp_path / "run", 1, {"w": torch.ones(2)}, CONFIG, tokenizer,
                        train_state={"rng": np.zeros(3)})
    assert latest_checkpoint(tmp_path / "run") is None


def test_a_resigned_config_that_is_not_text_is_a_clean_error(tmp_path: Path, tokenizer: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "run", 1, {"w": torch.ones(2)}, CONFIG, tokenizer)
    resign(ckpt, "config.yaml", b"\xff\xfe\x00binary")
    with pytest.raises(CheckpointError, match="config.yaml is not UTF-8 text"):
        load_checkpoint(ckpt)
