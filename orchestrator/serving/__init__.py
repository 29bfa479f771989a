"""Serving on Ray: ``ray_access`` decides who may reach Ray, ``deploy`` starts or joins it and deploys the plan
through Serve (one replica per planned instance), ``router`` is our balancer inside Serve's routing path,
``metrics_hub`` the actor the replicas report to, ``control_plane`` notices when Ray is gone and ``quiet_shutdown``
keeps Serve's shutdown chatter off the terminal. With ``frontdoor.serve_handles`` and the cluster probe, this is the
control-side code that imports Ray."""
