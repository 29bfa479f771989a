"""A discrete-event simulation of request routing over unequal MIG slices (see ``scripts/simulate_balancer.py``).

* ``model``: the slices, the service-time model and the simulation loop (one FIFO server per slice);
* ``policies``: the routing policies, the weighted one driving the real ``orchestrator.balancer``;
* ``study``: the grid of runs (policies x loads x seeds, or x counts of front doors), run in parallel, summarised;
* ``report``: the tables, as data for the terminal (rich) and for markdown;
* ``front_doors``: N independent front doors over the same slices, each with its own counts and view of the load.

Pure Python (``random``, ``heapq``, ``collections``); nothing here imports Ray.
"""
