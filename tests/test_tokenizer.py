"""Tokenizers: char and word, encoding, detokenizing, round trips, <unk> and <eos>."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmgen.errors import LstmgenError
from lstmgen.tokenizer import EOS, UNK, Tokenizer, split_words

from .conftest import corpus_path


def test_word_split_classic_tv_script_line():
    assert split_words("Moe_Szyslak: Heck no-- that's true.") == ["moe_szyslak:", "heck", "no", "--", "that's", "true", "."]
    assert split_words('He said "hi" (loudly)!\nOk') == ["he", "said", '"', "hi", '"', "(", "loudly", ")", "!", "\n", "ok"]


def test_word_detokenize_reattaches_punctuation_and_restores_lines():
    tok = Tokenizer.build("word", ["moe_szyslak: heck no-- that's true.\nhomer_simpson: (sighs) \"beer\", please!"],
                          records=False)
    text = 'moe_szyslak: heck no-- that\'s true.\nhomer_simpson: (sighs) "beer", please!'
    assert tok.decode(tok.encode(text)) == text


def test_word_round_trip_on_real_script():
    lines = corpus_path("moes_tavern_lines.txt").read_text().split("\n")[:400]
    text = "\n".join(lines)
    tok = Tokenizer.build("word", [text], records=False)
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    # ids -> text -> ids is exact: detokenizing loses nothing the model sees
    assert tok.encode(tok.decode(ids)) == ids


def test_word_min_count_maps_rare_words_to_unk():
    tok = Tokenizer.build("word", ["a a a b b c"], records=False, min_count=2)
    assert "c" not in tok.index and UNK in tok.index
    assert tok.encode("a c zebra") == [tok.index["a"], tok.unk_id, tok.unk_id]


def test_char_round_trip_and_missing_characters_named():
    tok = Tokenizer.build("char", ["hello world\n"], records=False)
    assert tok.decode(tok.encode("hello\nworld")) == "hello\nworld"
    with pytest.raises(LstmgenError, match="'Z'"):
        tok.encode("Zed")


def test_records_tokenizer_has_eos_that_decodes_to_nothing():
    tok = Tokenizer.build("char", ["emma", "ava"], records=True)
    assert tok.tokens[0] == EOS and tok.eos_id == 0
    assert tok.decode([0, *tok.encode("ava"), 0]) == "ava"


def test_to_dict_round_trip_and_malformed_dicts():
    tok = Tokenizer.build("word", ["x y z"], records=True)
    assert Tokenizer.from_dict(tok.to_dict()).tokens == tok.tokens
    with pytest.raises(LstmgenError):
        Tokenizer.from_dict({"level": "char"})
    with pytest.raises(LstmgenError):
        Tokenizer.from_dict({**tok.to_dict(), "eos_id": 999})
    with pytest.raises(LstmgenError):
        Tokenizer.from_dict({**tok.to_dict(), "tokens": ["a", "a"]})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_char_round_trip_arbitrary_text(text):
    tok = Tokenizer.build("char", [text or "x"], records=False)
    assert tok.decode(tok.encode(text)) == text


_WORDS = st.sampled_from(["moe:", "beer", "no", "that's", "ice-pick", ".", ",", "!", "?", ";", '"', "(", ")", "--",
                          "\n", "-", "a", "<unk>"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, max_size=60))
def test_word_tokens_survive_detokenize_then_tokenize(words):
    tok = Tokenizer.build("word", [" ".join(w for w in words if w != "<unk>") or "x"], records=False)
    ids = tok.encode(" ".join(words))
    assert tok.encode(tok.decode(ids)) == ids
