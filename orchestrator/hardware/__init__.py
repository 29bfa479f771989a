"""Hardware discovery: what the planner can place instances on."""
