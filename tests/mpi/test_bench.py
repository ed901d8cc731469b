"""`hpclm bench collectives` and `hpclm bench calibrate` run end to end under mpiexec: the check
mode, the JSON they write, the cost model fitted in the same sweep (--calibrate) or read from a
calibration file, and one clear error on every rank for bad arguments."""
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import assert_all

from hpclm.bench import calibrate
from hpclm.cli import main
from hpclm.comm import ALGORITHMS, costmodel

MPI_SIZES = (2, 3)
SIZES = "4,1K,64K,128K"                    # the least a calibration needs: <= 1 KiB and two >= 64 KiB


@pytest.fixture
def shared_dir(world):
    path = world.bcast(tempfile.mkdtemp() if world.Get_rank() == 0 else None)
    yield Path(path)
    world.Barrier()
    if world.Get_rank() == 0:
        shutil.rmtree(path)


def bench(*argv):
    return main(["bench", *argv])


def test_check_and_json(world, shared_dir):
    P, out, png = world.Get_size(), shared_dir / "sweep.json", shared_dir / "sweep.png"
    algorithms = [a for a in ALGORITHMS if a != "mpi"]
    rc = bench("collectives", "--check", "--sizes", "4,5K,64K", "--iters", "2", "--warmup", "1",
               "--algorithms", ",".join(algorithms), "--json", str(out), "--plot", str(png))
    assert_all(world, rc == 0, f"rc {rc}")
    world.Barrier()
    assert png.stat().st_size > 1000
    rows = json.loads(out.read_text())["rows"]
    assert {(r["bytes"], r["algorithm"]) for r in rows} == {(n, a) for n in (4, 5120, 65536) for a in ALGORITHMS}
    for r in rows:
        assert len(r["times_s"]) == 2 and r["min_us"] <= r["median_us"]
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 2 * (P - 1) / P)
        assert r["vs_mpi"] == 1.0 if r["algorithm"] == "mpi" else r["vs_mpi"] > 0


def test_calibrate_in_the_same_sweep(world, shared_dir):
    P, out = world.Get_size(), shared_dir / "samerun.json"
    rc = bench("collectives", "--calibrate", "--sizes", SIZES, "--iters", "3", "--warmup", "1",
               "--algorithms", "tree", "--json", str(out))
    assert_all(world, rc == 0, f"rc {rc}")
    world.Barrier()
    result = json.loads(out.read_text())
    params = costmodel.CostParams(**result["params"])
    assert result["calibration"]["how"] == "same run"
    assert result["algorithms"] == ["mpi", "tree", "recursive_doubling", "ring"]   # the fit needs rd and ring
    record = result["calibration"]
    assert len(record["step_s"]) == 4 and len(record["reduce_s"]) == 2 and len(record["rd_call_s"]) == 2
    # the parameters are calibrate's fit of the medians recorded (their values depend on the machine's noise)
    assert params == calibrate.fit(record["sizes"], record["step_s"], record["rd_call_s"], record["reduce_sizes"],
                                   record["reduce_s"])
    assert all(v is None or 0 <= v < float("inf") for v in result["params"].values())
    for r in result["rows"]:
        assert r["model_us"] == pytest.approx(costmodel.predict(r["algorithm"], r["bytes"], P, params) * 1e6)


def test_calibration_file_is_used(world, shared_dir):
    P, calib, out = world.Get_size(), shared_dir / "calibration.json", shared_dir / "sweep.json"
    rc = bench("calibrate", "--sizes", SIZES, "--iters", "3", "--out", str(calib))
    assert_all(world, rc == 0, f"calibrate rc {rc}")
    world.Barrier()
    params = costmodel.load_params(calib, world_size=P)
    rc = bench("collectives", "--sizes", "64K", "--iters", "2", "--algorithms", "ring,auto",
               "--calibration", str(calib), "--json", str(out))
    assert_all(world, rc == 0, f"collectives rc {rc}")
    world.Barrier()
    result = json.loads(out.read_text())
    assert costmodel.CostParams(**result["params"]) == params and result["calibration"]["how"] == str(calib)


@pytest.mark.parametrize("work,label", [("matmul", "matmuls"), ("sleep", " ms")])
def test_overlap_mode(world, shared_dir, work, label):
    out = shared_dir / "overlap.json"
    rc = bench("collectives", "--overlap", "--overlap-compute", work, "--overlap-size", "64K", "--iters", "2",
               "--algorithms", "ring,hierarchical,recursive_doubling", "--json", str(out))
    assert_all(world, rc == 0, f"rc {rc}")
    world.Barrier()
    rows = json.loads(out.read_text())["rows"]
    assert [r["algorithm"] for r in rows] == ["mpi", "ring", "recursive_doubling"]    # no non-blocking hierarchical
    for r in rows:
        assert r["serial_s"] == pytest.approx(r["comm_s"] + r["compute_s"]) and r["compute"].endswith(label)
        assert r["hidden"] == pytest.approx((r["serial_s"] - r["both_s"]) / min(r["comm_s"], r["compute_s"]))


@pytest.mark.parametrize("argv", [
    ["collectives", "--calibrate", "--sizes", "64K,128K"],                 # no size <= 1 KiB to fit alpha
    ["collectives", "--calibrate", "--calibration", "x.json", "--sizes", SIZES],
    ["collectives", "--sizes", "4,1X"],
    ["collectives", "--algorithms", "ring,bogus"],
    ["collectives", "--calibration", "/nonexistent/calibration.json"],
    ["collectives", "--iters", "0"],
    ["collectives", "--overlap", "--algorithms", "bogus"],
    ["calibrate", "--sizes", "64K,128K"],
    ["calibrate", "--iters", "0"],
])
def test_bad_arguments_are_one_error_on_every_rank(world, argv, capsys):
    rc = bench(*argv)
    err = capsys.readouterr().err
    assert_all(world, rc == 2, f"rc {rc}")
    lines = [line for line in err.splitlines() if line.startswith("hpclm: error")]
    assert_all(world, len(lines) == (1 if world.Get_rank() == 0 else 0), f"stderr {err!r}")
