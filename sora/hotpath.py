"""Process-wide settings for the processes on the invocation path (gateway, broker, worker)."""
import gc


def quiet_gc() -> None:
    """Fewer garbage-collector passes: nearly everything an invocation allocates is freed by
    reference counting, so frequent gen-0 collections mostly walk long-lived objects for
    nothing. What exists at start-up (modules, config) is frozen out of collection entirely."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
