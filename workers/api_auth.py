"""Who may call an instance's routes: the rule lives in ``orchestrator.contracts.api_key`` (the front door applies
the same one to the routes it answers itself, ``/v1/search``); re-exported here for the replicas' HTTP app."""

from __future__ import annotations

from orchestrator.contracts.api_key import OPEN_PATHS, key_matches, requires_key

__all__ = ["OPEN_PATHS", "key_matches", "requires_key"]
