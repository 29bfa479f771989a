"""Pair tokenisation against the Hugging Face tokenizer that CrossEncoder calls, truncation included."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from orchestrator.contracts.errors import InputTooLong
from tests.tiny_models import WORDS, build_tiny_cross_encoder
from workers.rerank_tokenizer import PairIds, PairTokenizer, longest_first


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


@pytest.mark.parametrize("direction", ["right", "left"])
def test_ids_and_type_ids_equal_the_hf_tokenizer_with_longest_first(folder: Path, direction: str) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)
    hf.truncation_side = direction
    pairs = PairTokenizer(folder, 40)
    rng = random.Random(0)
    vocabulary = [*WORDS, "unknownword"]
    for _ in range(150):  # lengths on both sides of the limit, for either text or both
        query = " ".join(rng.choices(vocabulary, k=rng.randint(0, 60)))
        documents = [" ".join(rng.choices(vocabulary, k=rng.randint(0, 60))) for _ in range(3)]
        want = hf([query] * 3, documents, truncation="longest_first", max_length=40)
        rows = pairs.encode_pairs(query, documents, truncate=True, direction=direction)
        for row, ids, type_ids in zip(rows, want["input_ids"], want["token_type_ids"], strict=True):
            assert isinstance(row, PairIds)
            assert (list(row), row.type_ids) == (ids, type_ids)


def test_longest_first_takes_from_the_longer_text_then_halves() -> None:
    assert longest_first(3, 4, 10) == (3, 4)  # fits
    assert longest_first(3, 20, 10) == (3, 7)  # the longer gives way
    assert longest_first(20, 3, 10) == (7, 3)
    assert longest_first(8, 20, 11) == (5, 6)  # both too long: halves, the odd token to the longer
    assert longest_first(20, 8, 11) == (6, 5)


def test_the_layout_is_read_from_the_post_processor(folder: Path) -> None:
    pairs = PairTokenizer(folder, 40)
    (row,) = pairs.encode_pairs("gpu slice", ["the cat"], truncate=False)
    cls, sep = 2, 3  # [PAD] [UNK] [CLS] [SEP] [MASK] ...
    assert row[0] == cls and row[3] == sep and row[-1] == sep and len(row) == 7
    assert row.type_ids == [0, 0, 0, 0, 1, 1, 1]
    assert pairs.special_tokens == 3 and pairs.budget == 37


def test_too_long_pairs_are_refused_naming_the_document(folder: Path) -> None:
    pairs = PairTokenizer(folder, 40)
    long_text = " ".join(["gpu"] * 50)
    with pytest.raises(InputTooLong, match="the query and document 1 have 54 tokens together"):
        pairs.encode_pairs("what", ["gpu", long_text], truncate=False)
    # Over the character bound: refused before tokenising, or cut first when truncating (same tokens kept).
    huge = "gpu " * pairs.max_text_chars
    with pytest.raises(InputTooLong, match="document 0 has .* characters"):
        pairs.encode_pairs("what", [huge], truncate=False)
    with pytest.raises(InputTooLong, match="the query has"):
        pairs.encode_pairs(huge, ["gpu"], truncate=False)
    assert pairs.encode_pairs("what", [huge], truncate=True) == pairs.encode_pairs("what", [long_text], truncate=True)


def test_rows_carry_their_type_ids_to_the_backend_and_plain_rows_read_as_one_segment() -> None:
    """The calibration times copies of a row as plain id lists: they are scored as one segment, not refused."""
    from workers.backends.cross_encoder import type_id_batch

    rows = [PairIds([2, 9, 3, 8, 3], [0, 0, 0, 1, 1]), [2, 9, 3], PairIds([2, 3, 3], [0, 0, 1])[:2]]
    assert type_id_batch(rows, 5).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
