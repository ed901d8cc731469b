"""The abort path of a multi-rank job always reports, and reports once (issue 12, item 6).

An uncaught exception makes the failing rank print its report and MPI_Abort the job; mpiexec
tears the job down on the abort and used to drop a report its proxy had not read yet (a few
percent of runs printed nothing). When every rank fails at the same point (a bug every rank
hits), only one report is printed. Each job fails in a stand-in for a subcommand, right after the
ranks meet at a barrier, so fifty of them stay cheap."""
import concurrent.futures
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainutil import env, mpiexec  # noqa: E402

REPEATS = 50

# The subcommand's run(): rank 1 (or every rank) raises after a barrier; a rank that does not
# fail waits in the next collective, as it would in a training step.
LAUNCHER = textwrap.dedent("""
    import sys
    from mpi4py import MPI
    import hpclm.analysis.report as command
    world, who = MPI.COMM_WORLD, sys.argv[1]
    def run(args):
        world.Barrier()
        if who == "all" or world.Get_rank() == 1:
            raise RuntimeError(f"injected failure on rank {world.Get_rank()}")
        world.Barrier()
    command.run = run
    from hpclm.cli import main
    sys.exit(main(["analyze", sys.argv[2]]))
""")


def failing_job(who, out_dir):
    cmd = [mpiexec(), "-n", "2", sys.executable, "-c", LAUNCHER, who, str(out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env())
    return proc.returncode, proc.stderr


def test_every_abort_prints_its_report_once(tmp_path):
    jobs = ["one" if i % 2 else "all" for i in range(REPEATS)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(failing_job, jobs, [tmp_path / f"r{i}" for i in range(REPEATS)]))
    bad = []
    for who, (rc, err) in zip(jobs, results):
        reports = err.count("hpclm: uncaught exception on rank")
        injected = err.count("RuntimeError: injected failure on rank")
        if rc == 0 or reports != 1 or injected != 1 or (who == "one" and "on rank 1" not in err):
            bad.append((who, rc, err[-600:]))
    assert not bad, f"{len(bad)} of {REPEATS} failing jobs did not print exactly one report: {bad[:3]}"
