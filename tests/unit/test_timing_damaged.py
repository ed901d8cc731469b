"""A damaged or truncated timing record gives one line and exit 2 within seconds, never a hang
(issue 12, item 1); the record of a killed writer (left open for writing) still reads.

HDF5's SWMR reader, which the reader needs for a file whose writer was killed, used to retry a
failing checksum for hours, and a truncated file sent it there."""
import concurrent.futures
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainutil import env  # noqa: E402

TIMEOUT = 30

# Writes RUN_DIR/timing.h5 of 200 steps; "kill" leaves it open for writing as a SIGKILL would.
WRITER = textwrap.dedent("""
    import os, sys
    from hpclm.timing.recorder import Recorder
    rec = Recorder(sys.argv[1], None, {"config_json": "{}"}, flush_every=2)
    for step in range(200):
        rec.log_step(step, {"forward": 0.01, "backward": 0.02}, bytes_sent=100, loss=3.0, tokens=64)
        if step % 7 == 0:
            rec.log_eval(step, 2.5)
    if sys.argv[2] == "kill":
        rec.flush()
        os._exit(0)
    rec.close()
""")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    for how in ("close", "kill"):
        subprocess.run([sys.executable, "-c", WRITER, str(root / how), how], check=True, timeout=60, env=env())
    return root


def analyze(run_dir):
    try:
        return subprocess.run([sys.executable, "-m", "hpclm.cli", "analyze", str(run_dir)], capture_output=True,
                              text=True, timeout=TIMEOUT, env=env())
    except subprocess.TimeoutExpired:
        pytest.fail(f"hpclm analyze {run_dir} still running after {TIMEOUT} s (hang)")


def damaged_copy(src, dst, *, cut=None, overwrite_at=None):
    data = (src / "timing.h5").read_bytes()
    if cut is not None:
        data = data[:int(len(data) * cut)]
    if overwrite_at is not None:
        at = int(len(data) * overwrite_at)
        data = data[:at] + np.random.default_rng(0).bytes(8192) + data[at + 8192:]
    dst.mkdir()
    (dst / "timing.h5").write_bytes(data)
    return data


def assert_one_error_line(proc, *words):
    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hpclm: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


# Reads every given record in one process (one interpreter start-up for all of them).
READ_ALL = textwrap.dedent("""
    import sys
    from hpclm.errors import UserError
    from hpclm.timing.reader import read_run
    for path in sys.argv[1:]:
        try:
            print(path, "read", read_run(path).n_steps)
        except UserError as exc:
            print(path, "refused", str(exc).replace(chr(10), " "))
""")

DAMAGE = [("cut", c) for c in (0.1, 0.5, 0.9, 0.99)] + [("overwrite", s) for s in (0.2, 0.5, 0.8)]


def test_every_damaged_copy_is_refused_within_seconds(tmp_path, records):
    """Cut at 10-99 %, or 8 KiB overwritten in metadata or raw data (Fletcher-32), of a closed
    record and of a killed writer's one: each is refused, none hangs, none is altered."""
    copies = {}
    for how in ("close", "kill"):
        for kind, where in DAMAGE:
            dst = tmp_path / f"{how}-{kind}{where}"
            copies[dst] = damaged_copy(records / how, dst, **({"cut": where} if kind == "cut" else {"overwrite_at": where}))
    try:
        proc = subprocess.run([sys.executable, "-c", READ_ALL] + [str(d) for d in copies], capture_output=True,
                              text=True, timeout=TIMEOUT, env=env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"reading the damaged records did not end within {TIMEOUT} s (hang) after: {exc.stdout}")
    assert proc.returncode == 0, proc.stderr
    results = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    for dst, data in copies.items():
        outcome = results[str(dst)]
        assert outcome.startswith("refused"), (dst, outcome)
        assert ("truncated" if "-cut" in dst.name else "damaged") in outcome, (dst, outcome)
        assert (dst / "timing.h5").read_bytes() == data                  # read, never repaired


def test_analyze_damaged_record_one_line_exit_2(tmp_path, records):
    cut = tmp_path / "cut"
    damaged_copy(records / "close", cut, cut=0.5)
    overwritten = tmp_path / "overwritten"
    damaged_copy(records / "kill", overwritten, overwrite_at=0.2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        cut_proc, overwritten_proc = pool.map(analyze, [cut, overwritten])
    assert_one_error_line(cut_proc, "truncated", str(cut))
    assert_one_error_line(overwritten_proc, "damaged", str(overwritten))


def test_killed_writers_record_still_analyzes(records, capsys):
    from hpclm.cli import main
    assert main(["analyze", str(records / "kill")]) == 0
    assert "199 steps counted" in capsys.readouterr().out
