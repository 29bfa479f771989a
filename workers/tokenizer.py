"""Tokenisation with the model folder's fast tokenizer (``tokenizer.json``), truncation under our control.

Kept apart from the model so that the HTTP layer can count tokens and refuse too-long inputs before anything is
queued. Only the ``tokenizers`` package is needed (no torch, no transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orchestrator.errors import InputTooLong


class TextTokenizer:
    """Turns texts into token ids including the model's special tokens, at most ``max_input_tokens`` long."""

    def __init__(self, folder: Path, max_input_tokens: int) -> None:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json (a fast tokenizer is required)")
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.max_input_tokens = max_input_tokens
        self._special_tokens = (
            self._tokenizer.post_processor.num_special_tokens_to_add(False)
            if (self._tokenizer.post_processor is not None)
            else 0
        )

    def encode(self, texts: Sequence[str], truncate: bool, direction: str = "right") -> list[list[int]]:
        """Token ids per text, special tokens included.

        A text longer than the limit is cut on ``direction`` ('right' keeps the start) when ``truncate`` is true;
        otherwise InputTooLong names the first offending input and the limit.
        """
        content_limit = self.max_input_tokens - self._special_tokens
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        out: list[list[int]] = []
        for index, encoding in enumerate(encodings):
            if len(encoding.ids) > content_limit:
                if not truncate:
                    raise InputTooLong(
                        f"input {index} has {len(encoding.ids) + self._special_tokens} tokens, more than the "
                        f"model's limit of {self.max_input_tokens}; shorten it or set truncate to true"
                    )
                encoding.truncate(content_limit, direction=direction)
            out.append(self._tokenizer.post_process(encoding).ids)
        return out

    def check_token_ids(self, ids: Sequence[int], index: int, truncate: bool, direction: str = "right") -> list[int]:
        """Validate pre-tokenised input (used as given: no special tokens are added)."""
        vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        if any(not 0 <= token < vocab for token in ids):
            from orchestrator.errors import ValidationFailed

            raise ValidationFailed(f"input {index} has token ids outside the vocabulary (0..{vocab - 1})")
        if len(ids) > self.max_input_tokens:
            if not truncate:
                raise InputTooLong(
                    f"input {index} has {len(ids)} tokens, more than the model's limit of {self.max_input_tokens}"
                )
            return list(ids[: self.max_input_tokens] if direction == "right" else ids[-self.max_input_tokens :])
        return list(ids)
