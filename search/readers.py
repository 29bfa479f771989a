"""Turn input files into documents: one per .txt/.md file, one per record of a .jsonl or .csv file.

A document's ``doc_id`` is stable across runs (the file's path as given, plus ``#<id>`` for records: the id column's
value, else the record's line/row number), so re-indexing the same files finds the same documents; ``source`` is the
file, the key that search filters by. Folders are walked for the known suffixes, in sorted order.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from search.errors import ReaderError
from search.settings import ReaderSettings

SUFFIXES = (".txt", ".md", ".jsonl", ".csv")


@dataclass(frozen=True)
class Document:
    doc_id: str
    source: str
    text: str


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, plus the files with a known suffix under each folder; raises ReaderError if missing."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES))
        elif path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise ReaderError(f"{path}: unknown kind of file (read: {', '.join(SUFFIXES)})")
            files.append(path)
        else:
            raise ReaderError(f"{path}: no such file or folder")
    return files


def read_documents(path: Path, options: ReaderSettings) -> Iterator[Document]:
    """The documents of one file, by its suffix. Raises ReaderError naming the file and line on malformed input.

    A record id seen before in the same file gets its position in the file appended (``#id@7``): a document id must name
    one document, or re-indexing could not tell which one changed. NUL characters are dropped from ids and texts.
    """
    seen: set[str] = set()
    for document in _read(path, options):
        if "\x00" in document.text or "\x00" in document.doc_id:
            # NUL is no text (a binary byte in a .txt, an escaped \u0000 in JSON) and PostgreSQL's text type cannot
            # hold it: dropped here, so every store keeps the same chunks.
            document = Document(document.doc_id.replace("\x00", ""), document.source, document.text.replace("\x00", ""))
        if document.doc_id in seen:
            document = Document(f"{document.doc_id}@{len(seen) + 1}", document.source, document.text)
        seen.add(document.doc_id)
        yield document


def _read(path: Path, options: ReaderSettings) -> Iterator[Document]:
    source = str(path)
    suffix = path.suffix.lower()
    if suffix in (".txt", ".md"):
        yield Document(source, source, path.read_text(encoding="utf-8", errors="replace"))
    elif suffix == ".jsonl":
        yield from _jsonl(path, source, options)
    elif suffix == ".csv":
        yield from _csv(path, source, options)
    else:
        raise ReaderError(f"{path}: unknown kind of file (read: {', '.join(SUFFIXES)})")


def _record_id(record: dict[str, object], options: ReaderSettings, number: int) -> str:
    value = record.get(options.id_field) if options.id_field else None
    return str(value) if value not in (None, "") else str(number)


def _jsonl(path: Path, source: str, options: ReaderSettings) -> Iterator[Document]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReaderError(f"{path}:{number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(options.text_field), str):
                raise ReaderError(f"{path}:{number}: no string field {options.text_field!r} (set --text-field)")
            yield Document(f"{source}#{_record_id(record, options, number)}", source, record[options.text_field])


def _csv(path: Path, source: str, options: ReaderSettings) -> Iterator[Document]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts in a cell are the point of a text column
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        rows = csv.DictReader(handle)
        if rows.fieldnames is None or options.text_field not in rows.fieldnames:
            raise ReaderError(
                f"{path}: no column {options.text_field!r} (columns: {', '.join(rows.fieldnames or [])}; "
                "set --text-field)"
            )
        for number, row in enumerate(rows, start=1):
            yield Document(f"{source}#{_record_id(row, options, number)}", source, row[options.text_field] or "")
