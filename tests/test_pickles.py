import pickle

import pytest

from dmn_data.errors import DataError
from dmn_data.pickles import load_plain_pickle
from refer_fixtures import FIXTURE, py2_pickle


def test_python2_pickle_of_plain_data(tmp_path):
    obj = [{"ref_id": 1, "split": "train", "sentences": [{"raw": "the man", "tokens": ["the", "man"]}], "x": 1.5, "n": None}]
    p = tmp_path / "refs.p"
    p.write_bytes(py2_pickle(obj))
    assert load_plain_pickle(p) == obj


def test_latin1_fallback(tmp_path):
    p = tmp_path / "refs.p"
    p.write_bytes(py2_pickle([{"raw": "café"}], str_encoding="latin-1"))
    assert load_plain_pickle(p) == [{"raw": "café"}]


def test_utf8_python2_strings(tmp_path):
    p = tmp_path / "refs.p"
    p.write_bytes(py2_pickle([{"raw": "naïve"}], str_encoding="utf-8"))
    assert load_plain_pickle(p) == [{"raw": "naïve"}]


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_code(tmp_path, capsys):
    p = tmp_path / "refs.p"
    p.write_bytes(pickle.dumps([_Evil()], protocol=2))
    with pytest.raises(DataError, match="only plain containers"):
        load_plain_pickle(p)
    assert "pwned" not in capsys.readouterr().out


def test_garbage_is_a_data_error(tmp_path):
    p = tmp_path / "refs.p"
    p.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="not a readable refs pickle"):
        load_plain_pickle(p)


def test_real_fixture_loads():
    refs = load_plain_pickle(FIXTURE / "refs(umd).p")
    assert len(refs) == 15 and {r["split"] for r in refs} == {"train", "val", "test"}
