"""Tensor (Megatron) parallelism, the model side, MPI-free: which part of every tensor a tp rank
holds, the maps between the full flat layout and a rank's, and the vocab-parallel units.

A tp rank of `tp` holds a *shard* of the model; the model config stays the global one.

    attn.c_attn  (C, 3C) columns: heads h0..h1 of each of GPT-2's [q|k|v] blocks (and its bias)
    attn.c_proj  (C, C)  rows of the same heads; its bias replicated, added once after the reduction
    mlp.c_fc     (C, 4C) columns 4C/tp; mlp.c_proj (4C, C) the same rows; c_proj bias replicated
    wte          (V, C)  rows of the vocab range [r Vp/tp, (r+1) Vp/tp), Vp = V padded to a multiple
                         of tp (padding rows are zeros that never win the softmax and get no gradient)
    lm_head      (C, V)  the same range as columns (untied head)
    wpe, LayerNorms      replicated

Blocks run with n_head/tp local heads and the tp collectives as hooks (`comm`: an object with
column_in/row_out and their backwards as in units.IdentityHooks, copy_to/reduce_from (the same
pairs by Megatron's names), `all_reduce(x, op)`, `gather_last(x)` and `rows(N)`, the token rows
this rank holds outside the column-row pairs (all N, or a block under sequence parallelism);
parallel/tensor.py builds it over MPI). The embedding and the head are vocab-parallel: the loss uses one max- and one
sum-all-reduce of (N,) and (2, N) and never gathers the (N, V) logits.

    model = ShardedGPT(cfg, tp, rank, comm, seed)       # a GPT whose buffers hold rank's shard
    local = shard_flat(full_flat, full_layout, model.layout, specs)
    full = unshard_flat(locals_by_rank, full_layout, layouts, specs_by_rank)

Dimension legend: B batch, T time, C n_embd, V vocab, Vl = Vp / tp, N = B * T.
"""
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy

from hpclm import xp as X
from hpclm.errors import UserError
from hpclm.model import layers as L
from hpclm.model import units as U
from hpclm.model.gpt import GPT, count_params
from hpclm.model.params import ParamLayout, gpt2_shapes


# ---------------------------------------------------------------------------------------- shards
@dataclass(frozen=True)
class Shard:
    """The part of a full tensor a rank holds: `ranges` ((lo, hi), ...) along `axis`, concatenated
    in order, then zeros up to `length` along that axis (vocab padding)."""
    axis: int
    ranges: tuple
    length: int


def padded_vocab(vocab_size, tp):
    """The vocabulary rounded up to a multiple of tp."""
    return -(-vocab_size // tp) * tp


def vocab_range(vocab_size, tp, rank):
    """(lo, hi, n_real): the padded vocab ids [lo, hi) rank holds, n_real of them real ids (< V)."""
    per = padded_vocab(vocab_size, tp) // tp
    lo = rank * per
    return lo, lo + per, max(0, min(vocab_size, lo + per) - lo)


def check_divisible(cfg, tp):
    """UserError unless a model config can be split over tp ranks. tp | n_head with n_head | n_embd
    (ModelConfig's own check) also splits n_embd and the MLP's 4 n_embd columns evenly."""
    if tp < 1:
        raise UserError(f"parallel.tp must be >= 1, got {tp}")
    if cfg.n_head % tp:
        raise UserError(f"parallel.tp={tp} must divide model.n_head={cfg.n_head} (attention is split by heads)")


def shard_specs(cfg, tp, rank):
    """{name: Shard or None (replicated)} for every tensor of the model on tp rank `rank`."""
    check_divisible(cfg, tp)
    C = cfg.n_embd
    c = C // tp                                                # this rank's heads' width
    heads = (rank * c, (rank + 1) * c)
    fc = (rank * 4 * c, (rank + 1) * 4 * c)
    qkv = tuple((j * C + heads[0], j * C + heads[1]) for j in range(3))
    lo, _, n_real = vocab_range(cfg.vocab_size, tp, rank)
    per = padded_vocab(cfg.vocab_size, tp) // tp
    vocab = ((lo, lo + n_real),) if n_real else ()
    specs = {"wte": Shard(0, vocab, per), "wpe": None, "ln_f.weight": None, "ln_f.bias": None}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        specs.update({
            p + "ln_1.weight": None, p + "ln_1.bias": None, p + "ln_2.weight": None, p + "ln_2.bias": None,
            p + "attn.c_attn.weight": Shard(1, qkv, 3 * c), p + "attn.c_attn.bias": Shard(0, qkv, 3 * c),
            p + "attn.c_proj.weight": Shard(0, (heads,), c), p + "attn.c_proj.bias": None,
            p + "mlp.c_fc.weight": Shard(1, (fc,), 4 * c), p + "mlp.c_fc.bias": Shard(0, (fc,), 4 * c),
            p + "mlp.c_proj.weight": Shard(0, (fc,), 4 * c), p + "mlp.c_proj.bias": None,
        })
    if not cfg.tie_weights:
        specs["lm_head.weight"] = Shard(1, vocab, per)
    return specs


def tp_shapes(cfg, tp):
    """[(name, shape)] of a tp rank's shard, in GPT-2 order (the same for every rank)."""
    specs = shard_specs(cfg, tp, 0)
    out = []
    for name, shape in gpt2_shapes(cfg):
        spec = specs[name]
        if spec is not None:
            shape = list(shape)
            shape[spec.axis] = spec.length
        out.append((name, tuple(shape)))
    return out


def shard_tensor(full, spec):
    """The rank's part of `full` (a new host array; zeros where it is padding)."""
    if spec is None:
        return numpy.array(full)
    shape = list(full.shape)
    shape[spec.axis] = spec.length
    out = numpy.zeros(shape, dtype=full.dtype)
    at = 0
    for lo, hi in spec.ranges:
        dst = [slice(None)] * full.ndim
        src = [slice(None)] * full.ndim
        dst[spec.axis], src[spec.axis] = slice(at, at + hi - lo), slice(lo, hi)
        out[tuple(dst)] = full[tuple(src)]
        at += hi - lo
    return out


def place_tensor(full, local, spec):
    """Write the rank's part `local` back into `full` (in place; padding is dropped)."""
    if spec is None:
        full[...] = local
        return
    at = 0
    for lo, hi in spec.ranges:
        dst = [slice(None)] * full.ndim
        src = [slice(None)] * full.ndim
        dst[spec.axis], src[spec.axis] = slice(lo, hi), slice(at, at + hi - lo)
        full[tuple(dst)] = local[tuple(src)]
        at += hi - lo


def shard_flat(full_flat, full_layout, local_layout, specs):
    """(full_layout.size,) host array -> (local_layout.size,) host array of the rank's shard."""
    full = full_layout.views(numpy.asarray(full_flat))
    out = numpy.zeros(local_layout.size, dtype=full_flat.dtype)
    views = local_layout.views(out)
    for name, view in views.items():
        view[...] = shard_tensor(full[name], specs[name])
    return out


def unshard_flat(local_flats, full_layout, local_layout, specs_by_rank):
    """Every rank's flat shard (rank order) -> the full flat host array (replicated tensors from rank 0).
    The local layout names the tensors (a pipeline stage's, or all); full_layout holds them unsharded."""
    out = numpy.zeros(full_layout.size, dtype=numpy.asarray(local_flats[0]).dtype)
    full = full_layout.views(out)
    for rank in reversed(range(len(local_flats))):             # rank 0 written last: its replicas win
        local = local_layout.views(numpy.asarray(local_flats[rank]))
        for name, part in local.items():
            place_tensor(full[name], part, specs_by_rank[rank][name])
    return out


def replicated_spans(local_layout, specs):
    """[(lo, hi)] flat offsets of the tensors every tp rank holds whole."""
    return [(s.offset, s.offset + s.size) for s in local_layout.slots if specs[s.name] is None]


# ---------------------------------------------------------------------------------------- loss
def parallel_cross_entropy_forward(logits, targets, lo, n_real, comm):
    """Mean cross-entropy over a vocab split across the tp group, never gathering the logits.

    logits (N, Vl): this rank's columns, for vocab ids [lo, lo + Vl), of which the first n_real
    are real (the rest padding: set to -inf here, in place). targets (N,) global ids.
    Returns (loss, cache); the cache holds the local softmax (N, Vl)."""
    xp = X.array_module(logits)
    logits[:, n_real:] = -xp.inf                               # padding never wins
    N = targets.shape[0]
    rows = xp.arange(N)
    local = targets - lo
    inside = (local >= 0) & (local < n_real)                   # (N,) targets in this rank's range
    local = xp.where(inside, local, 0)
    peak = comm.all_reduce(xp.ascontiguousarray(logits.max(axis=1)), "max")   # (N,) the global row max
    probs = logits - peak[:, None]                             # (N, Vl) <= 0, -inf on padding
    stats = xp.stack([xp.exp(probs, out=probs).sum(axis=1),
                      xp.where(inside, logits[rows, local] - peak, 0.0)])    # (2, N)
    total, target = comm.all_reduce(stats, "sum")              # softmax denominators, target logits - max
    loss = (xp.log(total) - target).mean()
    probs /= total[:, None]
    return loss, (probs, local, inside)


def parallel_cross_entropy_backward(cache):
    """d(mean NLL)/dlogits (N, Vl) = (softmax - onehot) / N, in place in the cached softmax."""
    probs, local, inside = cache
    xp = X.array_module(probs)
    rows = xp.arange(probs.shape[0])
    probs[rows[inside], local[inside]] -= 1.0
    probs /= probs.shape[0]
    return probs


# ---------------------------------------------------------------------------------------- units
class VocabEmbeddingCache(NamedTuple):
    idx: Any                                                   # (B, T) token ids
    local: Any                                                 # (N,) row in this rank's wte (0 outside)
    inside: Any                                                # (N,) bool: the id is in this rank's range


class VocabParallelEmbedding(U.Embedding):
    """wte split by vocab rows: each rank looks up its ids, the tp group sums (reduce_from), then wpe."""

    def __init__(self, lo, n_real, comm):
        self.lo, self.n_real, self.comm = lo, n_real, comm

    def __repr__(self):
        return f"VocabParallelEmbedding(lo={self.lo}, n_real={self.n_real})"

    def forward(self, p, idx):
        xp = X.array_module(p["wte"])
        B, T = idx.shape
        local = idx.reshape(-1) - self.lo
        inside = (local >= 0) & (local < self.n_real)
        local = xp.where(inside, local, 0)
        x = p["wte"][local]                                    # (N, C)
        x *= inside[:, None]
        x = self.comm.reduce_from(x)                           # (N, C), or this rank's rows (sequence parallel)
        lo, hi = self.comm.rows(B * T)
        if hi - lo == B * T:
            x.reshape(B, T, -1)[...] += p["wpe"][:T]
        else:
            x += p["wpe"][xp.arange(lo, hi) % T]
        return x, VocabEmbeddingCache(idx, local, inside)

    def backward(self, p, g, dx, cache):
        xp = X.array_module(dx)
        B, T = cache.idx.shape
        lo, hi = self.comm.rows(B * T)
        if hi - lo == B * T:
            g["wpe"][:T] += dx.reshape(B, T, -1).sum(axis=0)
        else:                                                  # this rank's rows: a partial sum
            xp.add.at(g["wpe"], xp.arange(lo, hi) % T, dx)
        dx = self.comm.reduce_from_backward(dx)                # (N, C)
        xp.add.at(g["wte"], cache.local[cache.inside], dx[cache.inside])


class VocabParallelHead(U.Head):
    """The head over this rank's vocab columns: the loss by parallel_cross_entropy_*; the input of
    the logits' matmul is copied to the group (its gradient all-reduced)."""

    def __init__(self, tie_weights, lo, n_real, vocab_size, comm):
        super().__init__(tie_weights)
        self.lo, self.n_real, self.vocab_size, self.comm = lo, n_real, vocab_size, comm

    def __repr__(self):
        return f"VocabParallelHead(tie_weights={self.tie_weights}, lo={self.lo}, n_real={self.n_real})"

    def logits(self, p, x):
        """x (N, C) -> the full logits (N, V), gathered (for generation, not for the loss)."""
        xf, _ = L.layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        return self.comm.gather_last(self.comm.copy_to(xf) @ self._weight(p))[:, :self.vocab_size]

    def forward(self, p, x, targets):
        xf, ln_f = U._layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        xf = self.comm.copy_to(xf)
        logits, _ = L.linear_forward(xf, self._weight(p), None)                       # (N, Vl)
        loss, ce = parallel_cross_entropy_forward(logits, targets.reshape(-1), self.lo, self.n_real, self.comm)
        return loss, U.HeadCache(ln_f, xf, ce)

    def backward(self, p, g, cache):
        dlogits = parallel_cross_entropy_backward(cache.ce)                            # (N, Vl)
        if self.tie_weights:
            g["wte"] += dlogits.T @ cache.head_in                                       # (Vl, C)
            dxf = dlogits @ p["wte"]
        else:
            dxf = L.linear_backward(dlogits, cache.head_in, p["lm_head.weight"], g["lm_head.weight"], None)
        dxf = self.comm.copy_to_backward(dxf)                                          # (N, C) summed
        return U._layernorm_backward(dxf, cache.ln_f, p["ln_f.weight"], g["ln_f.weight"], g["ln_f.bias"])


# ---------------------------------------------------------------------------------------- model
class ShardedGPT(GPT):
    """tp rank `rank`'s shard of the GPT of `cfg` (the global config), run with the tp collectives
    `comm`. Starts from the shard of the full model's initialisation with the same seed."""

    def __init__(self, cfg, tp, rank, comm, seed=0, dtype="float32"):
        cfg.validate()
        check_divisible(cfg, tp)
        self.tp, self.tp_rank, self.tensor = tp, rank, comm
        self.full_layout = ParamLayout(gpt2_shapes(cfg))
        self.specs = shard_specs(cfg, tp, rank)
        super().__init__(cfg, seed=seed, dtype=dtype, hooks=comm)
        self.replicated = replicated_spans(self.layout, self.specs)

    def _shapes(self, cfg):
        return tp_shapes(cfg, self.tp)

    def _build_units(self, cfg, hooks):
        lo, _, n_real = vocab_range(cfg.vocab_size, self.tp, self.tp_rank)
        blocks = [U.Block(i, cfg.n_head // self.tp, hooks) for i in range(cfg.n_layer)]
        return [VocabParallelEmbedding(lo, n_real, hooks), *blocks,
                VocabParallelHead(cfg.tie_weights, lo, n_real, cfg.vocab_size, hooks)]

    def _initial_values(self, seed, layout=None):
        full = super()._initial_values(seed, self.full_layout)
        return shard_flat(full, self.full_layout, self.layout, self.specs)

    def num_params(self, non_embedding=False):
        """The full model's parameter count (not this shard's)."""
        return count_params(self.full_layout, self.cfg.tie_weights, non_embedding)


def tp_message_elements(cfg, rows, micro_batches=1):
    """Elements all-reduced over the tp group in one step: per micro-batch of `rows` sequences,
    4 (N, C) per block (2 forward, 2 backward), the embedding's and the head's (N, C) and the
    loss's (N,) max and (2, N) sums. Returns a list of message sizes (elements) per step."""
    N, C = rows * cfg.block_size, cfg.n_embd
    per_micro = [N * C] * (4 * cfg.n_layer + 2) + [N, 2 * N]
    return per_micro * micro_batches
