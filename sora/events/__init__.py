"""Asynchronous invocations: accepting events (intake) and running them (dispatcher)."""
