"""Planning: from a config and the hardware found (one machine's, or every node's of a cluster) to a placement of
instances on MIG slices, whole GPUs or CPU pools, with the engine each one runs. Pure: it receives the topology and
the capabilities, starts nothing and imports no heavy package; ``orchestrator plan`` shows its result."""
