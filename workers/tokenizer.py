"""Tokenisation with the model folder's fast tokenizer (``tokenizer.json``), prompts and truncation under our control.

Kept apart from the model so that the HTTP layer can count tokens and refuse too-long inputs before anything is
queued. Only the ``tokenizers`` package is needed (no torch, no transformers).

The special tokens the model expects around a single text (``[CLS] ... [SEP]``, ``<s> ... </s>``,
``... <|endoftext|>``) are read once from the tokenizer's own post-processor; texts are then encoded without them,
truncated on the requested side (never cutting into the prompt), and wrapped.

Texts are bounded in characters before any tokenising, because tokenising is the expensive part of refusing a huge
text (3.6 s for 1.3 M CJK characters with MiniLM's tokenizer, one token per character): a text longer than
``max_text_chars`` is refused at once, or cut to that many characters first when truncation is asked for. The bound is
``(max_input_tokens - special tokens) * chars_per_token``, where ``chars_per_token`` is the most characters one token
can stand for: the longest token string in the vocabulary plus the whitespace before it (which BERT-style
pre-tokenisers drop), capped at ``MAX_CHARS_PER_TOKEN``. For MiniLM that is 19 (``telecommunications`` + a space),
so its 256-token limit allows 4,826 characters, where a full 256 tokens of English are about 1,350
(5.3 characters per token on the test corpus).

What the bound does not cover: characters a tokenizer throws away (runs of whitespace in BERT-style tokenizers,
combining accents it strips), and the freak long tokens of some byte-level vocabularies (runs of ``=`` or spaces)
past the cap. A text made mostly of those may be refused as too long although its tokens would fit; such a client
can send it with truncation, which then keeps the first (or last) ``max_text_chars`` characters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.contracts.errors import InputTooLong, ValidationFailed

if TYPE_CHECKING:
    from tokenizers import Tokenizer

_PROBE_TEXT = "a"

# The cap on characters per token. The longest word tokens of real vocabularies are 16-20 characters (BERT's and
# MiniLM's: "telecommunications", 18); byte-level BPE vocabularies also hold long runs of punctuation or spaces, which
# would make the bound useless for a model with a long limit (a 32k-token limit times 100 characters is more than a
# whole 4 MB request). Real text averages 3-6 characters per token, so 32 still leaves a wide margin.
MAX_CHARS_PER_TOKEN = 32


def chars_per_token(vocabulary: Iterable[str]) -> int:
    """The most characters one token can cover: its longest token string plus one whitespace, capped.

    A token string over-counts (WordPiece's ``##`` prefix, byte-level BPE's one symbol per byte), which only makes the
    bound more generous.
    """
    longest = max((len(token) for token in vocabulary), default=1)
    return min(longest + 1, MAX_CHARS_PER_TOKEN)


def load_fast_tokenizer(folder: Path) -> Tokenizer:
    """``folder/tokenizer.json`` with truncation and padding off (both are decided here, per text); raises
    FileNotFoundError without one."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json (a fast tokenizer is required)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class TextTokenizer:
    """Turns texts into token ids including the model's special tokens, at most ``max_input_tokens`` long."""

    def __init__(self, folder: Path, max_input_tokens: int, ensure_last_token: int | None = None) -> None:
        """Load ``folder/tokenizer.json``.

        ``ensure_last_token``: a token every sequence must end with (last-token pooling pools the end-of-text
        token; some tokenizers do not append it, and then it is appended here).
        """
        self._tokenizer = load_fast_tokenizer(folder)
        self.max_input_tokens = max_input_tokens
        self._prefix, self._suffix = self._special_wrapping()
        if ensure_last_token is not None and (self._suffix or [None])[-1] != ensure_last_token:
            self._suffix = [*self._suffix, ensure_last_token]
        # Added tokens count: they are matched in the text itself (a user may type "<|endoftext|>").
        self.chars_per_token = chars_per_token(self._tokenizer.get_vocab(with_added_tokens=True))
        self.max_text_chars = max(self.max_input_tokens - self.special_tokens, 1) * self.chars_per_token

    def _special_wrapping(self) -> tuple[list[int], list[int]]:
        """The special ids the post-processor puts before and after one text."""
        wrapped = self._tokenizer.encode(_PROBE_TEXT, add_special_tokens=True).ids
        content = self._tokenizer.encode(_PROBE_TEXT, add_special_tokens=False).ids
        for start in range(len(wrapped) - len(content) + 1):
            if wrapped[start : start + len(content)] == content:
                return wrapped[:start], wrapped[start + len(content) :]
        return [], []

    @property
    def special_tokens(self) -> int:
        """Special tokens added around every text."""
        return len(self._prefix) + len(self._suffix)

    def encode(
        self, texts: Sequence[str], truncate: bool, direction: str = "right", prompt: str = ""
    ) -> list[list[int]]:
        """Token ids per text, special tokens included.

        ``prompt`` goes before each text (Qwen3-Embedding: ``"Instruct: ...\\nQuery:"``); it counts toward the
        limit and truncation never cuts into it. A text too long for the limit is cut on ``direction`` ('right'
        keeps the start) when ``truncate`` is true; otherwise InputTooLong names the first offending input. A text
        over ``max_text_chars`` characters is refused (or cut to them) before anything is tokenised.

        Texts go through the tokenizer's ``encode_batch``, which releases the GIL (its ``encode`` does not), so a
        caller may run this in a worker thread without stalling its event loop.
        """
        texts = self._bounded(texts, truncate, direction)
        prompt_ids = self._tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
        limit = self.max_input_tokens - self.special_tokens
        if len(prompt_ids) >= limit:
            raise ValidationFailed(
                f"the prompt alone has {len(prompt_ids)} tokens, the model's limit is {self.max_input_tokens}"
            )
        # Prompt and text are encoded as one string, as sentence-transformers does, so a token may span the seam.
        joined = [e.ids for e in self._tokenizer.encode_batch([prompt + t for t in texts], add_special_tokens=False)]
        out = []
        for index, ids in enumerate(joined):
            if len(ids) > limit:
                if not truncate:
                    raise InputTooLong(
                        f"input {index} has {len(ids) + self.special_tokens} tokens, more than the model's limit of "
                        f"{self.max_input_tokens}; shorten it or set truncate to true"
                    )
                ids = self._truncate(ids, prompt_ids, limit, direction)
            out.append([*self._prefix, *ids, *self._suffix])
        return out

    def tokens(self, text: str, add_special_tokens: bool = True, prompt: str = "") -> list[dict[str, object]]:
        """The tokens of ``prompt + text`` as TEI's ``/tokenize`` lists them: id, the text it covers (its own
        string for a special token), whether it is special, and character offsets (None for a special token). Not
        truncated: this shows how the text is read, including what a limit would cut."""
        encoding = self._tokenizer.encode(prompt + text, add_special_tokens=add_special_tokens)
        full = prompt + text
        out: list[dict[str, object]] = []
        for token_id, token, special, (start, stop) in zip(
            encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets, strict=True
        ):
            if special:
                out.append({"id": token_id, "text": token, "special": True, "start": None, "stop": None})
            else:
                out.append({"id": token_id, "text": full[start:stop], "special": False, "start": start, "stop": stop})
        return out

    def decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        """The text of each id list; ValidationFailed for an id outside the vocabulary."""
        size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        for index, row in enumerate(ids):
            bad = next((i for i in row if i >= size), None)
            if bad is not None:
                raise ValidationFailed(f"ids[{index}]: {bad} is not a token id of this model (vocabulary: {size})")
        return self._tokenizer.decode_batch([list(row) for row in ids], skip_special_tokens=skip_special_tokens)

    def _bounded(self, texts: Sequence[str], truncate: bool, direction: str) -> Sequence[str]:
        """The texts, each at most ``max_text_chars`` characters: longer ones are refused or cut on ``direction``."""
        bound = self.max_text_chars
        if all(len(text) <= bound for text in texts):
            return texts
        if not truncate:
            index, text = next((i, t) for i, t in enumerate(texts) if len(t) > bound)
            raise InputTooLong(
                f"input {index} has {len(text)} characters; no text over {bound} characters fits the model's limit "
                f"of {self.max_input_tokens} tokens; shorten it or set truncate to true"
            )
        # Cut on the side truncation drops: what is left still holds at least a limit's worth of tokens (unless it is
        # mostly characters the tokenizer drops; see the module docstring), so truncation keeps the same tokens as
        # it would from the whole text.
        return [
            text if len(text) <= bound else text[:bound] if direction == "right" else text[-bound:] for text in texts
        ]

    @staticmethod
    def _truncate(ids: list[int], prompt_ids: list[int], limit: int, direction: str) -> list[int]:
        if direction == "right":
            return ids[:limit]
        keep = len(prompt_ids) if ids[: len(prompt_ids)] == prompt_ids else 0
        return ids[:keep] + ids[len(ids) - (limit - keep) :]

    def check_token_ids(self, ids: Sequence[int], index: int, truncate: bool, direction: str = "right") -> list[int]:
        """Validate pre-tokenised input (used as given: no special tokens are added)."""
        vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        if any(not 0 <= token < vocab for token in ids):
            raise ValidationFailed(f"input {index} has token ids outside the vocabulary (0..{vocab - 1})")
        if len(ids) > self.max_input_tokens:
            if not truncate:
                raise InputTooLong(
                    f"input {index} has {len(ids)} tokens, more than the model's limit of {self.max_input_tokens}; "
                    "shorten it or set truncate to true"
                )
            return list(ids[: self.max_input_tokens] if direction == "right" else ids[-self.max_input_tokens :])
        return list(ids)
