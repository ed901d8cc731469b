"""Chrome/Perfetto trace JSON: valid JSON, one complete event per timer event, one track per rank."""
import json

from hpclm.timing.timer import TraceEvent
from hpclm.timing.trace import write_chrome_trace


def test_trace_json_has_one_track_per_rank(tmp_path):
    events = [[TraceEvent("forward", 10.0 + r, 10.5 + r), TraceEvent("comm", 10.5 + r, 10.75 + r)] for r in range(3)]
    path = tmp_path / "trace.json"
    write_chrome_trace(path, events)
    trace = json.loads(path.read_text())["traceEvents"]
    complete = [e for e in trace if e["ph"] == "X"]
    assert len(complete) == 6
    assert {e["tid"] for e in complete} == {0, 1, 2}
    names = {e["tid"]: e["args"]["name"] for e in trace if e["name"] == "thread_name"}
    assert names == {0: "rank 0", 1: "rank 1", 2: "rank 2"}
    first_comm_rank2 = [e for e in complete if e["tid"] == 2 and e["name"] == "comm"][0]
    assert first_comm_rank2["ts"] == 2.5e6 and first_comm_rank2["dur"] == 0.25e6
    assert min(e["ts"] for e in complete) == 0.0
