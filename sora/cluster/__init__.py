"""Sora across several hosts (issue 16): CURVE keys (keys.py) and the join link between a
joined host and the main host's control plane (link.py). The wiring into the supervisor and
the control plane is the next step (docs/architecture.md, "Cluster link")."""
