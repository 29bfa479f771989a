"""The layout advisor (issue 21): measure a model per instance type, then choose the MIG layout that meets a target.

* ``measurements``: the versioned JSON file ``orchestrator bench --profile`` writes and ``advise`` reads;
* ``workload``: the request-size distribution (texts per request, tokens per text) from numbers or a sample file;
* ``profiling`` / ``profile_child``: measuring each instance type present here, one pinned child process per type;
* ``loadgen``: an open-loop Poisson load generator against a served endpoint (the served check and validation);
* ``simulation``: the discrete-event queueing core driving the real ``orchestrator.balancer``;
* ``spread``: the service-time spread at saturation, read from an instance's completions (its departure process);
* ``layouts``: the valid layouts of one GPU (its profile table and placement rules, as ``mig plan`` uses them);
* ``predict``: one layout's capacity and its p99 at a target rate, from the measurements;
* ``search``: the cheapest layouts that meet a target (fewest GPUs, then most headroom);
* ``handoff``: the mig-parted config and our own config for a chosen layout;
* ``validate``: prediction against a real ``up`` on CPU pools (``python -m orchestrator.advisor.validate``);
* ``intervals``: confidence intervals for a measured percentile (what ``validate`` compares the prediction with).

Nothing here imports Ray or torch at module level; measuring runs the worker side in child processes.
"""
