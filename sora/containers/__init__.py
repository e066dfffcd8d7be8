"""Container isolation (`isolation: container`, `package: image`) through the Docker Engine
API: the engine client and sweeps (engine.py, labels.py), setup in a container (run_once.py),
and the container instances of the worker."""
