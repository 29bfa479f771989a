"""Pydantic's validation errors as the config's one-line messages: ``file: key: what is wrong``, with the key as
the file writes it (``mig_instances[0].batch_size``), unknown keys matched to the key probably meant, and patterns
explained in words."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def _format_location(loc: tuple[int | str, ...], raw: object) -> str:
    """Turn pydantic's location into ``mig_instances[0].batch_size`` (instance names where known)."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "<top level>"


# What a pattern means, in words: pydantic would print the regular expression.
PATTERN_MEANINGS = {
    "type": "is not an instance type: a MIG profile as nvidia-smi names it (1g.5gb, 3g.40gb, 1g.10gb+me, 1c.3g.20gb), "
    "gpu for a whole GPU, or cpu",
    "name": "is not a usable name: letters, digits, '_', '.' and '-', starting with a letter or a digit",
}


def _known_keys(loc: tuple[int | str, ...], root: type[BaseModel]) -> list[str]:
    """The keys the config accepts where ``loc``'s last key was found (empty when that place is not a section)."""
    model: Any = root
    for item in loc[:-1]:
        if isinstance(item, int):
            continue
        field = model.model_fields.get(item) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        candidates += [inner for c in list(candidates) for inner in typing.get_args(c)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def validation_lines(path: str, error: ValidationError, raw: object, root: type[BaseModel]) -> list[str]:
    """One line per problem of ``error`` (raised validating ``raw`` as ``root``)."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        key = _format_location(loc, raw)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc, root), n=1, cutoff=0.6)
            message = f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
        elif item["type"] == "string_pattern_mismatch" and str(loc[-1]) in PATTERN_MEANINGS:
            message = f"{item.get('input')!r} {PATTERN_MEANINGS[str(loc[-1])]}"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        # A whole-config rule names its own keys (mig_instances[2].model: ...): no "<top level>" before it.
        lines.append(f"{path}: {message}" if not loc else f"{path}: {key}: {message}")
    return lines
