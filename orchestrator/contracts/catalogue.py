"""The served models as every reader needs them: names, aliases, tasks, which one is the default.

The front door routes a request by its ``model`` field with it, and every replica carries it in its spec to answer
``GET /v1/models`` with every model of the endpoint and to refuse an unknown name with the list of served ones (after
its own API-key check, so the list is never shown to a caller without the key). Names and aliases match
case-insensitively, as the config validated them (no two models share one).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    """One served model: its name, the other names it answers to, its task (``embed`` or ``rerank``)."""

    name: str
    aliases: tuple[str, ...] = ()
    task: str = "embed"

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True)
class ModelCatalogue:
    """Every model behind the endpoint, the default (first) one first."""

    entries: tuple[ModelEntry, ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("a catalogue needs at least one model")
        index = {name.lower(): entry for entry in self.entries for name in entry.names()}
        object.__setattr__(self, "_index", index)

    @property
    def default(self) -> ModelEntry:
        return self.entries[0]

    def find(self, name: str) -> ModelEntry | None:
        """The model answering to ``name`` (any case), or None."""
        found: dict[str, ModelEntry] = self._index  # type: ignore[attr-defined]
        return found.get(name.lower())

    def served_names(self) -> tuple[str, ...]:
        """Every name and alias, in catalogue order (what an unknown name's 404 lists)."""
        return tuple(name for entry in self.entries for name in entry.names())

    def unknown(self, requested: str) -> str:
        """The message for a name no model answers to."""
        listed = ", ".join(repr(name) for name in self.served_names())
        return f"model {requested!r} is not served here; this endpoint serves {listed}"
