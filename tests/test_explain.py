"""Node explanations (top/bottom-activating contexts) and interventions, on the planted model and a
real trained checkpoint."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inprocess import Result, module_main, run_main
from planted import PlantedQuoteTask, planted_model, planted_tokenizer, pretraining_windows
from sparse_gpt.explain import ExplainSettings, NodeContexts, compute_node_contexts
from sparse_gpt.intervene import format_effects, intervene, node_values
from sparse_gpt.nodes import NodeLayout, ablation_values

ROOT = Path(__file__).resolve().parents[1]
SMALL = ExplainSettings(k=6, n_contexts=3, before=4, after=2)


def all_activations(model, layout, windows) -> torch.Tensor:
    names = [loc.name for loc in layout.locations]
    with torch.no_grad(), model.hooks(record=names) as cache:
        model(windows)
    return torch.cat([cache[n] for n in names], -1).reshape(-1, layout.n_nodes)  # (W*T, N)


def test_top_and_bottom_contexts_match_a_brute_force_search():
    model, windows = planted_model(), pretraining_windows(n=16)
    layout = NodeLayout(model.config)
    rec = compute_node_contexts(model, layout, windows, SMALL)
    acts = all_activations(model, layout, windows)
    torch.testing.assert_close(rec["values"][0], acts.topk(SMALL.k, dim=0).values)
    torch.testing.assert_close(rec["values"][1], (-acts).topk(SMALL.k, dim=0).values.neg())
    # every kept position really has the kept value, and the context shading agrees at its focus
    n = torch.arange(layout.n_nodes)
    for side in (0, 1):
        torch.testing.assert_close(acts[rec["positions"][side], n], rec["values"][side])
        torch.testing.assert_close(rec["contexts"][side, :, :, SMALL.before].float(),
                                   rec["values"][side, :SMALL.n_contexts], atol=2e-3, rtol=2e-3)
    again = compute_node_contexts(model, layout, windows, SMALL)
    assert all(torch.equal(rec[k], again[k]) for k in ("values", "positions"))  # deterministic


def test_the_planted_quote_detector_is_explained_by_double_quotes():
    model, tok, windows = planted_model(), planted_tokenizer(), pretraining_windows(n=16)
    layout = NodeLayout(model.config)
    contexts = NodeContexts(compute_node_contexts(model, layout, windows, SMALL), layout, tok, SMALL)
    ex = contexts.explain("0.mlp.post_act[0]")  # neuron 0 fires on `"` and nothing else
    assert [c.tokens[c.focus] for c in ex.top] == ['"'] * SMALL.n_contexts
    assert ex.top_tokens[0].token == '"' and ex.top_tokens[0].count == SMALL.k
    assert all(c.value == pytest.approx(c.activations[c.focus], abs=2e-3) for c in ex.top)
    assert ex.top[0].value > 0.8 > ex.bottom[0].value
    text = ex.format()
    assert "[[\"]]" in text and "top activations" in text
    with pytest.raises(KeyError, match="no node named"):
        contexts.explain("0.mlp.neuron[0]")
    with pytest.raises(IndexError, match="out of range"):
        contexts.explain("0.mlp.post_act[16]")


def test_interventions_move_the_two_way_probability_the_planted_way():
    model, tok, task = planted_model(), planted_tokenizer(), PlantedQuoteTask()
    pair = task.pairs(1, seed=0)[0]
    prompts = [pair.a.prompt, pair.b.prompt]
    answers = [(" X", " Y"), (" Y", " X")]
    # the head's write into channel 4 carries the answer (+ for X): pin it low and both prompts say Y
    effects = intervene(model, tok, prompts, {"1.attn.resid_delta[4]": -20.0}, answers=answers)
    assert effects[0].p_before > 0.9 and effects[1].p_before > 0.9
    assert effects[0].p_after < 0.05 and effects[1].p_after > 0.95
    assert effects[0].kl > 0.1 and effects[0].top_after[0][0] == "Y"
    # ablating the quote-type value channel sends both prompts to chance
    layout = NodeLayout(model.config)
    zero_values = node_values(layout, ["1.attn.v[0]"], ablation_values("zero", torch.ones(layout.n_nodes)))
    assert zero_values == {"1.attn.v[0]": 0.0}
    zero = intervene(model, tok, prompts, zero_values, answers=answers)
    assert all(abs(e.p_after - 0.5) < 0.05 < abs(e.p_before - 0.5) for e in zero)
    # only at the last position: the answer position's own v does not matter (it attends to the quote)
    last = intervene(model, tok, prompts, {"1.attn.v[0]": 0.0}, answers=answers, at="last")
    assert all(abs(e.p_after - e.p_before) < 0.1 for e in last)
    assert "P(' X' vs ' Y')" in format_effects(effects)
    with pytest.raises(KeyError, match="no node named"):
        intervene(model, tok, prompts, {"1.attn.w[0]": 1.0})
    with pytest.raises(IndexError, match="out of range"):
        intervene(model, tok, prompts, {"1.attn.v[99]": 1.0})
    with pytest.raises(ValueError, match="more than the model's context of 32"):
        intervene(model, tok, [" ".join(["a"] * 40)], {"1.attn.v[0]": 1.0})
    for value in (float("nan"), float("inf"), -float("inf")):  # no activation a model could have
        with pytest.raises(ValueError, match=r"only be set to a finite number, got 1\.attn\.v\[0\] = "):
            intervene(model, tok, prompts, {"1.attn.v[0]": value, "1.attn.v[1]": 1.0})


def run(capsys, module: str, *args) -> Result:
    """`python -m MODULE ARGS`, run in-process (tests/inprocess.py)."""
    return run_main(module_main(module), list(map(str, args)), capsys)


def test_explain_cli_is_cached_deterministic_and_names_bad_nodes(tiny_checkpoint, capsys):
    first = run(capsys, "sparse_gpt.explain", "--checkpoint", tiny_checkpoint, "0.mlp.post_act[3]", "1.attn.q[2]")
    assert first.returncode == 0, first.stderr
    assert "computing top-activating contexts" in first.stderr
    assert first.stdout.count("top activations") == 2 and "tokens at the top 32 positions" in first.stdout
    assert list(tiny_checkpoint.glob("checkpoints/step_*/node_contexts.safetensors"))
    # the second call is a new process, as a user's would be: nothing but the cache carries over
    second = subprocess.run([sys.executable, "-m", "sparse_gpt.explain", "--checkpoint", str(tiny_checkpoint),
                             "0.mlp.post_act[3]", "1.attn.q[2]"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0 and "computing" not in second.stderr  # read from the cache
    assert second.stdout == first.stdout
    bad = run(capsys, "sparse_gpt.explain", "--checkpoint", tiny_checkpoint, "0.mlp.post_act[9999]")
    assert bad.returncode == 2 and "out of range (0.mlp.post_act has 128 nodes)" in bad.stderr
    bad = run(capsys, "sparse_gpt.explain", "--checkpoint", tiny_checkpoint, "mlp.post_act[1]")
    assert bad.returncode == 2 and "no node named" in bad.stderr


def test_intervene_cli(tiny_checkpoint, capsys):
    ok = run(capsys, "sparse_gpt.intervene", "--checkpoint", tiny_checkpoint, "--ablate", "1.mlp.post_act[5]",
             "--set", "0.attn.v[1]=3", "--prompt", "x = 'abc", "--answers", "'", '"')
    assert ok.returncode == 0, ok.stderr
    assert "KL(before || after)" in ok.stdout and "P(\"'\" vs '\"')" in ok.stdout
    long = run(capsys, "sparse_gpt.intervene", "--checkpoint", tiny_checkpoint, "--ablate", "1.mlp.post_act[5]",
               "--prompt", "x = 1\n" * 100)
    assert long.returncode == 2 and "more than the model's context of 64" in long.stderr
    bad = run(capsys, "sparse_gpt.intervene", "--checkpoint", tiny_checkpoint, "--set", "0.attn.v[1]=high",
              "--prompt", "x")
    assert bad.returncode == 2 and "expected NODE=VALUE" in bad.stderr
