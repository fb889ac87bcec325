"""Tests for sparse_gpt.tokenizer: round trips, quote/bracket isolation, helpers, save/load."""
from __future__ import annotations

import pytest

from sparse_gpt.config import DataConfig
from sparse_gpt.corpus import collect_corpus
from sparse_gpt.data import tokenizer_training_texts
from sparse_gpt.tokenizer import (EOT, TokenizerError, decode, describe_split, encode, eot_id,
                                  is_single_token, load_tokenizer, save_tokenizer, single_token_id,
                                  token_strings, tokenizer_hash, train_tokenizer)

QUOTES_AND_BRACKETS = set("'\"()[]{}")
VOCAB = 1024


@pytest.fixture(scope="module")
def stdlib():
    return collect_corpus(DataConfig(source="stdlib"))


@pytest.fixture(scope="module")
def train_texts(stdlib):
    return list(tokenizer_training_texts(stdlib, 1_500_000))


@pytest.fixture(scope="module")
def tok(train_texts):
    return train_tokenizer(train_texts, vocab_size=VOCAB, isolate_brackets=True)


@pytest.fixture(scope="module")
def plain_tok(train_texts):
    return train_tokenizer(train_texts, vocab_size=VOCAB, isolate_brackets=False)


def test_vocab_size_and_eot(tok):
    assert tok.get_vocab_size() == VOCAB
    assert eot_id(tok) == 0
    assert tok.id_to_token(0) == EOT
    # A literal EOT string in source code is text, not a document boundary.
    ids = encode(tok, f"s = '{EOT}'")
    assert eot_id(tok) not in ids
    assert decode(tok, ids) == f"s = '{EOT}'"
    assert decode(tok, [eot_id(tok)] + encode(tok, "x")) == EOT + "x"


def test_round_trip_on_real_stdlib_files(tok, stdlib):
    texts = {d.name: stdlib.read(d) for d in stdlib.documents if d.size < 40_000}
    non_ascii = [n for n, t in sorted(texts.items()) if any(ord(ch) > 127 for ch in t)][:4]
    assert non_ascii, "expected some stdlib files with non-ASCII text"
    names = non_ascii + sorted(texts)[:8]
    for name in names:
        assert decode(tok, encode(tok, texts[name])) == texts[name], name


def test_round_trip_on_odd_strings(tok):
    for text in ["", "\r\n\t \x00\x7f", "naïve café ☃ 日本語 🐍", "  \n\n    \n", "'''\"\"\"",
                 "x" * 3000, "0123456789" * 5, "\ufffd\ufeff"]:
        assert decode(tok, encode(tok, text)) == text


def test_no_token_glues_a_quote_or_bracket_to_something_else(tok):
    for i in range(tok.get_vocab_size()):
        s = decode(tok, [i])
        if i != eot_id(tok) and QUOTES_AND_BRACKETS & set(s):
            assert len(set(s)) == 1, f"token {i} = {s!r} mixes a quote/bracket with other characters"


def test_plain_bpe_does_glue_them(plain_tok):
    # The reason for isolation: plain BPE merges quotes and brackets with their neighbours.
    mixed = [decode(plain_tok, [i]) for i in range(plain_tok.get_vocab_size())
             if QUOTES_AND_BRACKETS & set(decode(plain_tok, [i]))
             and len(set(decode(plain_tok, [i]))) > 1]
    assert mixed


def test_quote_answers_are_single_tokens_in_context(tok):
    assert is_single_token(tok, '"') and is_single_token(tok, "'")
    assert not is_single_token(tok, '\'")')
    # Whatever BPE learnt for the words, each quote and bracket stands alone.
    for text, tail in [('print("hi")', ['"', ")"]), ("x = d['k']", ["'", "]"])]:
        pieces = token_strings(tok, text)
        assert pieces[-2:] == tail, pieces
        assert pieces.count(tail[0]) == 2, pieces


def test_bracket_runs_are_learnable_but_closing_square_brackets_stand_alone():
    text = "x = a[b[i]]\ny = f(g(h))\nz = {k: {v}}\ns = \"\"\"doc\"\"\"\n"
    tok = train_tokenizer([text] * 200, vocab_size=300)
    for run in ("))", "}}", '"""'):
        assert is_single_token(tok, run), describe_split(tok, run)
    # bracket_counting needs `]` to be the token after an inner list on every tokenizer
    assert token_strings(tok, "a[b[i]]")[-2:] == ["]", "]"]


def test_single_token_id_and_describe_split(tok):
    i = single_token_id(tok, "'")
    assert i is not None and decode(tok, [i]) == "'"
    assert single_token_id(tok, '")') is None
    assert describe_split(tok, '")') == "'\")' -> ['\"', ')']"
    assert single_token_id(tok, " in") is not None


def test_training_is_deterministic(train_texts, tok):
    again = train_tokenizer(train_texts, vocab_size=VOCAB, isolate_brackets=True)
    assert tokenizer_hash(again) == tokenizer_hash(tok)


def test_save_and_load(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    save_tokenizer(tok, path)
    loaded = load_tokenizer(path)
    assert tokenizer_hash(loaded) == tokenizer_hash(tok)
    assert encode(loaded, f"a{EOT}b") == encode(tok, f"a{EOT}b")  # still plain text after load
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    path.write_text('{"version": "1.0", "model": ')
    with pytest.raises(TokenizerError, match="corrupt"):
        load_tokenizer(path)


def test_vocab_too_small_is_rejected():
    with pytest.raises(TokenizerError, match="too small"):
        train_tokenizer(["x = 1"], vocab_size=200)
