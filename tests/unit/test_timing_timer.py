"""Timer: accumulation, nesting, start/stop across calls, disabled cost, device sync, trace window."""
import pytest

from hpclm.timing.timer import Timer


class FakeClock:
    def __init__(self):
        self.t = 0.0
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return self.t


def test_regions_accumulate_and_nest_inclusively():
    clock = FakeClock()
    timer = Timer(clock=clock)
    with timer.region("backward"):
        clock.t += 1.0
        with timer.region("comm"):
            clock.t += 0.25
        clock.t += 1.0
    with timer.region("comm"):
        clock.t += 0.5
    timer.add("comm_async", 2.0)
    assert timer.collect() == {"backward": 2.25, "comm": 0.75, "comm_async": 2.0}
    assert timer.collect() == {}


def test_start_stop_across_functions_and_misuse():
    clock = FakeClock()
    timer = Timer(clock=clock)
    timer.start("comm_wait")
    clock.t += 3.0
    assert timer.stop("comm_wait") == 3.0
    timer.start("comm")
    with pytest.raises(RuntimeError, match="started twice"):
        timer.start("comm")
    with pytest.raises(RuntimeError, match="still open"):
        timer.collect()
    timer.stop("comm")
    with pytest.raises(RuntimeError, match="without start"):
        timer.stop("forward")


def test_disabled_timer_touches_no_clock_and_shares_one_context_manager():
    clock = FakeClock()
    syncs = []
    timer = Timer(enabled=False, sync=lambda: syncs.append(1), clock=clock)
    assert timer.region("forward") is timer.region("backward")
    for _ in range(1000):
        with timer.region("forward"):
            pass
        timer.start("comm")
        timer.stop("comm")
        timer.add("comm", 1.0)
    assert timer.collect() == {}
    assert clock.reads == 0 and syncs == []


def test_enabled_region_reuses_its_context_manager():
    timer = Timer()
    assert timer.region("forward") is timer.region("forward")


def test_sync_runs_before_every_clock_reading():
    calls = []
    timer = Timer(sync=lambda: calls.append("sync"), clock=lambda: calls.append("clock") or 0.0)
    with timer.region("forward"):
        pass
    assert calls == ["sync", "clock", "sync", "clock"]


def test_trace_keeps_only_the_window_steps():
    clock = FakeClock()
    timer = Timer(trace_steps=(1, 3), clock=clock)
    for step in range(4):
        with timer.region("forward"):
            clock.t += 1.0
        timer.start("comm")
        clock.t += 0.5
        timer.stop("comm")
        timer.collect()
    events = timer.trace_events()
    assert [e.name for e in events] == ["forward", "comm", "forward", "comm"]
    assert events[0].begin == 1.5 and events[0].end == 2.5
    assert Timer(clock=clock).trace_events() == []
