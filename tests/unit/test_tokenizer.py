"""The tokenizer's character bound (issue 14, finding 4): huge texts are refused or cut before any tokenising."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from orchestrator.contracts.errors import InputTooLong
from tests.corpus import sentences
from workers.tokenizer import MAX_CHARS_PER_TOKEN, TextTokenizer, chars_per_token

LIMIT = 256  # MiniLM's own limit


class _Recording:
    """Wraps the ``tokenizers`` object to record the longest string it was asked to encode."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.longest = 0

    def encode(self, text: str, **kwargs: Any) -> Any:
        self.longest = max(self.longest, len(text))
        return self._inner.encode(text, **kwargs)

    def encode_batch(self, texts: Sequence[str], **kwargs: Any) -> Any:
        self.longest = max([self.longest, *(len(text) for text in texts)])
        return self._inner.encode_batch(texts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def recording(tokenizer: TextTokenizer) -> _Recording:
    spy = _Recording(tokenizer._tokenizer)
    tokenizer._tokenizer = spy  # type: ignore[assignment]
    return spy


def test_the_bound_is_the_longest_token_plus_a_space_per_token(minilm_folder: Path) -> None:
    tokenizer = TextTokenizer(minilm_folder, LIMIT)
    assert tokenizer.chars_per_token == len("telecommunications") + 1  # the longest token in MiniLM's vocabulary
    assert tokenizer.max_text_chars == (LIMIT - 2) * 19 == 4826
    assert chars_per_token(["a", "=" * 200]) == MAX_CHARS_PER_TOKEN  # byte-level runs of punctuation are capped
    assert chars_per_token([]) == 2


def test_a_text_at_the_bound_of_real_words_fits(minilm_folder: Path) -> None:
    # The worst case the bound allows for: every token its longest word, each after a space.
    tokenizer = TextTokenizer(minilm_folder, 32)
    words = " telecommunications" * 30
    assert len(words) == tokenizer.max_text_chars
    assert len(tokenizer.encode([words], truncate=False)[0]) == 32


def test_a_huge_text_is_refused_before_it_is_tokenised(minilm_folder: Path) -> None:
    tokenizer = TextTokenizer(minilm_folder, LIMIT)
    spy = recording(tokenizer)
    cjk = "漢字" * 100_000  # one token per character: tokenising all of it took seconds
    with pytest.raises(InputTooLong, match=r"input 1 has 200000 characters; no text over 4826 characters fits"):
        tokenizer.encode(["short", cjk], truncate=False)
    assert spy.longest <= tokenizer.max_text_chars


@pytest.mark.parametrize("direction", ["right", "left"])
def test_truncating_a_huge_text_tokenises_only_the_bound_and_keeps_the_same_tokens(
    minilm_folder: Path, direction: str
) -> None:
    tokenizer = TextTokenizer(minilm_folder, LIMIT)
    text = " ".join(sentences(150, seed=5))  # ~23,000 characters of English
    assert len(text) > 4 * tokenizer.max_text_chars
    whole = tokenizer._tokenizer.encode(text, add_special_tokens=False).ids
    kept = whole[: LIMIT - 2] if direction == "right" else whole[-(LIMIT - 2) :]
    spy = recording(tokenizer)
    ids = tokenizer.encode([text], truncate=True, direction=direction)[0]
    assert ids == [101, *kept, 102]  # what truncating the whole text gives
    assert spy.longest <= tokenizer.max_text_chars


def test_a_huge_cjk_text_is_truncated_from_its_first_characters(minilm_folder: Path) -> None:
    tokenizer = TextTokenizer(minilm_folder, LIMIT)
    spy = recording(tokenizer)
    ids = tokenizer.encode(["漢字" * 650_000], truncate=True)[0]  # 3.9 MB of UTF-8, as in the attack run
    assert len(ids) == LIMIT and spy.longest == tokenizer.max_text_chars


def test_too_many_token_ids_say_how_to_truncate(minilm_folder: Path) -> None:
    """Issue 18: every refusal names the fix a client can send (``truncate`` is accepted on both routes)."""
    tokenizer = TextTokenizer(minilm_folder, 8)
    with pytest.raises(InputTooLong, match=r"input 0 has 9 tokens, .* limit of 8; shorten it or set truncate to true"):
        tokenizer.check_token_ids(list(range(1000, 1009)), 0, truncate=False)
    assert tokenizer.check_token_ids(list(range(1000, 1009)), 0, truncate=True, direction="left") == list(
        range(1001, 1009)
    )
