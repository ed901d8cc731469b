"""The `hpclm` command: `hpclm train|sample|analyze|cluster|bench <what>`.

Each subcommand lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`;
they are imported only when chosen, so `hpclm sample` never starts MPI. Error policy:
- UserError (bad input) -> one line `hpclm: error: ...` (from rank 0 when every rank raised it,
  which is how setup errors are made: see hpclm.parallel.agree), exit code 2, no traceback;
- any other exception under MPI with more than one rank -> that rank's traceback, then
  MPI_Abort so no rank hangs (the effect of `python -m mpi4py`).
Before MPI_Abort the message is flushed and handed on (hpclm.errors.drain_stderr): mpiexec ends
the job on the abort and drops output its proxy has not read yet. When several ranks fail at
once, rank 0's report is the one printed: the others wait a moment, and rank 0's abort ends them.
Every command runs with malloc keeping freed large blocks (hpclm.heap).
"""
import argparse
import importlib
import sys
import time
import traceback

from hpclm import heap
from hpclm.errors import UserError, drain_stderr
from hpclm.version import __version__

COMMANDS = {
    "train": ("hpclm.train", "train a model (single process or data-parallel under mpiexec/srun)"),
    "sample": ("hpclm.sample", "generate text from a checkpoint"),
    "analyze": ("hpclm.analysis.report", "summarise timing records of one or more runs"),
    "memory": ("hpclm.memory", "predict per-rank memory of a config on N ranks (ZeRO stages 0-3)"),
    "schedule": ("hpclm.schedule", "print a pipeline schedule (gpipe, 1f1b, interleaved) as a diagram"),
    "cluster": ("hpclm.cluster.cli", "emulated cluster on this machine: up, run, down, status (root)"),
}
BENCHMARKS = {
    "model": ("hpclm.bench.model", "step time, tokens/s and MFU of the model on this machine"),
    "collectives": ("hpclm.bench.collectives", "time every all-reduce algorithm next to MPI's own"),
    "calibrate": ("hpclm.bench.calibrate", "fit the alpha-beta-gamma cost model on this machine"),
    "compress": ("hpclm.bench.compress", "GB/s and bytes on the wire of every compressor next to memcpy"),
}


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` shows each option's default, where it has one and its text does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default in (argparse.SUPPRESS, [])
        if action.option_strings and not unset and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _add(sub, name, module, help_text):
    parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter)
    try:
        importlib.import_module(module).add_arguments(parser)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        parser.set_defaults(_missing=module)
    parser.set_defaults(_module=module)
    return parser


def build_parser(argv):
    parser = argparse.ArgumentParser(prog="hpclm", description="Communication-efficient LM training over MPI.")
    parser.add_argument("--version", action="version", version=f"hpclm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,analyze,memory,schedule,cluster,bench}")
    # Import only the module of the chosen command (argparse needs its arguments).
    chosen = [a for a in argv if not a.startswith("-")][:2]
    for name, (module, help_text) in COMMANDS.items():
        if chosen[:1] == [name]:
            _add(sub, name, module, help_text)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    bench = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS))
    bench_sub = bench.add_subparsers(dest="benchmark", required=True, metavar="{" + ",".join(BENCHMARKS) + "}")
    for name, (module, help_text) in BENCHMARKS.items():
        if chosen == ["bench", name]:
            _add(bench_sub, name, module, help_text)
        else:
            bench_sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _abort(code):
    """MPI_Abort the job after this rank's report has left the process."""
    drain_stderr()
    sys.modules["mpi4py.MPI"].COMM_WORLD.Abort(code)


def _yield_to_rank_0(rank):
    """A failing rank other than 0 waits briefly: if rank 0 fails too, its report and abort come first."""
    if rank != 0:
        time.sleep(OTHER_RANKS_DELAY_S)


OTHER_RANKS_DELAY_S = 1.0


def _world():
    """(rank, size) if MPI has been started by the chosen command, else (0, 1)."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return 0, 1
    return mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"hpclm: error: {args._missing} is not part of this build", file=sys.stderr)
        return 2
    heap.keep_freed_blocks()
    try:
        return importlib.import_module(args._module).run(args) or 0
    except UserError as exc:
        rank, size = _world()
        if getattr(exc, "collective", False) or size == 1:
            if rank == 0:
                print(f"hpclm: error: {exc}", file=sys.stderr, flush=True)
            return 2
        _yield_to_rank_0(rank)
        print(f"hpclm: error on rank {rank}: {exc}", file=sys.stderr, flush=True)
        _abort(2)
    except KeyboardInterrupt:
        return 130
    except BaseException:
        rank, size = _world()
        if size == 1:
            raise
        _yield_to_rank_0(rank)
        sys.stderr.write(f"hpclm: uncaught exception on rank {rank}, aborting all {size} ranks\n")
        traceback.print_exc()
        _abort(1)
    return 1


if __name__ == "__main__":
    sys.exit(main())
