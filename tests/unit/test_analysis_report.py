"""`hpclm analyze` end to end on records written to disk: text report, comparison, CSV, PNG plots."""
import csv

import numpy as np
import pytest

from hpclm.cli import main
from hpclm.timing import schema
from hpclm.timing.writer import TimingWriter


def write_run(run_dir, world_size, step_time, n_steps=8):
    """A record where every rank spends 60% of `step_time` in forward and 20% in comm."""
    run_dir.mkdir()
    regions = schema.region_columns()
    columns = schema.rank_columns(regions)
    rows = np.zeros((world_size, n_steps, len(columns)))
    rows[:, :, columns.index("time/forward")] = 0.6 * step_time
    rows[:, :, columns.index("time/comm")] = 0.2 * step_time
    rows[:, :, columns.index("step_time")] = step_time
    rows[-1, :, columns.index("step_time")] = 1.5 * step_time     # the last rank straggles
    rows[:, :, columns.index("tokens")] = 1000
    rows[:, :, columns.index("bytes_sent")] = 2e6
    global_rows = np.column_stack([np.full(n_steps, 1e-3), np.ones(n_steps), np.linspace(5, 4, n_steps),
                                   np.arange(1, n_steps + 1) * step_time])
    meta = {"world_size": world_size, "schema_version": schema.SCHEMA_VERSION, "start_time": "now",
            "hostnames_json": ["h"] * world_size, "node_local_rank_json": list(range(world_size))}
    writer = TimingWriter(run_dir / schema.FILE_NAME, world_size, regions, meta, chunk_rows=4)
    writer.append_steps(np.arange(n_steps), rows, global_rows)
    writer.append_eval(n_steps - 1, 4.1, 4.0)
    writer.close()
    return run_dir, len(regions)


def test_report_compares_runs_and_writes_csv_and_plots(tmp_path, capsys):
    small, n_regions = write_run(tmp_path / "p2", 2, 0.10)
    large, _ = write_run(tmp_path / "p4", 4, 0.15)
    plots, table = tmp_path / "plots", tmp_path / "table.csv"
    assert main(["analyze", str(small), str(large), "--plots", str(plots), "--csv", str(table)]) == 0
    out = capsys.readouterr().out
    assert "p2: 2 ranks, 7 steps counted" in out
    # compute: p2 = 2 x 0.06 / (0.10 + 0.15), p4 = 4 x 0.09 / (3 x 0.15 + 0.225)
    assert "compute  48.0% | exposed communication  16.0%" in out
    assert "compute  53.3% | exposed communication  17.8%" in out
    # stragglers against the median across ranks: p2 median 0.125 s, p4 median 0.15 s
    assert "rank 1 +20.0%" in out and "rank 3 +50.0%" in out
    # tokens/s: p2 = 2000 / 0.15 s, p4 = 4000 / 0.225 s -> speedup 1.33, efficiency 66.7%
    p4_row = [line for line in out.splitlines() if line.startswith("p4 ")][0]
    assert p4_row.split()[-2:] == ["1.33", "66.7%"]
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == (n_regions + 1) * (2 + 4)
    straggler = [r for r in rows if r["run"] == "p4" and r["rank"] == "3" and r["region"] == "step_time"][0]
    assert float(straggler["median_s"]) == pytest.approx(0.225)
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["breakdown.png", "loss.png", "step_time_p2.png", "step_time_p4.png"]
    assert all((plots / n).stat().st_size > 1000 for n in names)


def test_missing_run_is_one_clean_error(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "no timing record" in capsys.readouterr().err


def test_tensor_parallel_share_of_the_step(tmp_path, capsys):
    """A record with a tp_comm region (nested in forward/backward) reports its share of the step."""
    run_dir = tmp_path / "tp"
    run_dir.mkdir()
    regions = schema.region_columns(("tp_comm",))
    columns = schema.rank_columns(regions)
    rows = np.zeros((2, 6, len(columns)))
    rows[:, :, columns.index("time/forward")] = 0.06
    rows[:, :, columns.index("time/tp_comm")] = 0.025
    rows[:, :, columns.index("step_time")] = 0.1
    rows[:, :, columns.index("tokens")] = 100
    global_rows = np.column_stack([np.full(6, 1e-3), np.ones(6), np.ones(6), np.arange(6.0)])
    meta = {"world_size": 2, "schema_version": schema.SCHEMA_VERSION, "start_time": "now",
            "hostnames_json": ["h"] * 2, "node_local_rank_json": [0, 1]}
    writer = TimingWriter(run_dir / schema.FILE_NAME, 2, regions, meta, chunk_rows=4)
    writer.append_steps(np.arange(6), rows, global_rows)
    writer.close()
    assert main(["analyze", str(run_dir)]) == 0
    assert "tensor-parallel communication (tp_comm, inside forward/backward): 25.0% of the step" in capsys.readouterr().out


def test_parameter_server_staleness_histogram_and_ps_bytes(tmp_path, capsys):
    """A ps worker's record: the staleness histogram comes from its /rank/metric/staleness, the
    pushes per worker from /rank/metric/pushes, and the ps group's bytes are their own column."""
    run_dir = tmp_path / "ps"
    run_dir.mkdir()
    regions = schema.region_columns()
    columns = schema.rank_columns(regions, ("staleness", "pushes"))
    rows = np.zeros((2, 4, len(columns)))
    rows[:, :, columns.index("step_time")] = 0.1
    rows[:, :, columns.index("tokens")] = 100
    rows[:, :, columns.index(schema.group_column("ps", "bytes_sent"))] = 3e6
    rows[:, :, columns.index("bytes_sent")] = 3e6
    rows[0, :, columns.index("metric/staleness")] = [0, 1, 1, 1]           # rank 0: fast, 3 pushes a step
    rows[1, :, columns.index("metric/staleness")] = [0, 6, 6, 7]           # rank 1: slow, 1 push a step
    rows[0, :, columns.index("metric/pushes")] = 3
    rows[1, :, columns.index("metric/pushes")] = 1
    global_rows = np.column_stack([np.full(4, 1e-3), np.ones(4), np.ones(4), np.arange(4.0)])
    meta = {"world_size": 2, "schema_version": schema.SCHEMA_VERSION, "start_time": "now",
            "hostnames_json": ["h"] * 2, "node_local_rank_json": [0, 1]}
    writer = TimingWriter(run_dir / schema.FILE_NAME, 2, regions, meta, chunk_rows=4, metrics=("staleness", "pushes"))
    writer.append_steps(np.arange(4), rows, global_rows)
    writer.close()
    assert main(["analyze", str(run_dir), "--skip-steps", "0"]) == 0
    out = capsys.readouterr().out
    hist = [line.split()[1:3] for line in out.splitlines() if line.startswith("    staleness ")]
    assert hist == [["0:", "2"], ["1:", "3"], ["6:", "2"], ["7:", "1"]], out
    assert "pushes per worker: rank 0 12, rank 1 4" in out
    assert "sent per group: ps 3.000 MB" in out and "other" not in out.split("sent per group:")[1].splitlines()[0]
