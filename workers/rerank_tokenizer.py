"""Tokenisation of (query, document) pairs for a cross-encoder, with the model folder's fast tokenizer.

Gives the ids a Hugging Face tokenizer gives for ``tokenizer(queries, documents, truncation="longest_first",
max_length=limit)`` (what sentence-transformers' ``CrossEncoder`` runs), with their token type ids, but encodes the
query once per request instead of once per document, and truncates without the tokenizer's own truncation: that one
also builds every overflowing piece of both texts and all their combinations (60 ms for one pair of a 9,000-token
document at a 512 limit, measured), work a reranker throws away.

The layout of a pair (``[CLS] q [SEP] d [SEP]`` and the type ids 0...0 1...1 for BERT; ``<s> q </s></s> d </s>`` for
RoBERTa-family models) is read once from the tokenizer's own post-processor, as ``workers/tokenizer.py`` reads it for
single texts. ``longest_first`` truncation follows the ``tokenizers`` library's: tokens are taken from the longer text
until both fit, or each keeps half the budget when even the shorter is too long, on the requested side.

Texts are bounded in characters before tokenising, as single texts are (see ``workers/tokenizer.py``): a text over
``max_text_chars`` is refused at once, or cut to that many characters on the truncation side. One difference from
tokenising everything remains: when the query *and* a document are both over the bound, which of the two keeps the
odd token of an odd budget may differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from orchestrator.contracts.errors import InputTooLong, ValidationFailed
from workers.tokenizer import chars_per_token


class PairIds(list[int]):
    """The token ids of one pair (a row the batcher sorts and budgets by its length like a text's ids), carrying the
    pair's token type ids. A plain id list reaching the backend (the calibration's copies) reads as all type 0."""

    __slots__ = ("type_ids",)

    def __init__(self, ids: Iterable[int], type_ids: Iterable[int]) -> None:
        super().__init__(ids)
        self.type_ids = list(type_ids)


class _Layout:
    """The special tokens (and type ids) a post-processor puts around and between the two texts of a pair."""

    def __init__(self, tokenizer: object) -> None:
        probe = tokenizer.encode("a", "a", add_special_tokens=True)  # type: ignore[attr-defined]
        ids, types, sequence = probe.ids, probe.type_ids, probe.sequence_ids
        first = [i for i, s in enumerate(sequence) if s == 0]
        second = [i for i, s in enumerate(sequence) if s == 1]
        if not first or not second:
            raise ValueError("the tokenizer's post-processor does not encode text pairs")
        self.prefix = ids[: first[0]]
        self.middle = ids[first[-1] + 1 : second[0]]
        self.suffix = ids[second[-1] + 1 :]
        self.prefix_types = types[: first[0]]
        self.middle_types = types[first[-1] + 1 : second[0]]
        self.suffix_types = types[second[-1] + 1 :]
        self.first_type = types[first[0]]
        self.second_type = types[second[0]]

    @property
    def special_tokens(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    def join(self, query: Sequence[int], document: Sequence[int]) -> PairIds:
        return PairIds(
            [*self.prefix, *query, *self.middle, *document, *self.suffix],
            [
                *self.prefix_types,
                *[self.first_type] * len(query),
                *self.middle_types,
                *[self.second_type] * len(document),
                *self.suffix_types,
            ],
        )


def longest_first(first: int, second: int, budget: int) -> tuple[int, int]:
    """How many tokens each text keeps under ``budget`` (``tokenizers``' LongestFirst strategy, for a pair)."""
    if first + second <= budget:
        return first, second
    shorter, longer = sorted((first, second))
    longer = shorter if shorter > budget else max(shorter, budget - shorter)
    if shorter + longer > budget:
        shorter = budget // 2
        longer = shorter + budget % 2
    return (longer, shorter) if first > second else (shorter, longer)


def _cut(ids: list[int], keep: int, direction: str) -> list[int]:
    if keep >= len(ids):
        return ids
    return ids[:keep] if direction == "right" else ids[len(ids) - keep :]


class PairTokenizer:
    """Turns a query and its documents into pair rows of at most ``max_input_tokens`` tokens, special ones included."""

    def __init__(self, folder: Path, max_input_tokens: int) -> None:
        """Load ``folder/tokenizer.json``; raises FileNotFoundError without one, ValueError when it encodes no pairs
        or the limit leaves no room for text."""
        from workers.tokenizer import load_fast_tokenizer

        self._tokenizer = load_fast_tokenizer(folder)
        self._layout = _Layout(self._tokenizer)
        self.max_input_tokens = max_input_tokens
        self.budget = max_input_tokens - self._layout.special_tokens  # for the two texts together
        if self.budget < 2:
            raise ValueError(f"a limit of {max_input_tokens} tokens leaves no room for a query and a document")
        self.chars_per_token = chars_per_token(self._tokenizer.get_vocab(with_added_tokens=True))
        self.max_text_chars = self.budget * self.chars_per_token

    @property
    def special_tokens(self) -> int:
        """Special tokens added to every pair."""
        return self._layout.special_tokens

    def encode_pairs(
        self, query: str, documents: Sequence[str], truncate: bool, direction: str = "right"
    ) -> list[PairIds]:
        """One row per document: ``query`` and the document with the model's special tokens and type ids.

        A pair over the limit is truncated ``longest_first`` on ``direction`` ('right' keeps the starts) when
        ``truncate`` is true; otherwise InputTooLong names the first document whose pair is too long. A text over
        ``max_text_chars`` is refused (or cut to them) before anything is tokenised. Runs the tokenizer's
        ``encode_batch``, which releases the GIL, so a caller may run this in a worker thread.
        """
        if direction not in ("right", "left"):
            raise ValidationFailed(f"truncation_direction must be 'right' or 'left', got {direction!r}")
        query, *documents = self._bounded([query, *documents], truncate, direction)
        encoded = self._tokenizer.encode_batch([query, *documents], add_special_tokens=False)
        query_ids, document_ids = encoded[0].ids, [e.ids for e in encoded[1:]]
        rows = []
        for index, ids in enumerate(document_ids):
            if len(query_ids) + len(ids) > self.budget:
                if not truncate:
                    raise InputTooLong(
                        f"the query and document {index} have {len(query_ids) + len(ids) + self.special_tokens} "
                        f"tokens together, more than the model's limit of {self.max_input_tokens}; shorten them or "
                        "set truncate to true"
                    )
                keep_query, keep_document = longest_first(len(query_ids), len(ids), self.budget)
                rows.append(
                    self._layout.join(_cut(query_ids, keep_query, direction), _cut(ids, keep_document, direction))
                )
            else:
                rows.append(self._layout.join(query_ids, ids))
        return rows

    def _bounded(self, texts: list[str], truncate: bool, direction: str) -> list[str]:
        bound = self.max_text_chars
        if all(len(text) <= bound for text in texts):
            return texts
        if not truncate:
            index, text = next((i, t) for i, t in enumerate(texts) if len(t) > bound)
            which = "the query" if index == 0 else f"document {index - 1}"
            raise InputTooLong(
                f"{which} has {len(text)} characters; no text over {bound} characters fits the model's limit of "
                f"{self.max_input_tokens} tokens for a pair; shorten it or set truncate to true"
            )
        return [
            text if len(text) <= bound else text[:bound] if direction == "right" else text[-bound:] for text in texts
        ]
