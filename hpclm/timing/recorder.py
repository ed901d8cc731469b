"""Per-step timing rows of every rank, buffered locally and gathered to rank 0 every few steps.

Each rank fills a preallocated (flush_every, n_columns) float64 block, one row per `log_step`,
with no communication. Every `flush_every` steps (and at `close`) all ranks call ONE buffer
`Gather` of their filled rows; rank 0 appends them to RUN_DIR/timing.h5 (hpclm.timing.writer)
and flushes. Per flush rank 0 receives P x flush_every rows: O(P) data per step at rank 0
only, no per-step collective, one open file. `log_step` and `close` are collective in the sense
that every rank must call them equally often. `comm` is any object with mpi4py's `Get_rank`,
`Get_size`, `Gather`, `gather` and `Barrier` (duck typing keeps this layer free of mpi4py);
`None` means a single process.
"""
import datetime
import math
import os
import socket
import time

import numpy as np

from hpclm.timing import schema
from hpclm.timing.trace import write_chrome_trace
from hpclm.timing.writer import TimingWriter


def node_local_ranks(hostnames):
    """Each rank's index among the ranks on its host, from the per-rank host names."""
    seen = {}
    local = []
    for host in hostnames:
        local.append(seen.get(host, 0))
        seen[host] = local[-1] + 1
    return local


class Recorder:
    def __init__(self, run_dir, comm, meta, regions=(), flush_every=10, enabled=True, file_name=schema.FILE_NAME,
                 metrics=(), eval_metrics=()):
        """`regions`: extra region names beyond schema.REGIONS; `metrics`: optional per-rank
        measurement columns (log_step's `metrics`); `eval_metrics`: optional evaluation columns
        (log_eval's `extra`); `meta`: provenance attributes
        (config_json, git_commit, versions_json, layout_json, ...); world size, host names,
        node-local ranks, start time and schema version are filled in here."""
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.enabled = enabled
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.regions = schema.region_columns(regions)
        self.columns = schema.rank_columns(self.regions, metrics)
        self.metrics, self.eval_metrics = tuple(metrics), tuple(eval_metrics)
        self._region_index = {r: i for i, r in enumerate(self.regions)}
        self._field_index = {f: i for i, f in enumerate(self.columns) if not f.startswith("time/")}
        self.flush_every = flush_every
        self.path = os.path.join(run_dir, file_name)
        self._writer = None
        if not enabled:
            return
        self._rows = np.zeros((flush_every, len(self.columns)))
        self._steps = np.zeros(flush_every, dtype=np.int64)
        self._globals = np.full((flush_every, len(schema.GLOBAL_FIELDS)), np.nan)
        self._filled = 0
        hostnames = self._gather_object(socket.gethostname())
        if self.rank == 0:
            self._received = np.empty(self.size * flush_every * len(self.columns))
            full_meta = dict(meta, schema_version=schema.SCHEMA_VERSION, world_size=self.size,
                             start_time=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                             hostnames_json=hostnames, node_local_rank_json=node_local_ranks(hostnames))
            os.makedirs(run_dir, exist_ok=True)
            self._writer = TimingWriter(self.path, self.size, self.regions, full_meta, flush_every,
                                        self.metrics, self.eval_metrics)
        if comm is not None:
            comm.Barrier()
        self.t0 = time.perf_counter()   # common time origin of all ranks (just after a barrier)
        self._last_step_end = self.t0

    def _gather_object(self, obj):
        return [obj] if self.comm is None else self.comm.gather(obj, root=0)

    def log_step(self, step, region_times, *, step_time=None, bytes_sent=0, bytes_recv=0, bytes_by_group=None,
                 bytes_uncompressed=0, loss=math.nan, tokens=0, lr=math.nan, grad_norm=math.nan,
                 global_loss=math.nan, memory=None, metrics=None):
        """Buffer this rank's row of `step`. `region_times`: seconds per region (e.g.
        `timer.collect()`), absent regions count 0; `step_time` defaults to the time since the
        previous `log_step`. `bytes_by_group` {group: (sent, received)} (groups outside
        schema.GROUPS count as "other") fills the per-group columns, and then bytes_sent and
        bytes_recv are their sums. `memory` {kind: bytes} (schema.MEMORY_KINDS) what the rank holds.
        `metrics` {name: value} of the declared metric columns measured this step (others: NaN).
        lr, grad_norm and global_loss are global: rank 0's are stored."""
        if not self.enabled:
            return
        now = time.perf_counter()
        row = self._rows[self._filled]
        row[:] = 0.0
        for name, seconds in region_times.items():
            try:
                row[self._region_index[name]] = seconds
            except KeyError:
                raise ValueError(f"region {name!r} is not a column of this record; "
                                 f"pass it in Recorder(regions=...). Columns: {', '.join(self.regions)}") from None
        fields = self._field_index
        if bytes_by_group is not None:
            bytes_sent = bytes_recv = 0
            for group, (sent, recv) in bytes_by_group.items():
                group = group if group in schema.GROUPS else "other"
                row[fields[schema.group_column(group, "bytes_sent")]] += sent
                row[fields[schema.group_column(group, "bytes_recv")]] += recv
                bytes_sent, bytes_recv = bytes_sent + sent, bytes_recv + recv
        for kind, n in (memory or {}).items():
            row[fields[schema.memory_column(kind)]] = n
        for name in self.metrics:
            row[fields[schema.metric_column(name)]] = (metrics or {}).get(name, math.nan)
        row[fields["step_time"]] = now - self._last_step_end if step_time is None else step_time
        row[fields["bytes_sent"]] = bytes_sent
        row[fields["bytes_recv"]] = bytes_recv
        row[fields["bytes_uncompressed"]] = bytes_uncompressed
        row[fields["loss"]] = loss
        row[fields["tokens"]] = tokens
        self._steps[self._filled] = step
        self._globals[self._filled] = (lr, grad_norm, global_loss, now - self.t0)
        self._last_step_end = now
        self._filled += 1
        if self._filled == self.flush_every:
            self.flush()

    def flush(self):
        """Collective: gather the buffered rows to rank 0, which appends them and flushes the file."""
        if not self.enabled or self._filled == 0:  # all ranks logged equally often: all skip together
            return
        n, width = self._filled, len(self.columns)
        rows = self._rows[:n]
        if self.comm is None:
            received = rows[None]
        else:
            received = self._received[:self.size * n * width].reshape(self.size, n, width) if self.rank == 0 else None
            self.comm.Gather(rows, received, root=0)
        if self.rank == 0:
            self._writer.append_steps(self._steps[:n], received, self._globals[:n])
        self._filled = 0

    def log_eval(self, step, val_loss, train_loss=math.nan, extra=None):
        """Append one evaluation, with `extra` {name: value} of the declared eval_metrics (rank 0
        writes; other ranks ignore the call)."""
        if self._writer is not None:
            self._writer.append_eval(step, val_loss, train_loss, extra)

    def write_trace(self, timer):
        """Collective: gather every rank's trace events to rank 0 and write RUN_DIR/trace.json.
        Times are taken relative to this recorder's common origin (`timer` must use perf_counter)."""
        if not self.enabled:
            return
        events = [(e.name, e.begin - self.t0, e.end - self.t0) for e in timer.trace_events()]
        events_per_rank = self._gather_object(events)
        if self.rank == 0:
            write_chrome_trace(os.path.join(os.path.dirname(self.path), schema.TRACE_FILE_NAME), events_per_rank)

    def close(self):
        """Collective: flush what is buffered and close the file."""
        if not self.enabled:
            return
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self._writer is not None:  # no collective on an error path: keep what was flushed
            self._writer.close()
            self._writer = None
        return False
