"""Tokenisation and the vocabulary (``vocab.json``: tokens in id order, ``<pad>`` = 0, ``<unk>`` = 1)."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from .errors import DataError
from .keys import PAD, UNK, UNK_ID

# A word (letters/digits/underscore) or one punctuation character. Whitespace is never a token:
# the original DMN tokenizer emitted every space as <unk>, which we deliberately do not copy.
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> tuple[str, ...]:
    """Lower-case ``text`` and split it into words and punctuation marks."""
    return tuple(_TOKEN_RE.findall(text.lower()))


def is_visible_token(token: str) -> bool:
    """False for a token that is blank or made only of invisible characters (spaces, zero-width and
    other format/control code points): such a token from a refs file must not get a vocabulary id."""
    return any(not (ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Mn")) for ch in token)


def build_vocab(token_lists: Iterable[Iterable[str]], min_count: int = 1) -> list[str]:
    """Tokens seen at least ``min_count`` times, most frequent first (ties alphabetical), after
    ``<pad>`` and ``<unk>``."""
    if min_count < 1:
        raise DataError(f"--min-count must be >= 1, got {min_count}")
    counts = Counter(tok for toks in token_lists for tok in toks)
    counts.pop(PAD, None)
    counts.pop(UNK, None)
    kept = sorted((t for t, c in counts.items() if c >= min_count and is_visible_token(t)), key=lambda t: (-counts[t], t))
    return [PAD, UNK, *kept]


def load_vocab_txt(path: Path) -> list[str]:
    """An external vocabulary, one token per line in id order (e.g. the original DMN
    ``vocabulary_Gref.txt``). ``<pad>``/``<unk>`` are moved to ids 0/1 (added when absent);
    blank lines are ignored; a repeated token is an error."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"--vocab {path}: cannot read ({err})") from None
    tokens = [ln.strip() for ln in lines if ln.strip() and ln.strip() not in (PAD, UNK)]
    dupes = [t for t, c in Counter(tokens).items() if c > 1]
    if dupes:
        raise DataError(f"--vocab {path}: repeated tokens {dupes[:5]}")
    if not tokens:
        raise DataError(f"--vocab {path}: holds no tokens")
    return [PAD, UNK, *tokens]


def encode(tokens: Iterable[str], index: dict[str, int]) -> list[int]:
    return [index.get(t, UNK_ID) for t in tokens]


def vocab_bytes(vocab: list[str]) -> bytes:
    """The exact bytes of ``vocab.json`` (its sha256 identifies the vocabulary)."""
    return (json.dumps(vocab, ensure_ascii=False) + "\n").encode("utf-8")


def valid_token_ids(ids: object, vocab_size: int) -> bool:
    """True for a non-empty list of integer ids in ``[1, vocab_size)`` (0 is padding): an id past
    the vocabulary would index outside the embedding table."""
    return (isinstance(ids, list) and len(ids) > 0
            and all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i < vocab_size for i in ids))
