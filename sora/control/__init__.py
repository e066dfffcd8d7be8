"""The control plane: membership, liveness and instance budgets, off the invocation path."""
