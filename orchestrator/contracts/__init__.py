"""What crosses a process boundary, shared by the control plane and the replicas: a leaf package.

* ``errors``: the one exception hierarchy; each error knows its HTTP status and type, and ``error_body`` its JSON;
* ``forwarding``: the HTTP request and answer the front door hands to a replica, the body size rule, the JSON error
  answer, and the ``Transport`` protocol of the front door's ways to reach replicas;
* ``lane_protocol``: the frames of a direct lane;
* ``plan``: the placement every replica receives in its spec (its instance: cores, threads, batch limits, GPU);
* ``replica_spec``: that spec, the plan with the config settings a replica reads;
* ``snapshot``: the typed metrics snapshot a replica pushes, its lane's address, and the hub's name.

Nothing here imports anything of the project outside this package (``tests/unit/test_layers.py`` keeps it so), nor
Ray, torch or an HTTP framework: both sides import it without pulling the other side in.
"""
