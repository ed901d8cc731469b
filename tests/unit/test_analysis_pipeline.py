"""hpclm.analysis.pipeline: the measured bubble of a record whose stage times follow an ideal
GPipe / 1F1B run equals the closed form (p - 1)/(m + p - 1) and the schedule simulator's; the
timeline reads micro-batches in order from a Chrome trace; a run without a pipeline is refused."""
from pathlib import Path

import numpy as np
import pytest

from hpclm.analysis import pipeline as PA
from hpclm.errors import UserError
from hpclm.parallel.schedule import bubble_fraction, schedule, simulate
from hpclm.timing.reader import RunRecord


def ideal_record(name, p, m, f=1.0, b=2.0, steps=3, dp=1):
    """A record whose per-stage forward / backward / pp_wait come from the ideal-machine simulation."""
    slots = simulate(schedule(name, p, m), forward=f, backward=b)
    span = max(x.end for x in slots)
    times = {k: np.zeros((steps, p * dp)) for k in ("forward", "backward", "pp_wait")}
    for x in slots:
        for rep in range(dp):
            times["forward" if x.op.kind == "F" else "backward"][:, x.stage * dp + rep] += x.end - x.start
    for r in range(p * dp):
        end = max(x.end for x in slots if x.stage == r // dp)
        times["pp_wait"][:, r] = end - times["forward"][0, r] - times["backward"][0, r]
    meta = {"world_size": p * dp, "layout_json": {"dp": dp, "tp": 1, "pp": p},
            "config_json": {"parallel": {"pp": p, "micro_batches": m, "schedule": name}}}
    return RunRecord(Path("run/timing.h5"), meta, np.arange(steps), times, {}, {}, {}), slots, span


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m", [(2, 1), (2, 8), (4, 4), (4, 16)])
def test_bubble_of_an_ideal_run_is_the_closed_form(name, p, m):
    record, slots, _ = ideal_record(name, p, m)
    got = PA.bubble(record, skip_steps=1)
    assert got.measured == pytest.approx(PA.closed_form(p, m), rel=1e-12)
    assert got.measured == pytest.approx(bubble_fraction(slots), rel=1e-12)
    assert got.per_stage[0] == pytest.approx(PA.closed_form(p, m), rel=1e-12)   # stage 0 idles the whole bubble
    assert got.slowest_idle == pytest.approx(PA.closed_form(p, m), rel=1e-12)   # so does every stage
    assert (got.pp, got.micro_batches, got.schedule) == (p, m, name)


def test_bubble_with_dp_replicas_and_an_unbalanced_stage():
    record, _, _ = ideal_record("1f1b", 2, 4, dp=2)
    assert PA.bubble(record).measured == pytest.approx(PA.closed_form(2, 4))
    record.times["backward"][:, 2:] *= 3.0            # stage 1 (ranks 2, 3) three times slower backward
    record.times["pp_wait"][:, :2] += 10.0            # and stage 0 waits for it
    assert PA.bubble(record).measured > PA.closed_form(2, 4)


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_unbalanced_stages_the_schedule_with_their_times_is_the_measured_bubble(name):
    """Stage 1 computes 20 % (forward) and 25 % (backward) more: stage 0 idles at every micro-batch,
    the measured bubble exceeds the closed form, the per-op times read back from the record are the
    stages' own, and the schedule simulated with them (`hpclm schedule --run`) gives the measured one."""
    from hpclm.schedule import with_stage_times
    f, b, p, m = [1.0, 1.2], [2.0, 2.5], 2, 8
    record, _, _ = ideal_record(name, p, m, f=f, b=b)
    got = PA.bubble(record)
    assert got.measured > PA.closed_form(p, m) + 0.05
    assert got.forward_op == pytest.approx(f, rel=1e-12) and got.backward_op == pytest.approx(b, rel=1e-12)
    assert with_stage_times(got) == pytest.approx(got.measured, rel=1e-12)
    assert got.slowest_stage == 1 and got.slowest_idle < PA.closed_form(p, m) < got.per_stage[0]
    balanced, _, _ = ideal_record(name, p, m)
    assert with_stage_times(PA.bubble(balanced)) == pytest.approx(PA.closed_form(p, m), rel=1e-12)


def test_not_a_pipeline_run_is_refused():
    record, _, _ = ideal_record("gpipe", 2, 2)
    record.meta["layout_json"]["pp"] = 1
    with pytest.raises(UserError, match="not a pipeline run"):
        PA.bubble(record)


def test_trace_boxes_number_the_micro_batches_in_order():
    events = []
    for rank in range(2):
        t = 10.0 * rank
        for j in range(3):
            events.append({"name": "forward", "ph": "X", "tid": rank, "ts": t, "dur": 1.0}); t += 2
        events.append({"name": "pp_wait", "ph": "X", "tid": rank, "ts": t, "dur": 1.0}); t += 2
        for j in range(3):
            events.append({"name": "backward", "ph": "X", "tid": rank, "ts": t, "dur": 2.0}); t += 3
        events.append({"name": "optimizer", "ph": "X", "tid": rank, "ts": t, "dur": 1.0}); t += 2
        events.append({"name": "forward", "ph": "X", "tid": rank, "ts": t, "dur": 1.0})   # next step
        events.append({"name": "backward", "ph": "X", "tid": rank, "ts": t + 2, "dur": 1.0})
    boxes = PA.trace_boxes({"traceEvents": events[::-1]}, pp=2)
    for s in range(2):
        kinds = [(k, j) for k, j, _, _ in sorted(boxes[s], key=lambda x: x[2])]
        assert kinds == [("F", 0), ("F", 1), ("F", 2), ("W", -1), ("B", 0), ("B", 1), ("B", 2)]
    with pytest.raises(UserError, match="stages"):
        PA.trace_boxes({"traceEvents": events}, pp=3)
