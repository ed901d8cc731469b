"""`hpclm train`: config -> groups -> data -> model -> strategy -> `train_step` loop.

Runs as one process (`hpclm train`) or as an MPI job (`mpiexec -n 4 hpclm train`,
`srun hpclm train`). `[parallel]` lays the world out as dp x tp x pp (hpclm.comm.Groups); every
dp rank draws its shard of the global batch, and the strategy that hpclm.parallel.build chooses
from the config (a DistributedOptimizer: gradient sync -> clip -> update -> after) makes the
update; the loop calls `train_step` and never asks which strategy it holds. Evaluation rows,
loss averages and byte counts use the dp group. World rank 0 prints and writes checkpoints and
the timing record. SIGTERM/SIGUSR1 (Slurm pre-emption) or SIGINT: all ranks agree at the next
step boundary, save a checkpoint, flush timing and exit 0, so the job can be requeued with
--resume; during set-up they end the run at once (hpclm.signals).

Asynchronous strategies (`strategy.asynchronous`: ps async/ssp, gossip adpsgd) run the loop in
rounds (`asynchronous_round`): the stop agreement is a non-blocking all-reduce a rank tests while
it keeps training (train.run_ahead), so a fast rank takes more steps than a slow one instead of
waiting for it; max_steps counts rounds, and evaluation, the timing record and checkpoints happen
at round boundaries (agreed points).
"""
import functools
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from hpclm import checkpoint as ckpt_io
from hpclm import comm as collectives
from hpclm import guard, kernels, rundir
from hpclm import xp as X
from hpclm.config import build_config, config_from_json
from hpclm.data import BatchSampler, eval_offsets, get_batch, load_tokens, prepare
from hpclm.errors import UserError
from hpclm.model import GPT
from hpclm.model.stage import StageModel
from hpclm.model.threaded import ThreadedGPT
from hpclm.optim import lr_at
from hpclm.parallel.agree import collective_error, collectively
from hpclm.parallel.build import build_strategy, stage_ranges
from hpclm.signals import RunSignals
from hpclm.timing.recorder import Recorder
from hpclm.timing.timer import Timer
from hpclm.version import __version__


def add_arguments(p):
    p.add_argument("--config", metavar="TOML",
                   help="experiment file with [model], [data], [optim], [train], [comm], [compress] tables")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set model.n_layer=6 (repeatable)")
    p.add_argument("--data", metavar="FILE", help="text file to train on (same as --set data.path=FILE); "
                   "default: the built-in generated corpus")
    p.add_argument("--device", choices=("cpu", "gpu"), help="same as --set train.device=...")
    p.add_argument("--out", metavar="DIR", help="run directory (same as --set train.out_dir=DIR)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint file or run directory; "
                   "its stored config is the base, --set may change e.g. train.max_steps")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoint, timing record and summary)")
    p.add_argument("--verbose", action="store_true", help="let every rank print, not only rank 0")


# ------------------------------------------------------------------------------------------ setup
def resolve_config(args):
    """(config, checkpoint or None): defaults <- TOML <- flags <- --set, or the checkpoint's config."""
    overrides = list(args.overrides)
    for flag, key in ((args.data, "data.path"), (args.device, "train.device"), (args.out, "train.out_dir")):
        if flag is not None:
            overrides.insert(0, f"{key}={flag}")
    ckpt = None
    base = None
    if args.resume:
        if args.config:
            raise UserError("--resume takes its config from the checkpoint; use --set to change values, not --config")
        ckpt = ckpt_io.Checkpoint(args.resume)
        base = config_from_json(ckpt.config_json)
        if args.out is None:
            overrides.insert(0, f"train.out_dir={os.path.dirname(os.path.abspath(ckpt.path))}")
    cfg = build_config(args.config, overrides, base=base)
    X.use(cfg.train.device)
    return cfg, ckpt


def load_data(cfg, world, rank, ckpt=None):
    """Rank 0 tokenises into the cache once; then every rank memory-maps the cached tokens."""
    collectively(world, lambda: prepare(cfg.data) if rank == 0 else None)
    data = collectively(world, load_tokens, cfg.data, cfg.model.block_size)
    if ckpt is not None and ckpt.tokenizer_json != data.tokenizer.to_json():
        raise collective_error(f"checkpoint {ckpt.path} was trained with a different vocabulary than {data.source}; "
                               f"resume with the data it was trained on (--data)")
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = data.tokenizer.vocab_size
    elif cfg.model.vocab_size < data.tokenizer.vocab_size:
        raise collective_error(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                        f"vocabulary ({data.tokenizer.vocab_size})")
    return data


def threads_per_rank(cfg, local_ranks):
    if cfg.train.device != "cpu":
        return 1
    if cfg.train.threads:
        return cfg.train.threads
    return max(1, len(os.sched_getaffinity(0)) // local_ranks)


def build_model(cfg, threads, groups, timer=None):
    """The GPT, with row-slice threads on CPU; ZeRO 2-3 hand each unit its buffers through a
    parameter source, which the one-thread model takes (BLAS still uses the threads). With
    parallel.pp > 1: this rank's pipeline stage; with parallel.tp > 1: this rank's shard
    (parallel/tensor.py), one thread (its collectives are MPI calls); with both: the stage of the
    shard (parallel/grid.py). parallel.recompute = block: blocks keep only their inputs and run their
    forward again in backward."""
    if cfg.parallel.pp > 1 and cfg.parallel.tp > 1:
        from hpclm.parallel.grid import build_grid_stage
        return build_grid_stage(cfg, groups, timer)
    if cfg.parallel.pp > 1:
        model = StageModel(cfg.model, stage_ranges(cfg)[groups.pp.Get_rank()], seed=cfg.train.seed,
                           dtype=cfg.train.dtype)
    elif cfg.parallel.tp > 1:
        from hpclm.parallel.tensor import build_tensor_model
        model = build_tensor_model(cfg, groups.tp, timer)
    else:
        model = GPT(cfg.model, seed=cfg.train.seed, dtype=cfg.train.dtype)
        model = ThreadedGPT(model, threads) if threads > 1 and cfg.parallel.zero < 2 else model
    model.recompute = cfg.parallel.recompute == "block"
    return model


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions():
    import h5py
    import mpi4py
    from mpi4py import MPI
    v = {"hpclm": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
         "h5py": h5py.__version__, "mpi4py": mpi4py.__version__,
         "mpi_library": MPI.Get_library_version().strip().splitlines()[0]}
    if X.device == "gpu":
        v["cupy"] = X.np.__version__
    return v


# ------------------------------------------------------------------------------------------ output
class Progress:
    """Rank 0's progress: a redrawn bar on a terminal, a log line every log_interval otherwise."""

    def __init__(self, total, enabled):
        self.total, self.enabled = total, enabled
        self.tty = enabled and sys.stdout.isatty()

    def update(self, step, text):
        if not self.enabled:
            return
        if self.tty:
            done = int(30 * (step + 1) / self.total)
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {text}", end="", flush=True)
        else:
            print(text, flush=True)

    def message(self, text):
        if self.enabled:
            print(("\n" if self.tty else "") + text, flush=True)


def evaluate(strategy, model, tokens, offsets, block_size, group):
    """Mean loss over the fixed evaluation batches (through the strategy: its parameter source, its
    pipeline); rows sharded across the dp group, summed over it."""
    rank, size = (0, 1) if group is None else (group.Get_rank(), group.Get_size())
    total, count = 0.0, 0
    for batch in offsets:
        rows = batch[rank * len(batch) // size:(rank + 1) * len(batch) // size]
        if len(rows):
            x, y = get_batch(tokens, block_size, rows)
            total += strategy.loss(model, X.to_device(x), X.to_device(y)) * len(rows)
            count += len(rows)
    if size > 1:
        total, count = group.allreduce(np.array([total, count]))      # element-wise sum over ranks
    return float(total / count)


# ------------------------------------------------------------------------------------------ setup
@dataclass
class Session:
    """Everything one rank's training loop works with, built by `setup`."""
    world: object
    rank: int                 # world rank
    size: int                 # world size
    groups: object            # hpclm.comm.Groups: dp, tp, pp, node communicators and the layout
    cfg: object
    data: object
    model: object
    strategy: object          # hpclm.parallel.optimizer.DistributedOptimizer (or a subclass)
    sampler: object
    timer: Timer
    recorder: Recorder
    rng: np.random.Generator
    val_offsets: np.ndarray
    start_step: int
    threads: int
    local_ranks: int
    resumed: bool
    versions: dict
    data_step: int = 0        # the next global batch this rank draws rows of (asynchronous rounds: its own count)

    @property
    def dp(self):
        return self.groups.dp

    @property
    def dp_size(self):
        return self.groups.layout.dp


def build_groups(world, pcfg):
    """The dp x tp x pp communicators of [parallel]; UserError (on every rank) if the world does not fit."""
    return collectives.Groups.build(world, dp=pcfg.dp or None, tp=pcfg.tp, pp=pcfg.pp)


def setup(args, world):
    """Config, groups, data, model, strategy and timing record (a Session); a UserError anywhere stops
    every rank. On a parameter server (parallel.sync = ps): its hpclm.parallel.ps.ParameterServer."""
    rank = world.Get_rank()
    cfg, ckpt = collectively(world, resolve_config, args)
    # The run directory: never replace another run unless --overwrite; unusable -> one line now.
    resume_dir = os.path.dirname(ckpt.path) if ckpt is not None else None
    collectively(world, lambda: rundir.claim(cfg.train.out_dir, resume_dir=resume_dir, overwrite=args.overwrite)
                 if rank == 0 else None)
    collectives.set_cuda_aware(cfg.comm.cuda_aware)
    data = load_data(cfg, world, rank, ckpt)
    ps_roles = None
    if cfg.parallel.sync == "ps":     # servers serve here; on workers their communicator is the world from here on
        from hpclm.parallel.ps import ParameterServer, split_world
        ps_roles = collectively(world, split_world, world, cfg)
        if ps_roles.is_server:
            return ParameterServer(ps_roles, cfg, GPT(cfg.model, seed=cfg.train.seed, dtype=cfg.train.dtype))
        try:
            return build_session(ps_roles.workers_comm, cfg, ckpt, data, ps_roles)
        except BaseException:
            ps_roles.release()        # a failure every worker shares: the servers must not wait for them
            raise
    return build_session(world, cfg, ckpt, data)


def build_session(world, cfg, ckpt, data, ps_roles=None):
    """The rest of `setup` over `world` (the workers' communicator with parameter servers)."""
    rank, size = world.Get_rank(), world.Get_size()
    groups = collectively(world, build_groups, world, cfg.parallel)
    local_ranks = groups.node.Get_size()
    dp_size, n_micro = groups.layout.dp, cfg.micro_batches()
    if cfg.train.batch_size % (dp_size * n_micro):           # the same on every rank
        raise collective_error(f"train.batch_size ({cfg.train.batch_size}) must be divisible by data-parallel "
                               f"size x grad_accum x parallel.micro_batches ({dp_size} x {n_micro})")
    threads = threads_per_rank(cfg, local_ranks)
    collectively(world, kernels.use, cfg.train.kernels, threads)   # compiled CPU kernels (train.kernels) or NumPy
    trace = tuple(int(s) for s in cfg.train.trace.split(":")) if cfg.train.trace else None
    timer = Timer(enabled=cfg.train.timing, sync=X.synchronize, trace_steps=trace)
    model = collectively(world, build_model, cfg, threads, groups, timer)
    strategy = collectively(world, build_strategy, cfg, groups.dp, model, timer, groups.pp, ps_roles)
    rng = np.random.default_rng([cfg.train.seed, rank])       # for stochastic components; saved in checkpoints
    start_step = 0
    if ckpt is not None:
        start_step = ckpt.step
        collectively(world, strategy.restore, ckpt, start_step)
        if len(ckpt.rng_state) == size:
            rng.bit_generator.state = ckpt.rng_state[rank]
    sampler = collectively(world, BatchSampler, data.train, cfg.model.block_size, cfg.train.batch_size,
                           cfg.train.seed, rank=groups.dp.Get_rank(), world=dp_size)
    val_offsets = eval_offsets(cfg.train.seed, cfg.train.eval_batches, cfg.train.batch_size,
                               len(data.val) - cfg.model.block_size)
    library_versions = versions()
    lay = groups.layout
    meta = dict(config_json=cfg.to_json(), git_commit=git_commit(), versions_json=library_versions,
                layout_json={"dp": lay.dp, "tp": lay.tp, "pp": lay.pp, "zero": cfg.parallel.zero,
                             "threads_per_rank": threads, "algorithm": cfg.comm.algorithm,
                             "cuda_aware": cfg.comm.cuda_aware})
    # A resumed run keeps the record of the steps before it: its own file starts at its first step.
    record_name = f"timing-from-{start_step}.h5" if start_step else "timing.h5"
    regions = ("tp_comm",) if lay.tp > 1 else ()          # the tensor-parallel collectives (parallel/tensor.py)
    recorder = Recorder(cfg.train.out_dir, world if size > 1 else None, meta, regions=regions,
                        flush_every=cfg.train.timing_flush,
                        enabled=cfg.train.timing, file_name=record_name,
                        metrics=strategy.metric_names, eval_metrics=strategy.eval_metric_names)
    return Session(world, rank, size, groups, cfg, data, model, strategy, sampler, timer, recorder, rng,
                   val_offsets, start_step, threads, local_ranks, resumed=ckpt is not None,
                   versions=library_versions, data_step=start_step)


def print_banner(s, hosts):
    """Rank 0's start-up report: layout, MPI library, data, model."""
    cfg, lay = s.cfg, s.groups.layout
    print(f"hpclm {__version__}: {s.size} rank(s) on {len(set(hosts))} host(s) ({s.local_ranks} per node), "
          f"layout dp {lay.dp} x tp {lay.tp} x pp {lay.pp}, zero {cfg.parallel.zero}, "
          f"{s.threads} thread(s) per rank, device {X.device}, all-reduce {cfg.comm.algorithm}, "
          f"buckets {cfg.comm.bucket_mb} MiB overlap={cfg.comm.overlap}, cuda_aware={cfg.comm.cuda_aware}, "
          f"compress {cfg.compress.name}")
    if cfg.parallel.sync == "ps":
        print(f"parameter servers: {cfg.ps.servers} more rank(s) serve the {s.size} worker(s), mode {cfg.ps.mode}"
              + (f", staleness {cfg.ps.staleness}" if cfg.ps.mode == "ssp" else "") + f", pull {cfg.ps.pull_dtype}")
    print(f"MPI: {s.versions['mpi_library']}")
    slurm = os.environ.get("SLURM_NTASKS")
    if slurm and int(slurm) != s.size:
        print(f"warning: SLURM_NTASKS={slurm} but the MPI world has {s.size} ranks")
    oversubscribed = guard.oversubscription(s.threads, s.local_ranks)
    if oversubscribed:
        print(f"warning: {oversubscribed}")
    print(f"data: {s.data.source}; unigram entropy {s.data.unigram_entropy():.3f} nats")
    print(f"model: {s.model.num_params():,} parameters, {cfg.train.dtype}; "
          f"{cfg.train.batch_size * cfg.model.block_size:,} tokens/step; run dir {cfg.train.out_dir}"
          + (f"; resuming at step {s.start_step}" if s.resumed else ""))
    held = s.strategy.memory()
    print("memory per rank: " + ", ".join(f"{kind} {n / 2**20:.2f} MiB" for kind, n in held.items()))


def bytes_moved(before, after):
    """{group: (sent, received)} bytes between two hpclm.comm.counters.by_group() snapshots."""
    zero = {"bytes_sent": 0, "bytes_recv": 0}
    return {group: (t["bytes_sent"] - before.get(group, zero)["bytes_sent"],
                    t["bytes_recv"] - before.get(group, zero)["bytes_recv"]) for group, t in after.items()}


# ------------------------------------------------------------------------------------------ loop
def train_step(s, step, data_step=None):
    """One optimizer step: this rank's micro-batches through the strategy's forward_backward, then
    its step (gradient sync -> clip -> update -> after). Returns (mean loss, grad norm, lr).
    `data_step` (default `step`): the global batch this rank draws its rows of."""
    cfg, timer, strategy = s.cfg, s.timer, s.strategy
    n = cfg.micro_batches()
    lr = lr_at(step, cfg.optim, cfg.train.max_steps)
    batch = step if data_step is None else data_step
    with timer.region("data"):
        batches = [tuple(X.to_device(a) for a in s.sampler.batch(batch, j, n)) for j in range(n)]
    loss = strategy.forward_backward(s.model, batches, timer)
    grad_norm = strategy.step(lr)
    return loss, grad_norm, lr


def check_replicas(s, step):
    if s.cfg.comm.check_every and (step + 1) % s.cfg.comm.check_every == 0:
        s.strategy.check_replicas(step)


def lockstep_round(s, step, stop, log_now, saving):
    """Round `step` of a synchronous strategy: one step, its loss averaged over dp when it is logged,
    the replica check, then one blocking all-reduce that agrees on a signal stop and raises on a
    non-finite loss / gradient norm anywhere (guard.agree_to_stop). Returns (loss, grad norm, lr,
    steps taken, stop agreed, loss to log), as asynchronous_round."""
    loss, grad_norm, lr = train_step(s, step)
    global_loss = s.dp.allreduce(loss) / s.dp_size if (log_now and s.dp_size > 1) else loss
    check_replicas(s, step)
    want_stop = guard.agree_to_stop(s.world, step, loss, grad_norm, stop["signal"] is not None)
    return loss, grad_norm, lr, 1, want_stop, global_loss


def asynchronous_round(s, step, stop, log_now, saving, agreement):
    """Round `step` of an asynchronous strategy: this rank's step, the round's stop agreement
    (hpclm.guard.RoundAgreement) posted, then, with train.run_ahead and while the strategy allows
    it without blocking, more steps until every rank has posted. Each step draws the next global
    batch of this rank's own count (s.data_step) at the round's lr. Before anything is saved
    (`saving`, or a stop) one collective check catches a non-finite value of a step taken after the
    post. Returns (loss, grad norm, lr of the last step, steps taken, stop agreed, mean loss of the
    round's first steps); the loss is the round's mean whether or not it is logged."""
    taken = 0

    def one_step():
        nonlocal taken
        loss, grad_norm, lr = train_step(s, step, data_step=s.data_step)
        s.data_step += 1
        taken += 1
        agreement.note(step, loss, grad_norm)
        return loss, grad_norm, lr

    loss, grad_norm, lr = one_step()
    agreement.post(loss, stop["signal"] is not None)
    while not agreement.done():
        if not (s.cfg.train.run_ahead and agreement.bad is None and s.strategy.can_run_ahead()):
            agreement.wait()
            break
        loss, grad_norm, lr = one_step()
    want_stop, round_loss = agreement.outcome()
    check_replicas(s, step)
    if want_stop or saving:
        agreement.raise_if_non_finite()
    return loss, grad_norm, lr, taken, want_stop, round_loss


def save_checkpoint(s, step):
    """Collective: the strategy's full state and every rank's RNG to world rank 0, which writes it."""
    rng_states = s.world.gather(s.rng.bit_generator.state)
    state = s.strategy.checkpoint()                     # parameters, optimizer state, sync state (on rank 0)
    if s.rank == 0:
        with s.timer.region("checkpoint"):
            ckpt_io.save(os.path.join(s.cfg.train.out_dir, ckpt_io.FILE_NAME), params=state.params,
                         layout=state.layout or s.model.layout, optim_state=state.optim_state, step=step,
                         config_json=s.cfg.to_json(), tokenizer_json=s.data.tokenizer.to_json(),
                         rng_state=rng_states, extra=state.extra)
    s.world.Barrier()


def train_steps(s, stop):
    """The training loop from s.start_step; returns the summary. `stop["signal"]` set = stop early."""
    cfg, timer, world, dp = s.cfg, s.timer, s.world, s.dp
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size
    progress = Progress(cfg.train.max_steps, s.rank == 0)
    t_start = window_t = time.perf_counter()
    window_tokens, val_loss, step = 0, math.nan, s.start_step
    agreement = guard.RoundAgreement(world) if s.strategy.asynchronous and s.size > 1 else None
    run_round = lockstep_round if agreement is None else functools.partial(asynchronous_round, agreement=agreement)
    for step in range(s.start_step, cfg.train.max_steps):
        before = collectives.counters.by_group()
        last = step == cfg.train.max_steps - 1
        log_now = (step + 1) % cfg.train.log_interval == 0 or last or step == s.start_step
        checkpoint_now = cfg.train.checkpoint_interval and (step + 1) % cfg.train.checkpoint_interval == 0
        loss, grad_norm, lr, taken, want_stop, global_loss = run_round(s, step, stop, log_now, last or checkpoint_now)
        if (cfg.train.eval_interval and (step + 1) % cfg.train.eval_interval == 0) or last or want_stop:
            with timer.region("eval"):
                val_loss, spread = s.strategy.evaluate(lambda group: evaluate(
                    s.strategy, s.model, s.data.val, s.val_offsets, cfg.model.block_size, group), dp)
            s.recorder.log_eval(step, val_loss, global_loss, spread)
            progress.message(f"step {step + 1}: val loss {val_loss:.4f}, train loss {global_loss:.4f}"
                             + "".join(f", {name} {value:.4f}" for name, value in spread.items()))
        moved = bytes_moved(before, collectives.counters.by_group())
        window_tokens += tokens_per_step
        if log_now:
            now = time.perf_counter()
            tok_s = window_tokens / max(now - window_t, 1e-9)
            window_t, window_tokens = now, 0
            progress.update(step, f"step {step + 1}/{cfg.train.max_steps} loss {global_loss:.4f} "
                                  f"lr {lr:.2e} |g| {grad_norm:.2f} {tok_s:,.0f} tok/s")
        if checkpoint_now and not last:
            save_checkpoint(s, step + 1)
        # tokens: this rank's share (of every step it took in the round), so the ranks' tokens sum to
        # the step's (tp ranks share a batch)
        s.recorder.log_step(step, timer.collect(), bytes_by_group=moved,
                            bytes_uncompressed=s.strategy.uncompressed_bytes(), loss=loss,
                            tokens=taken * tokens_per_step // s.size, lr=lr, grad_norm=grad_norm,
                            global_loss=global_loss,
                            memory=s.strategy.memory(), metrics=s.strategy.step_metrics())
        if want_stop:
            progress.message(f"signal received: checkpointing at step {step + 1} and exiting")
            break
    steps_per_rank = world.gather(s.data_step - s.start_step) if agreement is not None else None
    save_checkpoint(s, step + 1)
    s.strategy.close()
    if cfg.train.trace:
        s.recorder.write_trace(timer)
    s.recorder.close()
    wall = time.perf_counter() - t_start
    summary = dict(start_step=s.start_step, world_size=s.size, end_step=step + 1, val_loss=val_loss,
                   wall_seconds=wall, tokens_per_second=(step + 1 - s.start_step) * tokens_per_step / wall)
    if steps_per_rank is not None:
        summary["steps_per_rank"] = steps_per_rank          # asynchronous rounds: the steps each rank took
    progress.message(f"done: step {step + 1}, val loss {val_loss:.4f}, {wall:.1f} s, "
                     f"{summary['tokens_per_second']:,.0f} tokens/s; checkpoint {cfg.train.out_dir}/{ckpt_io.FILE_NAME}")
    return summary


# ------------------------------------------------------------------------------------------ main
def run(args):
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    stdout = sys.stdout
    if world.Get_rank() != 0 and not args.verbose:
        sys.stdout = open(os.devnull, "w")
    stop = {"signal": None}
    signals = RunSignals(stop, world.Get_rank())     # set-up: a signal ends the run at once
    blas_limit = None
    try:
        s = setup(args, world)
        if not isinstance(s, Session):                # a parameter server: serves until the workers stop
            signals.start_loop()                      # a signal stops the workers at a step boundary, not it
            s.serve()
            return 0
        hosts = s.world.gather(socket.gethostname())
        if s.rank == 0:
            print_banner(s, hosts)
        # BLAS gets this rank's share of the cores: ranks x BLAS threads beyond the cores spin and crawl.
        blas_limit = threadpool_limits(limits=s.threads, user_api="blas")
        signals.start_loop()                          # from here: stop at the next step boundary
        try:
            summary = train_steps(s, stop)
        finally:
            s.strategy.close()
        if s.rank == 0:
            rundir.write_summary(s.cfg.train.out_dir, summary)   # with the earlier segments of a resumed run
        s.groups.free()
    finally:
        if blas_limit is not None:
            blas_limit.restore_original_limits()
        signals.restore()
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
    return 0
