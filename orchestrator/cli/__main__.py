"""``python -m orchestrator.cli``: the same command as the ``orchestrator`` script (``up`` runs its export step so)."""

from orchestrator.cli import main

main()
