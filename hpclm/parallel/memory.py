"""Per-rank memory: what a strategy holds in parameters, gradients, optimizer state and
activations, predicted from a config and a layout by the same plans the strategies allocate from
(parallel/zero.py's ShardPlan), so that what is measured on small models here is the code that
predicts a 175B model on 1,024 ranks (`hpclm memory`).

    planned_memory(stage, layout, world, rank, optim, itemsize)   # params / grads / optimizer bytes
    activation_bytes(model_cfg, batch, T, itemsize)                # the caches of one forward (peak)
"""
from hpclm.optim import OPTIMIZERS
from hpclm.parallel.zero import ShardPlan, read_ranges, unit_ranges


def state_buffers(optim_name):
    """How many flat state buffers the optimizer keeps (momentum 1, AdamW 2)."""
    return len(OPTIMIZERS[optim_name].state_names)


def planned_memory(stage, layout, world, rank, optim_name, itemsize, live_params=0, live_grads=0):
    """Bytes rank holds in params, grads and optimizer state at ZeRO `stage` (0-3): what
    ZeroOptimizer allocates (and DistributedOptimizer at stage 0), from the layout alone. live_*:
    elements of temporary unit buffers alive at the peak (stages 2-3)."""
    lo, hi = ShardPlan(layout.size, world).shard(rank)
    full, shard = layout.size, hi - lo
    params = full if stage < 3 else shard + live_params
    grads = full if stage < 2 else shard + live_grads
    return {"params": params * itemsize, "grads": grads * itemsize,
            "optimizer": (full if stage == 0 else shard) * state_buffers(optim_name) * itemsize}


def peak_live_elements(units, layout, stage, overlap):
    """(parameter, gradient) elements of ZeRO's temporary unit buffers alive at once at the peak.
    Units read their own ranges (the tied head the embedding's too). Stage 3 gathers the next unit
    while a unit runs, so two consecutive units' parameters are alive; stages 2-3 keep a unit's
    gradient buffer until its reduce-scatter is done: with overlap one is in flight while the next
    unit's backward fills another."""
    if stage < 2:
        return 0, 0
    ranges = {u: (lo, hi) for u, lo, hi in unit_ranges(layout)}
    reads = [sum(hi - lo for lo, hi in read_ranges(u, ranges)) for u in units]
    pairs = max((a + b for a, b in zip(reads, reads[1:])), default=reads[0])
    grads = pairs if overlap else max(reads)
    return (pairs if stage == 3 else 0), grads

def block_elements(cfg, B, T):
    """Float elements of one block's full cache: 20 N C + 2 N + B H T^2 (LayerNorm xhat and rstd
    twice, the inputs of the four linears, q k v, the attention probabilities, GELU's input and tanh)."""
    N = B * T
    return 20 * N * cfg.n_embd + 2 * N + B * cfg.n_head * T * T


def activation_elements(cfg, B, T, recompute=False, n_layer=None, head=True, embedding=True):
    """(float elements, int elements) of the caches one forward of B x T tokens keeps for backward
    (hpclm.model's units; N = B T) over n_layer blocks (default all): per block its full cache
    (block_elements), or only its input N C under recomputation; with the head its LayerNorm, its
    input and the softmax N V; with the embedding the token ids (the head's targets too)."""
    N, C, V = B * T, cfg.n_embd, cfg.vocab_size
    n_layer = cfg.n_layer if n_layer is None else n_layer
    block = N * C if recompute else block_elements(cfg, B, T)
    floats = n_layer * block + (2 * N * C + N + N * V if head else 0)
    return floats, N * (int(embedding) + int(head))


def activation_bytes(cfg, B, T, itemsize, int_itemsize=8, **which):
    """Bytes of activation_elements(cfg, B, T, **which)."""
    floats, ints = activation_elements(cfg, B, T, **which)
    return floats * itemsize + ints * int_itemsize
