"""The timing record round-trips: every per-rank, global and eval field and the run metadata."""
import json

import h5py
import numpy as np
import pytest

from hpclm.errors import UserError
from hpclm.timing import schema
from hpclm.timing.reader import read_run
from hpclm.timing.recorder import Recorder, node_local_ranks
from hpclm.timing.timer import Timer

META = {"config_json": {"model": {"n_layer": 2}}, "git_commit": "0123abc", "versions_json": {"numpy": "2"},
        "layout_json": {"dp": 1}, "calibration_json": {"alpha": 1e-6}, "note": "extra", "nodes": 1}


def value(step, column):
    """A distinct, exactly representable value per (step, column)."""
    return step * 100 + column + 0.5


def log_known_steps(rec, n_steps):
    regions = rec.regions
    for step in range(n_steps):
        times = {r: value(step, i) for i, r in enumerate(regions)}
        base = len(regions)
        rec.log_step(step, times, step_time=value(step, base), bytes_sent=value(step, base + 1),
                     bytes_recv=value(step, base + 2), bytes_uncompressed=value(step, base + 3),
                     loss=value(step, base + 4), tokens=value(step, base + 5), lr=-value(step, 1),
                     grad_norm=-value(step, 2), global_loss=-value(step, 3))


def test_every_field_round_trips(tmp_path):
    with Recorder(tmp_path, None, META, regions=("bucket_0",), flush_every=4) as rec:
        log_known_steps(rec, 10)   # 2 full flushes + 2 rows written at close
        rec.log_eval(5, 2.5, 2.25)
        rec.log_eval(9, 2.0, 1.75)
    run = read_run(tmp_path)
    assert list(run.step) == list(range(10)) and run.world_size == 1
    regions = schema.region_columns(("bucket_0",))
    assert list(run.times) == list(regions)
    steps = np.arange(10)
    for i, region in enumerate(regions):
        np.testing.assert_array_equal(run.times[region][:, 0], value(steps, i))
    for j, field in enumerate(schema.RANK_FIELDS):
        np.testing.assert_array_equal(run.per_rank[field][:, 0], value(steps, len(regions) + j))
        assert run.per_rank[field].shape == (10, 1)
    for k, field in enumerate(("lr", "grad_norm", "loss"), start=1):
        np.testing.assert_array_equal(run.per_step[field], -value(steps, k))
    assert np.all(np.diff(run.per_step["elapsed"]) >= 0)
    np.testing.assert_array_equal(run.evals["step"], [5, 9])
    np.testing.assert_array_equal(run.evals["val_loss"], [2.5, 2.0])
    np.testing.assert_array_equal(run.evals["train_loss"], [2.25, 1.75])
    for key, expected in META.items():
        assert run.meta[key] == expected
    assert run.meta["schema_version"] == schema.SCHEMA_VERSION
    assert len(run.meta["hostnames_json"]) == 1 and run.meta["node_local_rank_json"] == [0]


def test_unknown_region_is_rejected(tmp_path):
    rec = Recorder(tmp_path, None, {})
    with pytest.raises(ValueError, match="not a column"):
        rec.log_step(0, {"mystery": 1.0})
    rec.close()


def test_metadata_must_be_json_or_scalar(tmp_path):
    with pytest.raises(TypeError, match="_json"):
        Recorder(tmp_path, None, {"hosts": ["a", "b"]})


def test_disabled_recorder_writes_nothing(tmp_path):
    rec = Recorder(tmp_path / "run", None, {}, enabled=False)
    rec.log_step(0, {"forward": 1.0})
    rec.write_trace(Timer())
    rec.close()
    assert not (tmp_path / "run").exists()


def test_trace_written_next_to_the_record(tmp_path):
    timer = Timer(trace_steps=(0, 2))
    rec = Recorder(tmp_path, None, {})
    for step in range(3):
        with timer.region("forward"):
            pass
        rec.log_step(step, timer.collect())
    rec.write_trace(timer)
    rec.close()
    events = [e for e in json.loads((tmp_path / schema.TRACE_FILE_NAME).read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(events) == 2 and {e["tid"] for e in events} == {0}


def test_node_local_ranks():
    assert node_local_ranks(["a", "a", "b", "a", "b"]) == [0, 1, 0, 2, 1]


def test_reader_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no timing record"):
        read_run(tmp_path / "missing")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(UserError, match="not a readable HDF5"):
        read_run(garbage)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = [1, 2]
    with pytest.raises(UserError, match="not an hpclm timing record"):
        read_run(foreign)
    future = tmp_path / "future"
    Recorder(future, None, {}).close()
    with h5py.File(future / schema.FILE_NAME, "r+") as f:
        f.attrs["schema_version"] = schema.SCHEMA_VERSION + 1
    with pytest.raises(UserError, match="schema version"):
        read_run(future)
