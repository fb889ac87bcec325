"""Byte-level BPE tokenizer for Python source, trained with HF `tokenizers`.

The circuit tasks ask the model for one-token answers such as `"` vs `'` or `]` after an inner
list. Plain byte-level BPE happily learns merges like `")` or `],`, which would make those
answers two tokens in many contexts. With `isolate_brackets=True` every run of one quote or bracket
character becomes its own pre-token, so BPE can still learn `))` or `\"\"\"` (a closing `]` always stands
alone) but never glue a quote or bracket to its neighbours. docs/design_data.md has the measured cost and benefit.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"

# OpenAI's tinypython pre-tokenizer pattern: letters with one optional leading symbol, numbers of up
# to 3 digits, symbol runs (with a trailing newline or slash), and whitespace runs that keep the
# indentation of the next line separate from the line break.
TINYPYTHON_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A run of one repeated quote or bracket character. Split out before the tinypython pattern, so a
# quote or bracket can only ever merge with copies of itself. A closing `]` always stands alone:
# whether the BPE learns `]]` depends on the sample it trains on, and the bracket-counting task
# needs `]` to be the next token after an inner list on every tokenizer we train.
BRACKET_PATTERN = r"""'+|"+|\(+|\)+|\[+|\]|\{+|\}+"""


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used (missing, corrupt, or without the end-of-text token)."""


def build_pre_tokenizer(isolate_brackets: bool = True) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer pipeline: [bracket isolation], tinypython split, then byte mapping."""
    steps = []
    if isolate_brackets:
        steps.append(pre_tokenizers.Split(Regex(BRACKET_PATTERN), behavior="isolated"))
    steps.append(pre_tokenizers.Split(Regex(TINYPYTHON_PATTERN), behavior="isolated"))
    # use_regex=False: the splitting is done above; ByteLevel only maps bytes to printable chars.
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048,
                    isolate_brackets: bool = True) -> Tokenizer:
    """Train a byte-level BPE tokenizer of `vocab_size` tokens in total (EOT included, id 0).

    All 256 byte symbols are in the alphabet whatever the texts contain, so any string encodes and
    decodes back exactly. On a small corpus BPE may run out of merges, leaving fewer tokens than
    asked for; use `tok.get_vocab_size()` for the real size.
    """
    n_bytes = len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < n_bytes + 1:
        raise TokenizerError(f"vocab_size={vocab_size} is too small: need at least {n_bytes + 1} "
                             f"({n_bytes} byte symbols + the end-of-text token)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = build_pre_tokenizer(isolate_brackets)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],  # listed first, so EOT gets id 0 regardless of corpus size
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    _treat_specials_as_text(tok)
    return tok


def _treat_specials_as_text(tok: Tokenizer) -> None:
    """Make encode() treat a literal "<|endoftext|>" in source code as plain text.

    Some corpora (e.g. site-packages of ML libraries) contain the EOT string itself; matching it as
    the special token would break the decode(encode(text)) == text round trip and let documents
    forge document boundaries. EOT ids are inserted explicitly by the data pipeline instead.
    """
    tok.encode_special_tokens = True


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write the tokenizer as a single tokenizer.json file (not atomic; see data.py for that)."""
    Path(path).write_text(tok.to_str(), encoding="utf-8")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer.json written by save_tokenizer; raise TokenizerError when unusable."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file not found: {path}")
    try:
        tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as e:  # the Rust side raises a bare Exception on bad JSON
        raise TokenizerError(f"tokenizer file {path} is corrupt or not a tokenizer.json: {e}") from e
    if tok.token_to_id(EOT) is None:
        raise TokenizerError(f"tokenizer file {path} has no {EOT} token; it was not made by "
                             f"sparse_gpt.tokenizer.train_tokenizer")
    _treat_specials_as_text(tok)
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON serialisation (what save_tokenizer writes)."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


def eot_id(tok: Tokenizer) -> int:
    """Id of the end-of-text token."""
    i = tok.token_to_id(EOT)
    if i is None:
        raise TokenizerError(f"tokenizer has no {EOT} token")
    return i


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of `text`, with no special tokens added or recognised."""
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: Iterable[int]) -> str:
    """Text of `ids`; EOT ids come back as the literal "<|endoftext|>"."""
    return tok.decode(list(ids), skip_special_tokens=False)


def single_token_id(tok: Tokenizer, s: str) -> int | None:
    """The id of `s` if it encodes to exactly one token, else None."""
    ids = encode(tok, s)
    return ids[0] if len(ids) == 1 else None


def is_single_token(tok: Tokenizer, s: str) -> bool:
    """Whether `s` encodes to exactly one token."""
    return single_token_id(tok, s) is not None


def token_strings(tok: Tokenizer, s: str) -> list[str]:
    """The pieces `s` is split into, each decoded back to text (partial UTF-8 shows as U+FFFD)."""
    return [decode(tok, [i]) for i in encode(tok, s)]


def describe_split(tok: Tokenizer, s: str) -> str:
    """How `s` is tokenised, for error messages: `'")' -> ['"', ')']`."""
    return f"{s!r} -> {token_strings(tok, s)!r}"
