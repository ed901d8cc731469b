"""config -> the distributed optimizer of a run: the one place that reads [parallel], [compress]
and [comm] to choose a strategy, so the training loop never asks which one it holds.

    strategy = build_strategy(cfg, groups.dp, model, timer)    # a parallel.optimizer.DistributedOptimizer

    parallel.sync gossip              GossipOptimizer (parallel/gossip.py): neighbour averaging on [gossip].topology
    parallel.zero 1-3                 ZeroOptimizer (parallel/zero.py) over the dp group
    parallel.pp > 1                   PipelineOptimizer (parallel/pipeline_optimizer.py) of the rank's
                                      stage, its gradients averaged over the stage's dp group (with
                                      parallel.zero = 1: ZeRO-1 there)
    compress.onebit_adam              OneBitAdam: plain all-reduce warm-up, then the momentum in 1 bit
    otherwise                         DistributedOptimizer with the gradient sync of `build_grad_sync`:
      compress.name none              AllReduceSync (bucketed, overlapped)
      a low-rank compressor           PowerSGDSync (whole model after backward)
      any other compressor            CompressedSync, one codec per bucket: error feedback (as
                                      configured) + the exchange compress.exchange picks, or the
                                      1-bit all-reduce (ef_sign by default)
      compress.warmup_steps > 0       Warmup: AllReduceSync for those steps, then the above
    parallel.sync = local             LocalSGD (parallel/local.py): local SGD or DiLoCo, the
                                      pseudo-gradient through the compress.name codec
    a tensor-parallel model           TensorParallel (parallel/tensor.py) around the above (plain
                                      all-reduce or ZeRO-1 over the dp group, on the rank's shard)
    parallel.pp > 1                   PipelineOptimizer (parallel/pipeline_optimizer.py) on the rank's
                                      stage; a stage of a tp shard: GridOptimizer (parallel/grid.py)
"""
from hpclm import compress
from hpclm.compress.base import AGGREGATE_LOW_RANK
from hpclm.compress.memory import build_with_memory
from hpclm.model.stage import balanced_ranges, interleave, ranges_from_layers
from hpclm.optim import build_optimizer
from hpclm.parallel.buckets import AllReduceSync
from hpclm.parallel.compressed import CompressedSync
from hpclm.parallel.exchange import Compressed, exchange_of
from hpclm.parallel.onebit import OneBitAllreduce
from hpclm.parallel.onebit_adam import OneBitAdam, check_config
from hpclm.parallel.optimizer import DistributedOptimizer
from hpclm.parallel.powersgd import PowerSGDSync
from hpclm.parallel.sync import Warmup


def stage_ranges(cfg):
    """[[(first, stop)] of each chunk] per pipeline rank: the pp x chunks virtual stages' unit ranges
    (parallel.stage_layers, or balanced), rank s holding virtual stages s, s + pp, ..."""
    p = cfg.parallel
    counts = p.stage_layer_counts()
    ranges = ranges_from_layers(cfg.model, counts) if counts else balanced_ranges(cfg.model, p.pp * p.chunks)
    return interleave(ranges, p.pp)


def build_grad_sync(cfg, group, model, timer=None):
    """The GradSync of a replicated data-parallel run over `group` (None: one process)."""
    scale = 1.0 / cfg.micro_batches()
    plain = lambda: AllReduceSync(group, model.grad_flat, cfg.comm, grad_scale=scale, timer=timer)  # noqa: E731
    c = cfg.compress
    if c.name == "none":
        return plain()
    rank, world = (0, 1) if group is None else (group.Get_rank(), group.Get_size())
    prototype = compress.build(c, rank=rank)           # UserError for an unknown name
    if prototype.aggregate == AGGREGATE_LOW_RANK:
        after = PowerSGDSync(group, model.grad_flat, model.layout, cfg.comm, c, grad_scale=scale, timer=timer)
    else:
        after = CompressedSync(group, model.grad_flat, cfg.comm, codec_maker(c, prototype, rank, world),
                               grad_scale=scale, timer=timer)
    return Warmup(plain(), after, c.warmup_steps) if c.warmup_steps else after


def codec_maker(c, prototype, rank, world):
    """make(n, dtype) -> one n-element codec of compress section `c` (`prototype` its compressor):
    error feedback (as configured) + the exchange compress.exchange picks, or the 1-bit all-reduce."""
    exchange = exchange_of(prototype, c.exchange)
    if exchange == "onebit":
        return lambda n, dtype: OneBitAllreduce(n, world, dtype)
    return lambda n, dtype: Compressed(build_with_memory(c, n, dtype, rank=rank), exchange)


def build_strategy(cfg, group, model, timer=None, pp_group=None, ps_roles=None):
    """The DistributedOptimizer for `cfg` over the dp `group` (and, with parallel.pp > 1, this
    rank's pipeline `pp_group`; `model` is then its StageModel). A tensor-parallel shard (model.tensor
    set) gets the dp strategy wrapped in parallel.tensor's. With parallel.sync = ps, `ps_roles`
    (parallel.ps.split_world) names the servers. UserError for a bad combination."""
    if cfg.parallel.pp > 1:
        from hpclm.parallel.pipeline_optimizer import PipelineOptimizer
        if getattr(model, "tensor", None) is not None:          # a stage of a tp shard: the 3-D grid
            from hpclm.parallel.grid import GridOptimizer as PipelineOptimizer
            from hpclm.parallel.tensor import check_tensor_config
            check_tensor_config(cfg)
        if cfg.parallel.zero:
            from hpclm.parallel.zero import build_zero
            return PipelineOptimizer.over_zero(build_zero(cfg, group, model, timer), cfg.optim, pp_group,
                                               cfg.parallel.schedule, cfg.parallel.micro_batches,
                                               stage_ranges(cfg), timer)
        return PipelineOptimizer(model, build_optimizer(cfg.optim, model), build_grad_sync(cfg, group, model, timer),
                                 cfg.optim, pp_group, cfg.parallel.schedule, cfg.parallel.micro_batches,
                                 stage_ranges(cfg), timer)
    if getattr(model, "tensor", None) is not None:
        from hpclm.parallel.tensor import TensorParallel, check_tensor_config
        check_tensor_config(cfg)
        return TensorParallel(_data_parallel(cfg, group, model, timer), model)
    return _data_parallel(cfg, group, model, timer, ps_roles)


def _data_parallel(cfg, group, model, timer, ps_roles=None):
    """The data-parallel strategy of a whole (or tensor-sharded) model over the dp `group`."""
    if cfg.parallel.sync == "gossip":
        from hpclm.parallel.gossip import build_gossip
        return build_gossip(cfg, group, model, timer)
    if cfg.parallel.sync == "ps":
        from hpclm.parallel.ps import build_ps
        return build_ps(cfg, group, model, ps_roles, timer)
    if cfg.parallel.zero:
        from hpclm.parallel.zero import build_zero
        return build_zero(cfg, group, model, timer)
    if cfg.parallel.sync == "local":
        from hpclm.parallel.local import build_local
        return build_local(cfg, group, model, timer, _pseudo_gradient_codec(cfg, group))
    optimizer = build_optimizer(cfg.optim, model)
    if cfg.compress.onebit_adam:
        check_config(cfg)
        sync = AllReduceSync(group, model.grad_flat, cfg.comm, grad_scale=1.0 / cfg.micro_batches(), timer=timer)
        return OneBitAdam(model, optimizer, sync, cfg.optim, cfg.compress.warmup_steps, timer)
    return DistributedOptimizer(model, optimizer, build_grad_sync(cfg, group, model, timer), cfg.optim, timer)


def _pseudo_gradient_codec(cfg, group):
    """DiLoCo's pseudo-gradient codec maker for compress.name (None: plain all-reduce)."""
    c = cfg.compress
    if c.name == "none":
        return None
    rank, world = (0, 1) if group is None else (group.Get_rank(), group.Get_size())
    return codec_maker(c, compress.build(c, rank=rank), rank, world)
