"""The autoscaling policy (sora.worker.scaling), alone: no processes."""
import math

from sora.worker.scaling import (PREDICT_ABOVE, SCALE_OUT_WAIT, idle_expired, plan_scale_out,
                                 predicted_wait)


def out(**kw):
    args = dict(instances=1, starting=0, waiting=0, oldest_wait=0.0, max_instances=16)
    args.update(kw)
    return plan_scale_out(**args)


def test_nothing_waiting_or_not_for_long_adds_nothing():
    assert out(waiting=0, oldest_wait=5.0) is None
    assert out(waiting=30, oldest_wait=SCALE_OUT_WAIT / 2) is None


def test_a_burst_adds_one_instance_per_waiting_call_up_to_the_maximum():
    plan = out(waiting=31, oldest_wait=SCALE_OUT_WAIT)
    assert plan.count == 15 and "31 invocation(s) waiting" in plan.reason
    assert out(waiting=3, oldest_wait=1.0).count == 3
    assert out(instances=16, waiting=100, oldest_wait=1.0) is None


def test_instances_still_starting_count_so_a_burst_is_not_answered_twice():
    assert out(instances=5, starting=4, waiting=4, oldest_wait=1.0) is None
    assert out(instances=5, starting=4, waiting=6, oldest_wait=1.0).count == 2


def test_a_fast_function_takes_several_calls_per_instance():
    assert out(waiting=40, oldest_wait=1.0, per_instance=8).count == 5


def test_a_burst_of_slow_calls_scales_out_at_once_not_after_the_wait():
    # 31 calls of ~100 ms behind one busy instance: the last would wait ~3 s, so there is
    # nothing to learn from waiting 50 ms first.
    plan = out(waiting=31, oldest_wait=0.0, avg_duration=0.1)
    assert plan.count == 15 and "would wait ~3100 ms" in plan.reason
    # Even one call that would wait a whole 100 ms call.
    assert out(waiting=1, oldest_wait=0.0, avg_duration=0.1).count == 1


def test_a_short_predicted_wait_waits_for_the_oldest_as_before():
    # Two calls of 20 ms on two ready instances: ~20 ms of waiting, less than a scale-out saves.
    assert out(instances=2, waiting=2, oldest_wait=0.0, avg_duration=0.02) is None
    assert out(instances=2, waiting=2, oldest_wait=SCALE_OUT_WAIT, avg_duration=0.02).count == 2


def test_no_prediction_from_the_starting_guess_or_for_a_fast_function():
    # A fresh worker's average is its starting guess (PREDICT_ABOVE): 63 calls queued on one
    # instance of a function that may take 0.2 ms a call must not start 15 instances.
    assert out(waiting=63, oldest_wait=0.001, avg_duration=PREDICT_ABOVE) is None
    # A fast function on the fast path: 8 calls per instance at a time, 0.2 ms each.
    assert out(waiting=56, oldest_wait=0.002, avg_duration=0.0002, per_instance=8) is None


def test_calls_waiting_while_every_instance_starts_add_instances_at_once():
    plan = out(instances=2, starting=2, waiting=5, oldest_wait=0.0)
    assert plan.count == 3
    assert out(instances=2, starting=2, waiting=2, oldest_wait=0.0) is None


def test_predicted_wait():
    assert predicted_wait(ready=1, waiting=31, avg_duration=0.1) == 31 * 0.1
    assert predicted_wait(ready=4, waiting=9, avg_duration=0.1) == 3 * 0.1
    assert predicted_wait(ready=2, waiting=40, avg_duration=0.001, per_instance=8) == 3 * 0.001
    assert predicted_wait(ready=0, waiting=1, avg_duration=0.1) == math.inf


def test_scaled_to_zero_starts_at_once():
    plan = out(instances=0, waiting=1, oldest_wait=0.0)
    assert plan.count == 1 and "scaled to zero" in plan.reason
    assert out(instances=0, waiting=40, oldest_wait=0.0, max_instances=4).count == 4


def test_scale_in_only_past_idle_timeout_longest_idle_first_never_below_min():
    idle = {1: 100.0, 2: 50.0, 3: 109.0}
    assert idle_expired(idle, now=110.0, instances=4, min_instances=1, idle_timeout=10) == [2, 1]
    assert idle_expired(idle, now=110.0, instances=4, min_instances=3, idle_timeout=10) == [2]
    assert idle_expired(idle, now=110.0, instances=1, min_instances=1, idle_timeout=10) == []
    assert idle_expired(idle, now=55.0, instances=4, min_instances=0, idle_timeout=10) == []


def test_steady_load_that_leaves_gaps_shorter_than_idle_timeout_never_flaps():
    # An instance that is used every few seconds never reaches a 30 s idle timeout, and
    # calls that are taken at once never trigger a scale-out.
    now, since = 0.0, {0: 0.0, 1: 0.0}
    for step in range(100):
        now += 3.0
        since[step % 2] = now
        assert idle_expired(since, now=now, instances=2, min_instances=0, idle_timeout=30) == []
        assert out(instances=2, waiting=1, oldest_wait=0.001) is None
