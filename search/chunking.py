"""Split texts into overlapping windows of the embedding model's own tokens, and name each chunk by its content.

The tokenizer is the model's ``tokenizer.json`` loaded with the ``tokenizers`` package (no download, no HTTP round
trip per text: the service has no ``/tokenize``, and tokenising over HTTP would spend the same cores the model needs).
A window never starts or ends inside a word when a word boundary is within a few tokens, so a chunk reads as text.
``Chunk.hash`` is the content hash the indexer uses to re-embed only chunks whose text changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from search.errors import SettingsError

# How far (in tokens) a window edge may move to land on a word boundary; beyond it the window cuts the word.
_MAX_EDGE_SHIFT = 8


@dataclass(frozen=True)
class Chunk:
    ordinal: int  # position in its document, from 0
    text: str
    start: int  # character offsets into the document's text
    end: int
    tokens: int

    @property
    def hash(self) -> str:
        return content_hash(self.text)


def content_hash(text: str) -> str:
    """A stable 128-bit hex digest of ``text`` (the key of a chunk's vector)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def load_tokenizer(source: str | Path) -> Tokenizer:
    """The tokenizer of a model folder, of a tokenizer.json file, or of an installed model package's folder.

    Raises SettingsError naming what was looked for.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    elif not path.exists():
        from orchestrator.model_source import ModelSourceError, resolve_model_folder

        try:
            path = resolve_model_folder(None, str(source), Path.cwd()) / "tokenizer.json"
        except ModelSourceError as error:
            raise SettingsError(
                f"tokenizer {str(source)!r}: not a folder, a file or a model package ({error})"
            ) from None
    if not path.is_file():
        raise SettingsError(f"tokenizer: {path} does not exist (the model folder needs a tokenizer.json)")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


class Chunker:
    """Token windows of ``size`` tokens, each overlapping the previous by ``overlap`` tokens."""

    def __init__(self, tokenizer: Tokenizer, size: int, overlap: int) -> None:
        if not 0 <= overlap < size:
            raise SettingsError(f"chunk overlap {overlap} must be >= 0 and below the chunk size {size}")
        self._tokenizer = tokenizer
        self.size = size
        self.overlap = overlap

    def chunk(self, text: str) -> list[Chunk]:
        return self.chunk_many([text])[0]

    def chunk_many(self, texts: Sequence[str]) -> list[list[Chunk]]:
        """The chunks of each text (an empty or blank text has none); one batched tokenizer call for all."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [self._windows(text, enc.offsets, enc.word_ids) for text, enc in zip(texts, encodings, strict=True)]

    def _windows(self, text: str, offsets: list[tuple[int, int]], words: list[int | None]) -> list[Chunk]:
        count = len(offsets)
        if count == 0:
            return []

        def starts_word(index: int) -> bool:
            return index == 0 or index >= count or words[index] is None or words[index] != words[index - 1]

        chunks: list[Chunk] = []
        start = 0
        while start < count:
            end = min(start + self.size, count)
            if end < count:  # pull the end back to a word boundary so the last word is whole
                shifted = end
                while shifted > start + 1 and not starts_word(shifted) and end - shifted < _MAX_EDGE_SHIFT:
                    shifted -= 1
                end = shifted if starts_word(shifted) else end
            begin_char, end_char = offsets[start][0], offsets[end - 1][1]
            piece = text[begin_char:end_char].strip()
            if piece:
                chunks.append(Chunk(len(chunks), piece, begin_char, end_char, end - start))
            if end >= count:
                break
            # The next window starts ``overlap`` tokens back, moved back to the start of the word it falls in
            # (a little more overlap) or, failing that, forward to the next word.
            following = max(end - self.overlap, start + 1)
            back = following
            while back > start + 1 and not starts_word(back) and following - back < _MAX_EDGE_SHIFT:
                back -= 1
            ahead = following
            while ahead < end - 1 and not starts_word(ahead) and ahead - following < _MAX_EDGE_SHIFT:
                ahead += 1
            start = back if starts_word(back) else ahead if starts_word(ahead) else following
        return chunks
