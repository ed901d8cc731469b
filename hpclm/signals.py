"""SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) of a training run.

During set-up there is nothing to save: a signal ends the process at once (exit 128 + signal
number), rank 0 saying so in one line. A thread watches the signal wake-up pipe, so this works
even while the main thread is blocked inside an MPI call waiting for a peer, where Python's own
handlers cannot run. The same thread says once when set-up has taken unusually long, and what
may be waiting. From `start_loop()` on, a signal asks the loop to stop at the next step boundary
(`stop["signal"]`: checkpoint, timing record, exit 0; Slurm pre-emption); a second signal ends
the process at once, without a checkpoint.
"""
import os
import select
import signal
import sys
import threading
import time

from hpclm.errors import drain_stderr

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
SLOW_SETUP_S = 120.0
OTHER_RANKS_DELAY_S = 0.5


class RunSignals:
    """Install with the run's `stop` dict ({"signal": None}); `start_loop()` before the first step,
    `restore()` at the end (handlers and wake-up fd as they were)."""

    def __init__(self, stop, rank, slow_setup_s=SLOW_SETUP_S):
        self.stop, self.rank, self.slow_setup_s = stop, rank, slow_setup_s
        self.in_loop = False
        self._ending = threading.Lock()
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self.previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        self._previous_wakeup = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="hpclm-signals", daemon=True)
        self._watcher.start()

    def _on_signal(self, signum, _frame):
        if not self.in_loop:
            self._end(signum, "during set-up, before the first step; nothing to save")
        elif self.stop["signal"] is None:
            self.stop["signal"] = signum
        else:
            self._end(signum, "again while stopping; exiting without a checkpoint")

    def _watch(self):
        """Set-up only: end the process on a signal even if the main thread is stuck in C."""
        warned = False
        while True:
            ready, _, _ = select.select([self._read], [], [], None if warned else self.slow_setup_s)
            if not ready:
                warned = True
                self._say(f"hpclm: still setting up after {self.slow_setup_s:.0f} s (reading or tokenising the "
                          f"data, building the model, or waiting for another rank); Ctrl-C or SIGTERM stops it")
                continue
            data = os.read(self._read, 64)
            if not data or 0 in data or self.in_loop:         # 0: start_loop() ends the watch
                return
            self._end(data[0], "during set-up, before the first step; nothing to save")

    def _say(self, line):
        if self.rank == 0:
            try:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def _end(self, signum, when):
        """Exit now. Under mpiexec every rank gets the signal: the others give rank 0 a moment to
        report before their exit makes the launcher end the job. The handler and the watch thread
        may both get here for one signal: the first one ends the process, the other waits for it."""
        if not self._ending.acquire(blocking=False):
            while True:
                time.sleep(60)
        self._say(f"hpclm: stopped by {signal.Signals(signum).name} {when}")
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        drain_stderr()
        if self.rank != 0:
            time.sleep(OTHER_RANKS_DELAY_S)
        os._exit(128 + signum)

    def start_loop(self):
        """From now on a signal means: stop at the next step boundary."""
        self.in_loop = True
        signal.set_wakeup_fd(self._previous_wakeup)
        os.write(self._write, b"\0")
        self._watcher.join()

    def restore(self):
        if not self.in_loop:
            self.in_loop = True
            signal.set_wakeup_fd(self._previous_wakeup)
            os.write(self._write, b"\0")
            self._watcher.join()
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        os.close(self._read)
        os.close(self._write)
