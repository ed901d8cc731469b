"""The GPT as a sequence of units: Embedding, Block 0..L-1, Head, each a pure forward/backward pair.

A unit stores no parameters and no activations. Every call is given `p` (and in backward `g`):
mappings GPT-2 name -> array holding at least the names the unit `reads`; backward ADDS into
`g` (the tied head adds into g["wte"] too). What the backward needs travels in an explicit cache
(a NamedTuple of activation arrays, never parameters), so parameters may live in a temporary
buffer that is freed between forward and backward (ZeRO-3), and `activation_bytes(cache)` is the
activation memory a cache holds.

    x, ce = embedding.forward(p, idx)            # idx (B, T) -> x (N, C)
    y, cb = block.forward(p, x, B, T)            # (N, C) -> (N, C); x is not modified
    loss, ch = head.forward(p, y, targets)       # mean cross-entropy
    dy = head.backward(p, g, ch)                 # d loss = 1
    dx = block.backward(p, g, dy, cb)            # dy is not modified
    embedding.backward(p, g, dx, ce)

`forward_units` / `backward_units` run any contiguous range of units through a parameter
*source*; with `recompute=True` a block keeps only its input (a `RecomputeCache`) and its forward
runs again inside its backward (activation recomputation, Chen et al. 2016; Megatron's "full"
granularity per block), the same arithmetic, so the gradients are bitwise those without. Source: `acquire(unit, phase) -> (p, g)` right before each unit's forward ("forward", g None)
and backward ("backward"), `release(unit, phase)` right after. `ResidentSource` hands out the
model's own views. `Block` hooks (`column_in` before the inputs of c_attn and c_fc,
`row_out` after the c_proj matmuls, before their bias) are where tensor parallelism communicates.

Dimension legend: B batch, T time, C n_embd (or a tensor-parallel shard of it), V vocab, N = B * T.
"""
from typing import Any, NamedTuple

from hpclm import xp as X
from hpclm.model import layers as L

BLOCK_PARAMS = (
    "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
    "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)                                                              # GPT-2 order within h.{i}.


# ---------------------------------------------------------------------------------------- caches
class EmbeddingCache(NamedTuple):
    idx: Any                                                   # (B, T) token ids


class BlockCache(NamedTuple):
    ln_1: tuple                                                # (xhat (N, C), rstd (N, 1))
    c_attn_in: Any                                             # (N, C) column_in(ln_1 out)
    attn: tuple                                                # attention_forward's cache
    c_proj_in: Any                                             # (N, C) attention output
    ln_2: tuple
    c_fc_in: Any                                               # (N, C) column_in(ln_2 out)
    gelu: tuple                                                # gelu_forward's cache
    mlp_proj_in: Any                                           # (N, 4C) GELU output


class RecomputeCache(NamedTuple):
    """What a block keeps under recomputation: its input and the shape to run its forward again."""
    x: Any                                                     # (N, C) the block's input
    B: int
    T: int


class HeadCache(NamedTuple):
    ln_f: tuple
    head_in: Any                                               # (N, C) ln_f out
    ce: tuple                                                  # (probs (N, V), targets (N,))


def activation_bytes(cache):
    """Bytes of the distinct arrays a cache (or a list of caches) holds, found by walking it."""
    seen, total, stack = set(), 0, [cache]
    while stack:
        item = stack.pop()
        if isinstance(item, (tuple, list)):
            stack.extend(item)
        elif hasattr(item, "nbytes") and id(item) not in seen:
            seen.add(id(item))
            total += int(item.nbytes)
    return total


def _layernorm_forward(x, weight, bias):
    """As layers.layernorm_forward, with the cache stripped of the weight (given again in backward)."""
    out, (xhat, rstd, _) = L.layernorm_forward(x, weight, bias)
    return out, (xhat, rstd)


def _layernorm_backward(dout, cache, weight, dweight, dbias):
    return L.layernorm_backward(dout, (*cache, weight), dweight, dbias)


# ---------------------------------------------------------------------------------------- hooks
class IdentityHooks:
    """Block hooks that change nothing. Tensor parallelism (Megatron) replaces them: column_in is
    the identity forward and an all-reduce backward; row_out an all-reduce forward, identity backward.

    The block adds into what row_out returns (bias, residual) and keeps what column_in returns
    in its cache; column_in_backward may work in place, row_out_backward must not (the block
    still needs its argument for the residual's gradient).
    """

    def column_in(self, x):                                    # (N, C) input of c_attn / c_fc
        return x

    def column_in_backward(self, dx):                          # (N, C) gradient of that input
        return dx

    def row_out(self, y):                                      # (N, C) c_proj matmul, before the bias
        return y

    def row_out_backward(self, dy):                            # (N, C) gradient of that product
        return dy


IDENTITY = IdentityHooks()


# ---------------------------------------------------------------------------------------- units
class Embedding:
    """Token + position embedding: owns wte (V, C), wpe (block_size, C)."""

    names = ("wte", "wpe")
    reads = names

    def forward(self, p, idx):
        """idx (B, T) ints -> x (N, C), a new array."""
        x, idx = L.embedding_forward(idx, p["wte"], p["wpe"])
        return x, EmbeddingCache(idx)

    def backward(self, p, g, dx, cache):
        """Adds into g["wte"], g["wpe"]; dx (N, C) is not modified."""
        L.embedding_backward(dx, cache.idx, g["wte"], g["wpe"])

    def __repr__(self):
        return "Embedding()"


class Block:
    """Pre-LayerNorm transformer block i: y = x + attn(ln_1(x)); y += mlp(ln_2(y)). Owns h.{i}.*."""

    def __init__(self, i, n_head, hooks=None):
        self.i, self.n_head = i, n_head
        self.hooks = IDENTITY if hooks is None else hooks
        self.names = tuple(f"h.{i}.{s}" for s in BLOCK_PARAMS)
        self.reads = self.names
        (self._ln1_w, self._ln1_b, self._attn_w, self._attn_b, self._aproj_w, self._aproj_b,
         self._ln2_w, self._ln2_b, self._fc_w, self._fc_b, self._mproj_w, self._mproj_b) = self.names
        self._mask = None                                      # (T', T') causal mask, T' >= the last T

    def __repr__(self):
        return f"Block({self.i})"

    def _causal_mask(self, T, like):
        m = self._mask
        if m is None or m.shape[0] < T or m.dtype != like.dtype or type(m) is not type(like):
            m = self._mask = L.causal_mask(T, like.dtype, X.array_module(like))
        return m[:T, :T]

    def forward(self, p, x, B, T):
        """x (N, C) -> y (N, C), a new array (x is left as it is)."""
        hooks = self.hooks
        a, ln_1 = _layernorm_forward(x, p[self._ln1_w], p[self._ln1_b])
        a = hooks.column_in(a)
        qkv, _ = L.linear_forward(a, p[self._attn_w], p[self._attn_b])               # (N, 3C)
        y, attn = L.attention_forward(qkv, B, T, self.n_head, self._causal_mask(T, x))  # (N, C)
        h = L.bias_residual_forward(hooks.row_out(y @ p[self._aproj_w]), p[self._aproj_b], x)  # (N, C)
        m, ln_2 = _layernorm_forward(h, p[self._ln2_w], p[self._ln2_b])
        m = hooks.column_in(m)
        f, _ = L.linear_forward(m, p[self._fc_w], p[self._fc_b])                       # (N, 4C)
        act, gelu = L.gelu_forward(f)
        out = L.bias_residual_forward(hooks.row_out(act @ p[self._mproj_w]), p[self._mproj_b], h)  # (N, C)
        return out, BlockCache(ln_1, a, attn, y, ln_2, m, gelu, act)

    def backward(self, p, g, dy, cache):
        """dy (N, C) -> dx (N, C), a new array (dy is left as it is); adds into g[h.{i}.*]."""
        hooks = self.hooks
        g[self._mproj_b] += dy.sum(axis=0)
        dact = L.linear_backward(hooks.row_out_backward(dy), cache.mlp_proj_in, p[self._mproj_w],
                                 g[self._mproj_w], None)                               # (N, 4C)
        df = L.gelu_backward(dact, cache.gelu)
        dm = L.linear_backward(df, cache.c_fc_in, p[self._fc_w], g[self._fc_w], g[self._fc_b])
        dh = _layernorm_backward(hooks.column_in_backward(dm), cache.ln_2, p[self._ln2_w],
                                 g[self._ln2_w], g[self._ln2_b])
        dh = L.residual_bias_backward(dh, dy, g[self._aproj_b])
        dyatt = L.linear_backward(hooks.row_out_backward(dh), cache.c_proj_in, p[self._aproj_w],
                                  g[self._aproj_w], None)                              # (N, C)
        dqkv = L.attention_backward(dyatt, cache.attn)                                 # (N, 3C)
        da = L.linear_backward(dqkv, cache.c_attn_in, p[self._attn_w], g[self._attn_w], g[self._attn_b])
        dx = _layernorm_backward(hooks.column_in_backward(da), cache.ln_1, p[self._ln1_w],
                                 g[self._ln1_w], g[self._ln1_b])
        dx += dh                                               # residual
        return dx


class Head:
    """Final LayerNorm, logits and mean cross-entropy. Owns ln_f.* (+ lm_head.weight (C, V) when
    untied); the tied head reads wte (V, C) as its output weight and adds into g["wte"]."""

    def __init__(self, tie_weights):
        self.tie_weights = bool(tie_weights)
        self.names = ("ln_f.weight", "ln_f.bias") + (() if self.tie_weights else ("lm_head.weight",))
        self.reads = self.names + (("wte",) if self.tie_weights else ())

    def __repr__(self):
        return f"Head(tie_weights={self.tie_weights})"

    def _weight(self, p):
        return p["wte"].T if self.tie_weights else p["lm_head.weight"]   # (C, V)

    def logits(self, p, x):
        """x (N, C) -> logits (N, V), keeping nothing for a backward."""
        xf, _ = L.layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        return xf @ self._weight(p)

    def forward(self, p, x, targets):
        """x (N, C), targets (B, T) or (N,) -> (mean cross-entropy as a 0-d array, cache)."""
        xf, ln_f = _layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        logits, _ = L.linear_forward(xf, self._weight(p), None)                      # (N, V)
        loss, ce = L.cross_entropy_forward(logits, targets.reshape(-1))
        return loss, HeadCache(ln_f, xf, ce)

    def backward(self, p, g, cache):
        """Gradient of the loss (d loss = 1) -> dx (N, C); overwrites the cached probabilities."""
        dlogits = L.cross_entropy_backward(cache.ce)                                  # (N, V)
        if self.tie_weights:
            # logits = xf @ wte^T: the head's weight gradient is dlogits^T xf, (V, C)
            g["wte"] += dlogits.T @ cache.head_in
            dxf = dlogits @ p["wte"]
        else:
            dxf = L.linear_backward(dlogits, cache.head_in, p["lm_head.weight"], g["lm_head.weight"], None)
        return _layernorm_backward(dxf, cache.ln_f, p["ln_f.weight"], g["ln_f.weight"], g["ln_f.bias"])


def gpt_units(cfg, hooks=None):
    """[Embedding, Block 0..L-1, Head] for a model config."""
    return [Embedding(), *(Block(i, cfg.n_head, hooks) for i in range(cfg.n_layer)), Head(cfg.tie_weights)]


# ---------------------------------------------------------------------------------------- layout
def param_range(unit, layout):
    """(lo, hi): the flat offsets of the parameters `unit` owns; they must be contiguous in `layout`."""
    slots = sorted((layout.by_name[n] for n in unit.names), key=lambda s: s.offset)
    lo, hi = slots[0].offset, slots[-1].offset + slots[-1].size
    if sum(s.size for s in slots) != hi - lo:
        raise ValueError(f"{unit!r}: its parameters are not contiguous in the flat layout")
    return lo, hi


def check_tiling(units, layout):
    """The units' owned parameters, in unit order, are exactly the layout's slots in flat order."""
    names = [n for u in units for n in u.names]
    if names != [s.name for s in layout.slots]:
        raise ValueError("the units' parameters do not tile the flat layout in order")


# ---------------------------------------------------------------------------------------- sources
class ResidentSource:
    """The model's own parameter and gradient views (model.params, model.grads); release is free."""

    def __init__(self, model):
        self.model = model

    def acquire(self, unit, phase):
        return self.model.params, (None if phase == "forward" else self.model.grads)

    def release(self, unit, phase):
        pass


# ---------------------------------------------------------------------------------------- ranges
def forward_units(units, source, inp, B, T, targets=None, keep=True, recompute=False):
    """Run a contiguous range of units forward -> (out, caches).

    inp: idx (B, T) when the range starts at the Embedding, else an activation (N, C) (not
    modified). out: the loss (0-d array) when the range ends at the Head (targets (B, T) then
    required), else the activation (N, C). caches: one per unit, in order ([] unless keep);
    a block's is a RecomputeCache (its input only) when recompute.
    """
    caches = []
    x = inp
    for unit in units:
        p, _ = source.acquire(unit, "forward")
        if isinstance(unit, Block):
            x_in = x
            x, cache = unit.forward(p, x, B, T)
            if recompute:
                cache = RecomputeCache(x_in, B, T)
            del x_in
        elif isinstance(unit, Embedding):
            x, cache = unit.forward(p, x)
        else:
            x, cache = unit.forward(p, x, targets)
        source.release(unit, "forward")
        if keep:
            caches.append(cache)
        del cache
    return x, caches


def backward_units(units, source, dout, caches, unit_done=None):
    """Run the range's backward, last unit first -> din; consumes (empties) `caches`.

    dout: gradient of the range's output (N, C) (not modified), or None when the range ends at
    the Head (d loss = 1). din: gradient of the input activation (N, C), or None when the range
    starts at the Embedding. unit_done(unit), if given, is called after each unit's release.
    """
    if len(caches) != len(units):
        raise ValueError(f"{len(units)} units but {len(caches)} caches")
    d = dout
    for unit in reversed(units):
        cache = caches.pop()
        p, g = source.acquire(unit, "backward")
        if isinstance(cache, RecomputeCache):
            _, cache = unit.forward(p, cache.x, cache.B, cache.T)   # the block's full cache, again
        if isinstance(unit, Block):
            d = unit.backward(p, g, d, cache)
        elif isinstance(unit, Head):
            d = unit.backward(p, g, cache)
        else:
            unit.backward(p, g, d, cache)
            d = None
        del cache
        source.release(unit, "backward")
        if unit_done is not None:
            unit_done(unit)
    return d
