"""Named-region timer for one rank: `with timer.region("forward"):`, start/stop pairs, add.

Times accumulate per region over a step and `collect()` hands them out and resets. Regions may
nest (each records its own inclusive time); a region cannot be entered twice at once. When
disabled every call returns at once and `region()` hands out one shared no-op context manager.
With `sync` (e.g. `hpclm.xp.synchronize`) the device is synchronised before each clock reading, so
that queued GPU work is charged to the region that queued it. With `trace_steps=(start, stop)`
the timer also keeps (name, t_begin, t_end) events of steps start <= step < stop for a trace.
"""
import contextlib
import time
from typing import NamedTuple

_NO_OP = contextlib.nullcontext()


class TraceEvent(NamedTuple):
    name: str
    begin: float   # clock reading, seconds
    end: float


class _Region:
    """Reusable context manager of one region name (no allocation per `with`)."""
    __slots__ = ("timer", "name")

    def __init__(self, timer, name):
        self.timer, self.name = timer, name

    def __enter__(self):
        self.timer.start(self.name)
        return self

    def __exit__(self, *exc):
        self.timer.stop(self.name)
        return False


class Timer:
    def __init__(self, enabled=True, sync=None, trace_steps=None, clock=time.perf_counter):
        self.enabled = enabled
        self.clock = clock
        self._sync = sync
        self._totals = {}
        self._open = {}
        self._regions = {}
        self._step = 0
        self._trace_window = trace_steps
        self._tracing = self._in_window(0)
        self._events = []

    def _in_window(self, step):
        return self._trace_window is not None and self._trace_window[0] <= step < self._trace_window[1]

    def _now(self):
        if self._sync is not None:
            self._sync()
        return self.clock()

    def region(self, name):
        """Context manager timing its body as region `name`."""
        if not self.enabled:
            return _NO_OP
        region = self._regions.get(name)
        if region is None:
            region = self._regions[name] = _Region(self, name)
        return region

    def start(self, name):
        """Open region `name` (closed by `stop(name)`, possibly in another function)."""
        if not self.enabled:
            return
        if name in self._open:
            raise RuntimeError(f"timer region {name!r} started twice without stop")
        self._open[name] = self._now()

    def stop(self, name):
        """Close region `name`; returns the seconds it was open (0.0 when disabled)."""
        if not self.enabled:
            return 0.0
        end = self._now()
        try:
            begin = self._open.pop(name)
        except KeyError:
            raise RuntimeError(f"timer region {name!r} stopped without start") from None
        self._totals[name] = self._totals.get(name, 0.0) + (end - begin)
        if self._tracing:
            self._events.append(TraceEvent(name, begin, end))
        return end - begin

    def add(self, name, seconds):
        """Charge `seconds` measured elsewhere (e.g. on a progress thread) to region `name`."""
        if self.enabled:
            self._totals[name] = self._totals.get(name, 0.0) + seconds

    def collect(self):
        """Seconds per region for the step that just ended; resets the totals and advances the step."""
        if not self.enabled:
            return {}
        if self._open:
            raise RuntimeError(f"timer regions still open at the end of a step: {sorted(self._open)}")
        totals, self._totals = self._totals, {}
        self._step += 1
        self._tracing = self._in_window(self._step)
        return totals

    def trace_events(self):
        """The recorded events of the trace window (clock readings in seconds)."""
        return list(self._events)
