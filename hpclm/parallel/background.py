"""Collectives run on the communication thread (hpclm.comm.nonblocking) while the training thread
computes, with their time charged to the step's timer afterwards.

    bg = Background(group)                  # collective: the thread's private Dup of group, made now
    req = bg.start(fn, *args)               # fn(shadow_comm, *args, timer=a private Timer) on the thread
    bg.wait(requests, timer)                # comm_wait while waiting; then the jobs' regions charged:
                                            # `comm` as comm_async (in flight, maybe hidden), the others
                                            # (compress, decompress, ...) under their own names
"""
import threading

from hpclm.comm.nonblocking import shadow, start
from hpclm.timing.timer import Timer


class Background:
    def __init__(self, group):
        self.group = group
        self._measured = {}                  # region -> seconds measured on the communication thread
        self._lock = threading.Lock()
        shadow(group)                        # collective Dup now, on the main thread, not inside backward

    def _run(self, wire_comm, fn, args):
        timer = Timer()
        result = fn(wire_comm, *args, timer=timer)
        with self._lock:
            for region, seconds in timer.collect().items():
                region = "comm_async" if region == "comm" else region
                self._measured[region] = self._measured.get(region, 0.0) + seconds
        return result

    def start(self, fn, *args):
        return start(self._run, self.group, fn, args)

    def wait(self, requests, timer=None):
        """Wait for `requests` (timed as comm_wait), then charge what the thread measured to `timer`."""
        timer and timer.start("comm_wait")
        for req in requests:
            req.wait()
        timer and timer.stop("comm_wait")
        with self._lock:
            measured, self._measured = self._measured, {}
        if timer:
            for region, seconds in measured.items():
                timer.add(region, seconds)
