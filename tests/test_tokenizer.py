"""Tokenizers are lossless for any Unicode string and load from tokenizer.json without torch."""
import subprocess
import sys

import pytest
from conftest import SONNETS
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from training.tokenizer import EOS, build_tokenizer, decode, encode, encode_documents, eos_id

TEXT = SONNETS.read_text()


@pytest.fixture(scope="module", params=["char", "bpe"])
def tok(request, tmp_path_factory):
    built = build_tokenizer(request.param, [TEXT], vocab_size=400)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    built.save(str(path))
    return Tokenizer.from_file(str(path))  # test what the server will load


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_any_unicode(tok, s):
    assert decode(tok, encode(tok, s)) == s


@pytest.mark.parametrize("s", ["", "Shall I compare thee", "naïve café — 日本語 🤖", "\x00\r\n\t  x  ",
                               "<0x41>", EOS + "after"])
def test_roundtrip_examples(tok, s):
    assert decode(tok, encode(tok, s)) == s


def test_char_tokenizer_is_one_token_per_known_character():
    tok = build_tokenizer("char", [TEXT])
    assert len(encode(tok, "Shall I")) == 7
    # unseen 'é' (2 UTF-8 bytes) falls back to two byte tokens instead of failing
    assert len(encode(tok, "é")) == 2
    assert tok.get_vocab_size() == len(set(TEXT)) + 256 + 1


def test_bpe_merges_frequent_pieces():
    tok = build_tokenizer("bpe", [TEXT], vocab_size=400)
    assert tok.get_vocab_size() <= 400
    assert len(encode(tok, "summer's day")) < len("summer's day")


def test_bpe_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab-size"):
        build_tokenizer("bpe", [TEXT], vocab_size=100)


def test_encode_documents_separates_with_eos():
    tok = build_tokenizer("char", ["ab\ncd", "ef"])
    ids = encode_documents(tok, ["ab\ncd", "ef"])
    eos = eos_id(tok)
    assert list(ids).count(eos) == 2 and ids[-1] == eos
    assert decode(tok, ids) == f"ab\ncd{EOS}ef{EOS}"


def test_char_lookup_encodes_as_the_tokenizer_does(tok):
    """encode_documents' table lookup (char) gives the tokenizer's own ids, byte fallback included."""
    docs = [TEXT[:3000], "naïve café — 日本語 🤖\r\n", "", "\x00 <0x41> x"]
    expected = []
    for doc in docs:
        expected += encode(tok, doc) + [eos_id(tok)]
    assert encode_documents(tok, docs).tolist() == expected


def test_tokenizer_file_loads_without_torch(tmp_path):
    path = tmp_path / "tokenizer.json"
    build_tokenizer("char", [TEXT]).save(str(path))
    code = ("import sys; sys.modules['torch'] = None\n"
            "from tokenizers import Tokenizer\n"
            f"t = Tokenizer.from_file({str(path)!r})\n"
            "print(t.decode(t.encode('Love é').ids))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Love é"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_char_counts_spell_the_text(kind):
    """char_counts(tok)[ids].sum() is the text's length in characters: byte fallback and
    byte-level tokens count a character once (at its first byte), EOS none."""
    from training.tokenizer import char_counts
    tok = build_tokenizer(kind, [TEXT[:1500]], vocab_size=300)
    docs = [TEXT[1500:], "naïve café — 日本語 🤖\n" * 3]
    ids = encode_documents(tok, docs)
    assert char_counts(tok)[ids].sum() == sum(len(d) for d in docs)
