"""brokers/observability/loop_lag.py: the per-second window of lag maxima, and the sampler seeing a real
blocking callback on a running loop (values read from the process registry as differences)."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import REGISTRY

from brokers.observability.loop_lag import LagWindow, LoopLagSampler


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_window_keeps_the_largest_lag_of_recent_seconds_only() -> None:
    w = LagWindow(seconds=5)
    w.add(100.2, 0.003)
    w.add(100.7, 0.030)  # the largest of second 100
    w.add(101.1, 0.002)
    assert w.recent_max(101.5) == pytest.approx(0.030)
    assert w.recent_max(105.9) == pytest.approx(0.030)  # second 100 is still within the last 5 whole seconds
    assert w.recent_max(106.0) == pytest.approx(0.002)  # second 100 has expired, second 101 has not
    assert w.recent_max(200.0) == 0.0
    assert w.overall == pytest.approx(0.030)  # the overall maximum never expires


def test_sampler_refuses_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopLagSampler(0)


@pytest.mark.asyncio
async def test_sampler_sees_a_blocked_loop() -> None:
    over_20ms = "tidelog_event_loop_lag_seconds_bucket"
    count_before = sample("tidelog_event_loop_lag_seconds_count")
    fast_before = sample(over_20ms, le="0.02")
    sampler = LoopLagSampler(0.005)
    sampler.start()
    try:
        await asyncio.sleep(0.05)  # a few undisturbed samples first
        end = time.thread_time() + 0.08
        while time.thread_time() < end:  # 80 ms of CPU in one callback: the sampler's timer runs that late
            pass
        await asyncio.sleep(0.05)
    finally:
        await sampler.stop()
    assert sampler.samples >= 3
    assert 0.07 <= sampler.window.overall < 1.0
    assert sample("tidelog_event_loop_lag_max_seconds") >= 0.07
    assert sample("tidelog_event_loop_lag_recent_max_seconds") >= 0.07
    assert 0.05 <= sampler.busy.overall <= sampler.window.overall  # the loop's thread was running meanwhile
    added = sample("tidelog_event_loop_lag_seconds_count") - count_before
    assert added == sampler.samples
    # At least the one blocked sample landed above the 20 ms bucket.
    assert added - (sample(over_20ms, le="0.02") - fast_before) >= 1
    await sampler.stop()  # stopping twice is harmless


def test_a_lag_without_cpu_is_not_the_loops_own_stall() -> None:
    sampler = LoopLagSampler(0.01)
    sampler.observe(0.2, 50.0, cpu=0.012)  # 200 ms late but ran only 12 ms: the process waited for a CPU
    sampler.observe(0.1, 50.5, cpu=0.105)  # 100 ms late, running 95 ms of it: the loop was busy
    assert sampler.window.overall == pytest.approx(0.2)
    assert sampler.busy.recent_max(50.5) == pytest.approx(0.095)
