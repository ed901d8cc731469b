"""GPT-2 style language model with a hand-written forward and backward pass.

Pre-LayerNorm blocks: x += attn(ln_1(x)); x += mlp(ln_2(x)); then ln_f and an output head tied
to wte (or a separate lm_head.weight). Parameters and gradients are views into two flat buffers
(`model.flat`, `model.grad_flat`), named as GPT-2 names them. The backward is a literal mirror of
the forward, block for block.

Dimension legend: B batch, T time, C n_embd, V vocab, N = B * T.
"""
import numpy

from hpclm import xp as X
from hpclm.errors import UserError
from hpclm.model import layers as L
from hpclm.model.params import ParamLayout, gpt2_shapes

INIT_STD = 0.02


class GPT:
    def __init__(self, cfg, seed=0, dtype="float32", flat=None):
        """flat: an existing parameter buffer to share (no initialisation), as the thread replicas do."""
        cfg.validate()
        if cfg.vocab_size < 1:
            raise UserError("model.vocab_size must be set (>= 1) to build a model")
        self.cfg = cfg
        self.dtype = numpy.dtype(dtype)
        self.layout = ParamLayout(gpt2_shapes(cfg))
        xp = X.np
        self.flat = xp.zeros(self.layout.size, dtype=self.dtype) if flat is None else flat  # all parameters
        self.grad_flat = xp.zeros(self.layout.size, dtype=self.dtype)   # all gradients, same layout
        self.params = self.layout.views(self.flat)
        self.grads = self.layout.views(self.grad_flat)
        if flat is None:
            self.flat[...] = xp.asarray(self._initial_values(seed))
        self._mask = L.causal_mask(cfg.block_size, self.dtype, xp)      # (T, T)

    def _initial_values(self, seed):
        """GPT-2 init, drawn on the host so every backend starts from the same numbers."""
        rng = numpy.random.default_rng(seed)
        flat = numpy.zeros(self.layout.size, dtype=self.dtype)
        proj_std = INIT_STD / numpy.sqrt(2 * self.cfg.n_layer)         # residual projections
        for s in self.layout.slots:
            view = flat[s.offset:s.offset + s.size]
            if s.name.endswith("ln_1.weight") or s.name.endswith("ln_2.weight") or s.name == "ln_f.weight":
                view[:] = 1.0
            elif len(s.shape) == 2:
                std = proj_std if s.name.endswith("c_proj.weight") else INIT_STD
                view[:] = rng.normal(0.0, std, s.size)
        return flat

    def num_params(self, non_embedding=False):
        """Parameter count; non_embedding drops wpe (and wte unless it is also the output head)."""
        n = self.layout.size
        if non_embedding:
            n -= self.params["wpe"].size
            if not self.cfg.tie_weights:
                n -= self.params["wte"].size
        return n

    # ------------------------------------------------------------------------------------ forward
    def _check_input(self, idx, targets=None):
        if idx.ndim != 2 or idx.shape[1] > self.cfg.block_size or idx.shape[1] < 1:
            raise UserError(f"input must be (B, T) with 1 <= T <= block_size={self.cfg.block_size}, got {idx.shape}")
        if targets is not None and targets.shape != idx.shape:
            raise UserError(f"targets must have the shape of idx {idx.shape}, got {targets.shape}")

    def _head_weight(self):
        p = self.params
        return p["wte"].T if self.cfg.tie_weights else p["lm_head.weight"]   # (C, V)

    def _forward(self, idx, keep):
        """idx (B, T) -> logits (N, V) and, if keep, the caches the backward needs."""
        p, n_head = self.params, self.cfg.n_head
        B, T = idx.shape
        mask = self._mask[:T, :T]
        x, emb_cache = L.embedding_forward(idx, p["wte"], p["wpe"])      # (N, C)
        caches = []
        for i in range(self.cfg.n_layer):
            h = f"h.{i}."
            a, ln1 = L.layernorm_forward(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"])
            qkv, fc_attn = L.linear_forward(a, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"])  # (N, 3C)
            y, att = L.attention_forward(qkv, B, T, n_head, mask)                                       # (N, C)
            o, proj = L.linear_forward(y, p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"])       # (N, C)
            x += o                                                           # residual (x is this forward's own array)
            m, ln2 = L.layernorm_forward(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"])
            f, fc = L.linear_forward(m, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"])               # (N, 4C)
            g, gelu = L.gelu_forward(f)
            o, mproj = L.linear_forward(g, p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])        # (N, C)
            x += o
            if keep:
                caches.append((ln1, fc_attn, att, proj, ln2, fc, gelu, mproj))
        xf, lnf = L.layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
        logits, head = L.linear_forward(xf, self._head_weight(), None)                                  # (N, V)
        return logits, (emb_cache, caches, lnf, head)

    def forward(self, idx):
        """idx (B, T) ints -> logits (B, T, V). Keeps no caches."""
        self._check_input(idx)
        logits, _ = self._forward(idx, keep=False)
        return logits.reshape(idx.shape[0], idx.shape[1], -1)

    def loss(self, idx, targets):
        """Mean cross-entropy of targets (B, T) under the model, without gradients."""
        self._check_input(idx, targets)
        logits, _ = self._forward(idx, keep=False)
        loss, _ = L.cross_entropy_forward(logits, targets.reshape(-1))
        return float(loss)

    # ------------------------------------------------------------------------------------ backward
    def forward_backward(self, idx, targets, grad_ready=None, accumulate=False, timer=None):
        """Loss of targets (B, T) given idx (B, T); fills model.grads (zeroed first unless accumulate).

        grad_ready(offset), if given, is called as soon as every gradient at flat offsets
        [offset, size) is final (after the head, after each block from the last, after the
        embeddings), so a data-parallel strategy can start communicating those buckets early.
        timer (an hpclm.timing.Timer), if given, times the "forward" and "backward" regions.
        """
        self._check_input(idx, targets)
        if not accumulate:
            self.grad_flat.fill(0)
        if timer:
            timer.start("forward")
        logits, (emb_cache, caches, lnf, head) = self._forward(idx, keep=True)
        loss, ce = L.cross_entropy_forward(logits, targets.reshape(-1))
        if timer:
            timer.stop("forward")
            timer.start("backward")
        p, d, slot = self.params, self.grads, self.layout.by_name
        notify = grad_ready or (lambda offset: None)

        dlogits = L.cross_entropy_backward(ce)                                          # (N, V)
        if self.cfg.tie_weights:
            # logits = xf @ wte^T: the head's weight gradient is dlogits^T xf, (V, C)
            d["wte"] += dlogits.T @ head
            dxf = dlogits @ p["wte"]
        else:
            dxf = L.linear_backward(dlogits, head, p["lm_head.weight"], d["lm_head.weight"], None)
        dx = L.layernorm_backward(dxf, lnf, d["ln_f.weight"], d["ln_f.bias"])           # (N, C)
        notify(slot["ln_f.weight"].offset)
        for i in reversed(range(self.cfg.n_layer)):
            h = f"h.{i}."
            ln1, fc_attn, att, proj, ln2, fc, gelu, mproj = caches.pop()
            dg = L.linear_backward(dx, mproj, p[h + "mlp.c_proj.weight"], d[h + "mlp.c_proj.weight"], d[h + "mlp.c_proj.bias"])
            df = L.gelu_backward(dg, gelu)
            dm = L.linear_backward(df, fc, p[h + "mlp.c_fc.weight"], d[h + "mlp.c_fc.weight"], d[h + "mlp.c_fc.bias"])
            dx += L.layernorm_backward(dm, ln2, d[h + "ln_2.weight"], d[h + "ln_2.bias"])
            dy = L.linear_backward(dx, proj, p[h + "attn.c_proj.weight"], d[h + "attn.c_proj.weight"], d[h + "attn.c_proj.bias"])
            dqkv = L.attention_backward(dy, att)
            da = L.linear_backward(dqkv, fc_attn, p[h + "attn.c_attn.weight"], d[h + "attn.c_attn.weight"], d[h + "attn.c_attn.bias"])
            dx += L.layernorm_backward(da, ln1, d[h + "ln_1.weight"], d[h + "ln_1.bias"])
            notify(slot[h + "ln_1.weight"].offset)
        L.embedding_backward(dx, emb_cache, d["wte"], d["wpe"])
        if timer:
            timer.stop("backward")
        notify(0)
        return float(loss)
