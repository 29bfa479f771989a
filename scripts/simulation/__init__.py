"""A discrete-event simulation of request routing over unequal MIG slices (see ``scripts/simulate_balancer.py``).

* ``model``: the slices, the service-time model and the simulation loop (one FIFO server per slice);
* ``policies``: the routing policies, the weighted one driving the real ``orchestrator.balancer``;
* ``study``: the grid of runs (policies x loads x seeds), run in parallel, and its summaries;
* ``report``: the tables, as data for the terminal (rich) and for markdown.

Pure Python (``random``, ``heapq``, ``collections``); nothing here imports Ray.
"""
