"""Containers: running functions in a Docker engine (issue 20)."""
