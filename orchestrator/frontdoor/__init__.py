"""The front door: the one HTTP endpoint of ``orchestrator up``, and how a request reaches a replica from it.

A request crosses these rooms once each, in this order:

* ``server``: binds the port before Ray starts and runs uvicorn on a thread of the ``up`` process;
* ``edge``: the HTTP protocol with the edge's limits (header size and time, connection cap, JSON for bad HTTP);
* ``app``: the ASGI app that reads the request whole, retries it once on a lost instance, answers JSON for every
  failure and adds the front door's readiness and metrics;
* a transport (``orchestrator.contracts.forwarding.Transport``): ``lanes`` (direct TCP lanes to each replica, our
  balancer here; the default) or ``serve_handles`` (Serve's handles, our router inside Serve; ``node_spread``
  spreads over the nodes of a cluster), with ``readiness`` counting the replicas Serve runs for the latter.

What travels to the replica (``ForwardedRequest``, frames, error bodies) is in ``orchestrator.contracts``, which the
replicas import too; nothing in this package imports Ray at module level.
"""
