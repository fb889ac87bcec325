"""Tests of sparse_gpt.tasks: the 20 paper tasks, the nonsense control, encoding, metrics, natural
examples and the command line, against the real setting's tokenizer (stdlib, 2048 tokens)."""
from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import sysconfig
import tokenize
from pathlib import Path

import pytest
import tokenizers
import torch

from inprocess import Result, module_main, run_main, script_main
from sparse_gpt.tasks import (
    PAPER_TASKS,
    Example,
    PromptPair,
    PromptTooLongError,
    TaskBatch,
    TaskTokenError,
    UnknownTaskError,
    encode_examples,
    encode_pairs,
    get_task,
    list_tasks,
    logit_diff,
    task_accuracy,
    task_logits,
    task_loss,
)
from sparse_gpt.tasks.templates import SINGLE_TOKEN_NAMES, Side, TemplateTask, code
from sparse_gpt.tokenizer import (
    describe_split,
    encode,
    decode,
    eot_id,
    is_single_token,
    load_tokenizer,
    save_tokenizer,
    single_token_id,
    train_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "sparse_gpt" / "test_tokenizer"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
TOKENIZER_BYTES = 16_000_000  # the real setting: BPE trained on the first 16 MB of the stdlib
BLOCK_SIZE = 128              # the CPU model's context
N_PAIRS = 48


def stdlib_files() -> list[Path]:
    """The stdlib's .py files in sorted order, without installed packages."""
    return sorted(p for p in STDLIB.rglob("*.py")
                  if not {"site-packages", "dist-packages"} & set(p.parts))


def read_texts(files: list[Path], max_bytes: int) -> list[str]:
    texts, total = [], 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text.encode("utf-8"))
        if total >= max_bytes:
            break
    return texts


def cached_tokenizer_path(vocab_size: int, isolate_brackets: bool, max_bytes: int) -> Path:
    """tokenizer.json of a tokenizer trained on the first `max_bytes` of the stdlib, trained once
    and cached on disk under a key of its settings."""
    settings = {"vocab_size": vocab_size, "isolate_brackets": isolate_brackets,
                "max_bytes": max_bytes, "stdlib": str(STDLIB), "tokenizers": tokenizers.__version__}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = CACHE / f"v{vocab_size}-iso{int(isolate_brackets)}-{key}" / "tokenizer.json"
    if not path.exists():
        tok = train_tokenizer(read_texts(stdlib_files(), max_bytes), vocab_size, isolate_brackets)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_tokenizer(tok, tmp)
        tmp.replace(path)  # atomic, so a concurrent run never reads half a file
    return path


@pytest.fixture(scope="module")
def tok_path() -> Path:
    return cached_tokenizer_path(2048, True, TOKENIZER_BYTES)


@pytest.fixture(scope="module")
def tok(tok_path) -> tokenizers.Tokenizer:
    return load_tokenizer(tok_path)


@pytest.fixture(scope="module")
def heldout_texts() -> list[str]:
    """Real source from the end of the sorted stdlib (past the tokenizer's 16 MB)."""
    return read_texts(stdlib_files()[-40:], 600_000)


# ----- registry -----------------------------------------------------------------------------------


def test_registry_lists_the_paper_tasks_then_the_control():
    assert len(PAPER_TASKS) == 20
    assert list_tasks(include_controls=False) == list(PAPER_TASKS)
    assert list_tasks() == list(PAPER_TASKS) + ["nonsense_quote"]
    assert get_task("nonsense_quote").control
    assert not any(get_task(n).control for n in PAPER_TASKS)
    for name in list_tasks():
        task = get_task(name)
        assert task.name == name and task.description
        assert len(task.prune_templates) >= 6 and len(task.heldout_templates) >= 3
        assert not set(task.prune_templates) & set(task.heldout_templates)


def test_unknown_task_names_the_closest_and_lists_all():
    with pytest.raises(UnknownTaskError) as err:
        get_task("bracket_countin")
    assert isinstance(err.value, KeyError)
    msg = str(err.value)
    assert "'bracket_counting'" in msg and "did you mean" in msg
    assert all(name in msg for name in list_tasks())


# ----- every task ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_tasks())
def test_pairs_are_deterministic_and_seeded(name):
    task = get_task(name)
    for split in ("prune", "heldout"):
        first = task.pairs(N_PAIRS, seed=0, split=split)
        assert first == task.pairs(N_PAIRS, seed=0, split=split)
        assert len(first) == N_PAIRS
        assert first != task.pairs(N_PAIRS, seed=1, split=split)
    with pytest.raises(ValueError, match="split"):
        task.pairs(2, seed=0, split="train")


@pytest.mark.parametrize("name", list_tasks())
def test_pairs_are_minimal_pairs_with_single_token_answers(name, tok):
    task = get_task(name)
    for split in ("prune", "heldout"):
        for pair in task.pairs(N_PAIRS, seed=3, split=split):
            assert pair.a.answer == pair.b.alternative and pair.b.answer == pair.a.alternative
            assert pair.a.answer != pair.a.alternative
            assert pair.a.prompt != pair.b.prompt
            for ex in pair.examples():
                if task.answers is not None:
                    assert ex.answer in task.answers
                for answer in (ex.answer, ex.alternative):
                    assert is_single_token(tok, answer), describe_split(tok, answer)


@pytest.mark.parametrize("name", list_tasks())
def test_prune_and_heldout_prompts_are_disjoint(name):
    task = get_task(name)
    prune = {ex.prompt for p in task.pairs(200, seed=0, split="prune") for ex in p.examples()}
    heldout = {ex.prompt for p in task.pairs(200, seed=0, split="heldout") for ex in p.examples()}
    assert not prune & heldout
    assert len(prune) > 150 and len(heldout) > 100  # varied, not a handful of repeats


@pytest.mark.parametrize("name", list_tasks())
def test_encode_pairs_shapes_and_positions(name, tok):
    task = get_task(name)
    for split in ("prune", "heldout"):
        pairs = task.pairs(N_PAIRS, seed=5, split=split)
        batch = encode_pairs(task, pairs, tok, BLOCK_SIZE)
        n = 2 * len(pairs)
        assert batch.tokens.shape[0] == n and batch.tokens.dtype == torch.int64
        for field in (batch.lengths, batch.positions, batch.correct, batch.alternative,
                      batch.pair_ids):
            assert field.shape == (n,)
        assert batch.pair_ids.tolist() == [i // 2 for i in range(n)]
        assert batch.tokens.shape[1] == int(batch.lengths.max()) < 120
        assert torch.equal(batch.positions, batch.lengths - 1)
        assert torch.equal(batch.correct[0::2], batch.alternative[1::2])
        assert torch.equal(batch.correct[1::2], batch.alternative[0::2])
        examples = [ex for p in pairs for ex in p.examples()]
        for i, ex in enumerate(examples):
            ids = encode(tok, ex.prompt)
            length = int(batch.lengths[i])
            assert length == len(ids)
            assert batch.tokens[i, :length].tolist() == ids
            assert int(batch.tokens[i, batch.positions[i]]) == ids[-1]
            assert (batch.tokens[i, length:] == eot_id(tok)).all()
            # The answer really is the next token of the prompt's source text.
            full = encode(tok, ex.prompt + ex.answer + ex.continuation)
            assert full[:length + 1] == ids + [int(batch.correct[i])]
            # On our tokenizer every answer is its own token: the ids are those of the texts.
            assert int(batch.correct[i]) == single_token_id(tok, ex.answer)
            assert int(batch.alternative[i]) == single_token_id(tok, ex.alternative)


def test_answer_names_are_single_tokens(tok):
    for name in SINGLE_TOKEN_NAMES:
        assert is_single_token(tok, " " + name), describe_split(tok, " " + name)


# ----- templates ----------------------------------------------------------------------------------


class _ToyTask(TemplateTask):
    name = "toy"
    description = "toy task for the template machinery"
    answers = (":\n", " in")
    sides = (Side(":\n", {"kw": "while"}), Side(" in", {"kw": "for"}))
    prune_templates = (code("""
        $ind${kw} $var${answer}
        $ind    $var2 = $var
        """),) * 6
    heldout_templates = prune_templates[:3]


def test_template_pairs_differ_only_in_the_side_slots():
    for pair in _ToyTask().pairs(30, seed=0):
        a, b = pair.a, pair.b
        assert a.prompt.replace("while", "for") == b.prompt
        head = a.prompt.splitlines()[-1].split()
        assert head[0] == "while" and head[1] != a.continuation.split()[0].strip()  # $var != $var2
        # An answer ending in a newline takes the template's line break: no blank line after it.
        assert not a.continuation.startswith("\n") and b.continuation.startswith("\n")


# ----- encoding errors ----------------------------------------------------------------------------


def test_split_answer_raises_naming_task_answer_and_split():
    tiny = train_tokenizer(read_texts(stdlib_files()[:3], 50_000), vocab_size=300)
    task = get_task("set_or_string")
    with pytest.raises(TaskTokenError) as err:
        encode_pairs(task, task.pairs(2, seed=0), tiny, BLOCK_SIZE)
    msg = str(err.value)
    assert "set_or_string" in msg and "'.add'" in msg
    assert describe_split(tiny, ".add") in msg


def test_a_merging_tokenizer_asks_for_the_merged_quote_tokens():
    # Without bracket isolation BPE learns merges such as `")`: the quote task then contrasts the
    # tokens a model really sees there, `")` with `')`, `"\n` with `'\n` ...
    merging = load_tokenizer(cached_tokenizer_path(2048, False, 2_000_000))
    task = get_task("single_double_quote")
    pairs = task.pairs(64, seed=0)
    batch = encode_pairs(task, pairs, merging, BLOCK_SIZE)
    assert len(batch) == 2 * len(pairs)
    merged = 0
    for i, ex in enumerate(ex for p in pairs for ex in p.examples()):
        correct, alternative = (decode(merging, [int(t[i])]) for t in (batch.correct, batch.alternative))
        assert correct.startswith(ex.answer) and (ex.answer + ex.continuation).startswith(correct)
        # The alternative is the other prompt's answer token, in the same text: `"` + `]` may be
        # two tokens where `']` is one.
        assert (ex.alternative + ex.continuation).startswith(alternative)
        assert alternative.startswith(ex.alternative) and alternative != correct
        assert batch.tokens[i, :batch.lengths[i]].tolist() == encode(merging, ex.prompt)
        merged += len(correct) > 1
    assert merged > len(batch) // 2


def test_a_task_that_cannot_be_posed_names_its_answers_and_their_split():
    merging = load_tokenizer(cached_tokenizer_path(300, False, 200_000))
    task = get_task("class_init")
    pairs = task.pairs(32, seed=0)
    with pytest.raises(TaskTokenError) as err:
        encode_pairs(task, pairs, merging, BLOCK_SIZE)
    msg = str(err.value)
    assert msg.startswith("task class_init cannot be posed on this tokenizer")
    split = sorted({ex.answer for p in pairs for ex in p.examples()})[0]
    assert describe_split(merging, split) in msg and "->" in msg


def test_encode_examples_skips_or_raises_on_a_boundary_merge(tok):
    task = get_task("for_while")
    good = Example("    for x", " in", ":\n", " items:\n")
    merged = Example("    for x i", "n", " in", " items:\n")  # ` i` + `n` is the token ` in`
    assert is_single_token(tok, "n")
    batch = encode_examples(task, [good, merged, good], tok, BLOCK_SIZE)
    assert len(batch) == 2 and batch.pair_ids.tolist() == [-1, -1]
    with pytest.raises(TaskTokenError, match="merge"):
        encode_examples(task, [merged], tok, BLOCK_SIZE, strict=True)


def test_prompt_longer_than_the_context_raises(tok):
    task = get_task("single_double_quote")
    pair = task.pairs(1, seed=0)[0]
    with pytest.raises(PromptTooLongError, match=r"tokens does not fit .* context of 8 tokens"):
        encode_pairs(task, [pair], tok, block_size=8)


def test_prompt_pair_rejects_unswapped_answers():
    with pytest.raises(ValueError, match="swapped"):
        PromptPair(Example("a", '"', "'"), Example("b", '"', "'"))


# ----- metrics ------------------------------------------------------------------------------------


def _toy_batch() -> TaskBatch:
    lengths = torch.tensor([3, 2, 4, 1])
    return TaskBatch(tokens=torch.zeros(4, 4, dtype=torch.long), lengths=lengths,
                     positions=lengths - 1, correct=torch.tensor([1, 2, 0, 4]),
                     alternative=torch.tensor([2, 1, 4, 0]), pair_ids=torch.tensor([0, 0, 1, 1]))


def test_task_loss_is_the_mean_two_way_cross_entropy():
    batch = _toy_batch()
    logits = torch.randn(4, 4, 5, generator=torch.Generator().manual_seed(0))
    expected = []
    for i in range(4):
        row = logits[i, batch.positions[i]]
        c, a = row[batch.correct[i]].item(), row[batch.alternative[i]].item()
        expected.append(-math.log(math.exp(c) / (math.exp(c) + math.exp(a))))
    loss = task_loss(logits, batch)
    assert loss.item() == pytest.approx(sum(expected) / 4, rel=1e-5)
    # The mean over both prompts of each pair, not the released code's per-pair sum.
    pair_sums = [expected[0] + expected[1], expected[2] + expected[3]]
    assert loss.item() == pytest.approx(sum(pair_sums) / 2 / 2, rel=1e-5)
    # Already-gathered (N, V) logits give the same loss.
    picked = logits[torch.arange(4), batch.positions]
    assert task_loss(picked, batch).item() == pytest.approx(loss.item())
    assert task_logits(picked, batch).shape == (4, 2)


def test_task_loss_is_differentiable_and_two_way_only():
    batch = _toy_batch()
    logits = torch.zeros(4, 4, 5, requires_grad=True)
    loss = task_loss(logits, batch)
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    # Only the correct and alternative logits at the scored positions get a gradient.
    assert (logits.grad != 0).sum().item() == 8


def test_accuracy_and_logit_diff():
    batch = _toy_batch()
    picked = torch.zeros(4, 5)
    picked[0, 1] = 2.0   # correct wins by 2
    picked[1, 1] = 1.0   # alternative wins by 1
    picked[2, 0] = 0.5   # correct wins by 0.5
    # row 3: a tie, which counts as wrong
    assert logit_diff(picked, batch).tolist() == [2.0, -1.0, 0.5, 0.0]
    assert task_accuracy(picked, batch).item() == pytest.approx(0.5)


# ----- the nonsense control -----------------------------------------------------------------------


def _opening_quote(prompt: str) -> str:
    last = max(prompt.rfind('"'), prompt.rfind("'"))
    return prompt[last]


def test_nonsense_answer_is_independent_of_the_opening_quote():
    pairs = get_task("nonsense_quote").pairs(400, seed=0)
    matches = 0
    for pair in pairs:
        assert _opening_quote(pair.a.prompt) == _opening_quote(pair.b.prompt)
        assert "info(" in pair.a.prompt and pair.a.answer == '"'
        assert "debug(" in pair.b.prompt and pair.b.answer == "'"
        matches += _opening_quote(pair.a.prompt) == pair.a.answer
    assert 0.4 < matches / len(pairs) < 0.6


def test_real_quote_task_answer_is_the_opening_quote():
    for pair in get_task("single_double_quote").pairs(100, seed=0):
        for ex in pair.examples():
            assert _opening_quote(ex.prompt) == ex.answer


# ----- natural examples ---------------------------------------------------------------------------


def _occurs(ex: Example, texts: list[str]) -> bool:
    return any(ex.prompt + ex.answer + ex.continuation in t for t in texts)


def test_natural_quote_examples_close_real_strings(tok, heldout_texts):
    task = get_task("single_double_quote")
    examples = task.natural_examples(heldout_texts, 30, seed=0, tokenizer=tok)
    assert len(examples) == 30
    assert examples == task.natural_examples(heldout_texts, 30, seed=0, tokenizer=tok)
    assert sum(ex.answer == '"' for ex in examples) == 15
    for ex in examples:
        assert {ex.answer, ex.alternative} == {'"', "'"}
        assert _occurs(ex, heldout_texts)
        last_line = ex.prompt.rsplit("\n", 1)[-1]
        assert _opening_quote(last_line) == ex.answer
    batch = encode_examples(task, examples, tok, BLOCK_SIZE, strict=True)
    assert len(batch) == 30 and int(batch.lengths.max()) <= BLOCK_SIZE
    assert (batch.pair_ids == -1).all()


def _bracket_depths(prompt: str) -> tuple[int, int]:
    """(brackets open at the end of `prompt`, lowest depth reached on the way) by Python's
    tokenizer, so brackets in strings and comments do not count. Indentation is stripped first: a
    prompt may start at any indentation level."""
    flat = "\n".join(line.lstrip() for line in prompt.split("\n"))
    depth = lowest = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(flat).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
                lowest = min(lowest, depth)
    except tokenize.TokenError:
        pass  # "EOF in multi-line statement": the prompt stops inside brackets
    return depth, lowest


def test_natural_bracket_examples_follow_the_source(tok, heldout_texts):
    task = get_task("bracket_counting")
    examples = task.natural_examples(heldout_texts, 20, seed=0, tokenizer=tok)
    assert len(examples) == 20
    assert sum(ex.answer == "]" for ex in examples) == 10
    for ex in examples:
        assert ex.prompt.endswith("]") and _occurs(ex, heldout_texts)
        assert ex.alternative == ("\n" if ex.answer == "]" else "]")
        # The prompt starts at a statement, so it shows the opening of every bracket it closes.
        depth, lowest = _bracket_depths(ex.prompt)
        assert lowest == 0
        assert depth >= 1 if ex.answer == "]" else depth == 0
    encode_examples(task, examples, tok, BLOCK_SIZE, strict=True)


def _boundary_problem_before(tokenizer, ex: Example) -> str | None:
    """The rule natural examples were mined by before answers became tokenizer-aware: the answer
    is one token of its own and the prompt's tokens plus it start the source text's tokens."""
    answer = single_token_id(tokenizer, ex.answer)
    if answer is None:
        return "split"
    ids = encode(tokenizer, ex.prompt)
    full = encode(tokenizer, ex.prompt + ex.answer + ex.continuation)
    return None if full[:len(ids) + 1] == ids + [answer] else "merge"


@pytest.mark.parametrize("name", ["single_double_quote", "bracket_counting"])
def test_natural_examples_on_our_tokenizer_are_mined_as_before(name, tok, heldout_texts,
                                                               monkeypatch):
    from sparse_gpt.tasks import natural

    task = get_task(name)
    now = task.natural_examples(heldout_texts, 100, seed=0, tokenizer=tok)
    monkeypatch.setattr(natural, "boundary_problem", _boundary_problem_before)
    assert now == task.natural_examples(heldout_texts, 100, seed=0, tokenizer=tok)
    batch = encode_examples(task, now, tok, BLOCK_SIZE, strict=True)
    assert batch.correct.tolist() == [single_token_id(tok, ex.answer) for ex in now]
    assert batch.alternative.tolist() == [single_token_id(tok, ex.alternative) for ex in now]


def test_tasks_without_a_miner_have_no_natural_examples(heldout_texts):
    assert get_task("with_as").natural_examples(heldout_texts, 5, seed=0) == []


# ----- command line -------------------------------------------------------------------------------


def _cli(capsys, *args: str) -> Result:
    """`python -m sparse_gpt.tasks ARGS`, run in-process (tests/inprocess.py)."""
    return run_main(module_main("sparse_gpt.tasks"), args, capsys)


def test_cli_list():
    """Through the real command line (the other CLI tests call its main in-process)."""
    out = subprocess.run([sys.executable, "-m", "sparse_gpt.tasks", "list"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    for name in list_tasks():
        assert name in out.stdout
    assert "[control]" in out.stdout


def test_cli_show_with_tokens(tok_path, capsys):
    out = _cli(capsys, "show", "for_while", "--n", "2", "--split", "heldout", "--tokenizer", str(tok_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("--- pair") == 4
    assert "correct '·in'" in out.stdout and "|" in out.stdout


def test_cli_show_natural_from_a_source_file(capsys):
    source = STDLIB / "json" / "encoder.py"
    out = _cli(capsys, "show", "single_double_quote", "--split", "natural", "--n", "2",
               "--source", str(source))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("--- natural") == 2


def test_cli_scores_the_model_at_each_prompts_last_position(tok):
    from sparse_gpt.tasks import scored_logits

    class EchoModel(torch.nn.Module):
        """Logits that put 1 on the current token: the scored row must be the last prompt token."""

        def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
            if positions is not None:
                idx = idx[torch.arange(len(idx)), positions]
            return torch.nn.functional.one_hot(idx, tok.get_vocab_size()).float()

    task = get_task("for_while")
    batch = encode_pairs(task, task.pairs(5, seed=0), tok, BLOCK_SIZE)
    picked = scored_logits(EchoModel(), batch, chunk=3)  # length-sorted chunks come back in row order
    last = batch.tokens[torch.arange(len(batch)), batch.positions]
    assert torch.equal(picked.argmax(dim=1), last)


def test_cli_unknown_task(capsys):
    out = _cli(capsys, "show", "no_such_task")
    assert out.returncode != 0
    assert "unknown task 'no_such_task'" in out.stderr and "single_double_quote" in out.stderr


# ----- a model in OpenAI's format, whose BPE merges quotes with brackets ------------------------


@pytest.fixture(scope="module")
def openai_dir(tmp_path_factory) -> Path:
    """An OpenAI-format model directory whose data-gym BPE (trained like tinypython's, without
    bracket isolation) has tokens such as `")` and `]\\n`."""
    from openai_writer import (save_openai_model, train_data_gym_tokenizer,
                               write_openai_tokenizer_files)

    from sparse_gpt.config import ModelConfig
    from sparse_gpt.model import GPT

    out = tmp_path_factory.mktemp("openai")
    write_openai_tokenizer_files(train_data_gym_tokenizer(read_texts(stdlib_files(), 1_000_000)),
                                 out / "tinypython")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=2048, block_size=BLOCK_SIZE, n_layer=1, d_model=32, d_head=16,
                      afrac=None, bigram_table=False)
    return save_openai_model(GPT(cfg).eval(), out / "tinypython", out / "model")


@pytest.mark.parametrize("name", ["single_double_quote", "bracket_counting", "bracket_brace",
                                  "indent_for"])
def test_tasks_pose_on_an_openai_model_with_a_merging_tokenizer(name, openai_dir):
    from sparse_gpt import load_model

    _, tok = load_model(openai_dir)
    task = get_task(name)
    for split in ("prune", "heldout"):
        pairs = task.pairs(N_PAIRS, seed=0, split=split)
        batch = encode_pairs(task, pairs, tok, BLOCK_SIZE)
        assert len(batch) > len(pairs)  # most pairs are posable
        assert torch.equal(batch.correct[0::2], batch.alternative[1::2])
        assert (batch.correct != batch.alternative).all()
    tokens = {decode(tok, [int(i)]) for i in batch.correct}
    if name == "single_double_quote":
        assert {'")', "')"} <= {t.rstrip("\n") for t in tokens}  # merged with the bracket
    elif name == "bracket_counting":
        assert tokens == {"]", "]\n"}  # `]` then more vs the line's end, one token earlier
    elif name == "bracket_brace":
        assert '":' in tokens  # the key's closing quote merges with the colon


def test_cli_show_prints_the_answer_tokens_of_an_openai_model(openai_dir, capsys):
    out = _cli(capsys, "show", "single_double_quote", "--n", "2", "--checkpoint", str(openai_dir),
               "--eval-pairs", "16")
    assert out.returncode == 0, out.stderr
    assert "answer tokens (correct vs alternative, per prompt) over 16 of 16 pairs" in out.stdout
    assert "full model on 16 of 16 pairs: two-way accuracy" in out.stdout
    assert "correct '\")" in out.stdout or "correct '\\'')" in out.stdout
    assert "(answer texts '\"' vs \"'\")" in out.stdout or "(answer texts \"'\" vs '\"')" in out.stdout


@pytest.mark.parametrize("name", ["single_double_quote", "bracket_brace"])
def test_intervene_on_a_task_asks_for_the_tasks_answer_tokens(name, openai_dir, capsys):
    """`python -m sparse_gpt.intervene --task` on a merging tokenizer scores each prompt on the answer
    tokens the task's encoding picks there (`")` vs `')`, `":` vs `",`), not on the bare answer texts."""
    from sparse_gpt import load_model

    _, tok = load_model(openai_dir)
    task = get_task(name)
    batch = encode_pairs(task, task.pairs(4, seed=1, split="heldout"), tok, BLOCK_SIZE)
    expected = [(decode(tok, [int(a)]), decode(tok, [int(b)]))
                for a, b in zip(batch.correct, batch.alternative)]
    assert any(len(a) > 1 for a, _ in expected)  # the tokenizer really merges here
    out = run_main(module_main("sparse_gpt.intervene"), ["--checkpoint", str(openai_dir), "--set", "0.attn.v[1]=2",
                                                          "--task", name, "--pairs", "4"], capsys)
    assert out.returncode == 0, out.stderr
    shown = [tuple(ast.literal_eval(t) for t in m)
             for m in re.findall(r"^  P\((.*) vs (.*)\): ", out.stdout, re.M)]
    assert shown == expected
    # each prompt is asked where the task asks it (cut before a merge across the boundary)
    prompts = [ast.literal_eval(m) for m in re.findall(r"^prompt: (.*)$", out.stdout, re.M)]
    assert prompts == [decode(tok, batch.tokens[i, :batch.lengths[i]].tolist())[-70:]
                       for i in range(len(batch))]


def test_a_trained_merging_run_written_in_openai_format_computes_the_same(tmp_path, capsys):
    """A run trained without bracket isolation, written as an OpenAI model directory (ids moved to
    the data-gym layout), gives the same logits for the same text and poses the quote task with
    merged answer tokens: how the README's table on an OpenAI-format model was made."""
    from openai_writer import save_run_as_openai

    from sparse_gpt import load_model

    run = tmp_path / "run"
    proc = run_main(script_main("train.py"), ["--config", "configs/tiny.yaml", "--no-progress", "--out", str(run),
                                              "--steps", "10", "--set", "data.vocab_size=2048",
                                              "--set", "data.isolate_brackets=false", "--set", "model.block_size=128"],
                    capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours, our_tok = load_model(run)
    theirs, their_tok = load_model(save_run_as_openai(run, tmp_path / "openai"))
    text = (STDLIB / "json" / "encoder.py").read_text()[:4000]
    ids = encode(our_tok, text)[:128]
    assert encode(their_tok, text)[:128] == [i - 1 if i else 2047 for i in ids]
    with torch.no_grad():
        a, b = ours(torch.tensor([ids])), theirs(torch.tensor([[i - 1 if i else 2047 for i in ids]]))
    assert torch.equal(a[..., list(range(1, 2048)) + [0]], b)
    task = get_task("single_double_quote")
    batch = encode_pairs(task, task.pairs(16, seed=0), their_tok, BLOCK_SIZE)
    assert any(len(decode(their_tok, [int(i)])) > 1 for i in batch.correct)
