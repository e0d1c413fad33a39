import pytest

from dmn_data.errors import DataError
from dmn_data.tokens import build_vocab, encode, load_vocab_txt, tokenize


def test_tokenize_words_and_punctuation_no_whitespace_tokens():
    assert tokenize("The man's  RED hat, left.") == ("the", "man", "'", "s", "red", "hat", ",", "left", ".")
    assert tokenize("   ") == ()
    assert all(t.strip() for t in tokenize(" a \t b\n c "))


def test_build_vocab_order_and_min_count():
    vocab = build_vocab([["b", "a", "b"], ["c", "a", "b"]], min_count=2)
    assert vocab == ["<pad>", "<unk>", "b", "a"]
    assert build_vocab([["z", "y"]]) == ["<pad>", "<unk>", "y", "z"]
    with pytest.raises(DataError, match="--min-count"):
        build_vocab([], min_count=0)


def test_encode_unknown_is_1():
    index = {t: i for i, t in enumerate(["<pad>", "<unk>", "dog"])}
    assert encode(["dog", "cat"], index) == [2, 1]


def test_external_vocab(tmp_path):
    p = tmp_path / "vocabulary_Gref.txt"
    p.write_text("<unk>\nthe\n\nman\n<pad>\n")
    assert load_vocab_txt(p) == ["<pad>", "<unk>", "the", "man"]
    p.write_text("a\nb\na\n")
    with pytest.raises(DataError, match="repeated"):
        load_vocab_txt(p)
