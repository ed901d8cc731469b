"""Chrome / Perfetto trace JSON from per-rank timer events: one track (thread) per rank.

Open the file in https://ui.perfetto.dev or chrome://tracing. Events are complete events
(ph "X") with ts/dur in microseconds, shifted so that the earliest event starts at 0.
"""
import json


def chrome_trace(events_per_rank):
    """The trace as a dict: `events_per_rank[r]` is rank r's list of (name, t_begin, t_end) seconds."""
    starts = [e[1] for events in events_per_rank for e in events]
    origin = min(starts) if starts else 0.0
    trace = [{"name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "hpclm"}}]
    for rank, events in enumerate(events_per_rank):
        trace.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": rank, "args": {"name": f"rank {rank}"}})
        trace.append({"name": "thread_sort_index", "ph": "M", "pid": 0, "tid": rank, "args": {"sort_index": rank}})
        for name, begin, end in events:
            trace.append({"name": name, "cat": "region", "ph": "X", "pid": 0, "tid": rank,
                          "ts": (begin - origin) * 1e6, "dur": (end - begin) * 1e6})
    return {"traceEvents": trace, "displayTimeUnit": "ms"}


def write_chrome_trace(path, events_per_rank):
    """Write `chrome_trace(events_per_rank)` to `path`."""
    with open(path, "w") as fh:
        json.dump(chrome_trace(events_per_rank), fh)
