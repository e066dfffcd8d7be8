"""The autoscaling policy of one worker: how many instances to add or stop, and why.

Decisions come from the worker's own queue: how many invocations wait for an instance and how
long the oldest has waited, not from CPU. It is kept apart from the worker loop (no processes,
no sockets) so its rules can be tested on their own.

- Out: when invocations wait and no instance is idle, and either the oldest has waited
  SCALE_OUT_WAIT, or the queue as it stands would make the last of them wait longer than that
  (the waiting calls shared among the ready instances, times the average duration, for a
  function shown to take over PREDICT_ABOVE a call: a burst of slow calls is answered at once,
  not 50 ms later), or there is no instance at all (a function scaled to zero starts one at
  once), or every instance is still starting: add one instance per waiting invocation (per
  PIPELINE of them, for a fast function whose instances take several at a time), less the
  instances already starting, up to `maxInstances`. The worker then asks its host's control plane, which
  grants what the function's `concurrency` and the host's limits allow. A fast function (and a
  fresh worker, whose average is only its starting guess) scales on the oldest call's wait
  alone, as before: its short queues of short calls predict nothing.
- In: an instance idle for `idleTimeout` seconds is stopped, never below `minInstances` and
  never while invocations wait. The worker hands work to the most recently idle instance first,
  so under light load the same few stay busy and the rest age out.

No flapping: adding needs invocations that waited, stopping needs an instance that has had
nothing to do for a whole `idleTimeout`, and a scale-out counts the instances still starting,
so a burst is not answered twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# How long the oldest waiting invocation must have waited before instances are added. Short
# against a cold start, long against the gaps between a fast function's back-to-back calls.
SCALE_OUT_WAIT = 0.05
# A queue's wait is predicted only for a function whose calls have been shown to average more
# than this. The worker's average starts at this figure (sora.worker.main.SLOW) until calls
# show otherwise, so a fresh worker, and a fast function whose many short calls queue for a
# moment, scale on the oldest call's wait alone.
PREDICT_ABOVE = 0.010


@dataclass(frozen=True)
class ScaleOut:
    count: int
    reason: str


def predicted_wait(*, ready: int, waiting: int, avg_duration: float,
                   per_instance: int = 1) -> float:
    """How long the last of `waiting` calls would wait on `ready` instances (each taking
    `per_instance` at a time) if no instance were added: one average duration per round."""
    if ready <= 0:
        return math.inf
    return math.ceil(waiting / (ready * per_instance)) * avg_duration


def plan_scale_out(*, instances: int, starting: int, waiting: int, oldest_wait: float,
                   max_instances: int, per_instance: int = 1,
                   avg_duration: float = 0.0) -> ScaleOut | None:
    """Instances to add, or None. `instances` counts those starting too; `avg_duration` is
    the function's average invocation time in seconds, from which the queue's wait is
    predicted if it is over PREDICT_ABOVE (else the oldest's wait decides, unless no instance
    is ready yet)."""
    if waiting <= 0 or instances >= max_instances:
        return None
    if instances == 0:
        count = min(max_instances, math.ceil(waiting / per_instance))
        return ScaleOut(count, f"scaled to zero and {waiting} invocation(s) waiting")
    count = min(max_instances - instances, math.ceil(waiting / per_instance) - starting)
    if count <= 0:
        return None
    if oldest_wait >= SCALE_OUT_WAIT:
        return ScaleOut(count, f"{waiting} invocation(s) waiting, the oldest for "
                               f"{oldest_wait * 1000:.0f} ms, {starting} instance(s) starting")
    if avg_duration <= PREDICT_ABOVE and instances > starting:
        return None
    ahead = predicted_wait(ready=instances - starting, waiting=waiting,
                           avg_duration=avg_duration, per_instance=per_instance)
    if ahead < SCALE_OUT_WAIT:
        return None
    return ScaleOut(count, f"{waiting} invocation(s) waiting, the last would wait "
                           f"~{ahead * 1000:.0f} ms (calls of ~{avg_duration * 1000:.0f} ms), "
                           f"{starting} instance(s) starting")


def idle_expired(idle_since: dict[int, float], *, now: float, instances: int,
                 min_instances: int, idle_timeout: float) -> list[int]:
    """Keys (instance ids) of idle instances to stop, the longest idle first."""
    room = instances - min_instances
    if room <= 0:
        return []
    expired = sorted((since, key) for key, since in idle_since.items()
                     if now - since >= idle_timeout)
    return [key for _, key in expired[:room]]
