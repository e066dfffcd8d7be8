"""The autoscaling policy (sora.worker.scaling), alone: no processes."""
from sora.worker.scaling import SCALE_OUT_WAIT, idle_expired, plan_scale_out


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
