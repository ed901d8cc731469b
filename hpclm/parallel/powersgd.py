"""PowerSGD (Vogels, Karimireddy & Jaggi 2019, "PowerSGD: Practical Low-Rank Gradient Compression
for Distributed Optimization", Algorithm 1 with error feedback), over the flat parameter layout.

Every 2-D weight (layout slot with len(shape) == 2, n x m) whose rank-r factors are smaller than
the matrix, r (n + m) < n m with r = min(compress.powersgd_rank, n, m), is compressed; every other slot
(biases, LayerNorm gains, tiny matrices) is all-reduced uncompressed, all in one buffer. Per step,
after backward, on the training thread:

    M_i = G_i + E_i                        error feedback (compress.error_feedback auto/on: on)
    P_i = M_i Q_i                          (n, r)  Q_i (m, r) warm-started: last step's Q_i
    all-reduce (average) of all P_i        ONE buffer, sum_i n_i r_i elements
    P_i <- orthonormal basis of P_i        (reduced QR; the same on every rank)
    Q_i = M_i^T P_i                        (m, r)
    all-reduce (average) of all Q_i        ONE buffer, sum_i m_i r_i elements
    G_i <- P_i Q_i^T;  E_i <- M_i - P_i Q_i^T

(plus one all-reduce of the uncompressed slots). Q starts as a standard normal draw from
compress.seed, the same on every rank. The result is identical on every rank (it is built from
all-reduced P and Q). Q and E are this strategy's checkpoint state.

Bytes on the wire for the matrices against fp32 of the same matrices: sum n m / (r sum (n + m)),
e.g. the char model (n_embd 128, 4 layers, V 65) at r = 4: ~23x; a single C x 4C matrix C / 5 = 25.6x.
"""
import numpy

from hpclm import comm as collectives
from hpclm import xp as X
from hpclm.compress.powersgd import accumulate_p, approximate, compute_p, compute_q, orthogonalize
from hpclm.parallel.exchange import timed
from hpclm.parallel.sync import GradSync


def split_slots(layout, rank):
    """([(slot, r)] compressed matrices, [slot] uncompressed) for PowerSGD of the given rank."""
    mats, rest = [], []
    for s in layout.slots:
        if len(s.shape) == 2:
            n, m = s.shape
            r = min(rank, n, m)
            if r * (n + m) < n * m:
                mats.append((s, r))
                continue
        rest.append(s)
    return mats, rest


class PowerSGDReducer:
    """The state and the step of PowerSGD over one flat gradient with the given layout."""

    def __init__(self, layout, dtype, rank=4, seed=0, error_feedback=True):
        xp = X.np
        self.dtype = numpy.dtype(dtype)
        self.mats, self.rest = split_slots(layout, rank)
        self.p_offsets, self.q_offsets, self.e_offsets = [0], [0], [0]
        for s, r in self.mats:
            n, m = s.shape
            self.p_offsets.append(self.p_offsets[-1] + n * r)
            self.q_offsets.append(self.q_offsets[-1] + m * r)
            self.e_offsets.append(self.e_offsets[-1] + n * m)
        self.p_buf = xp.zeros(self.p_offsets[-1], dtype=self.dtype)
        draw = numpy.random.default_rng([int(seed), 0x50534744]).standard_normal(self.q_offsets[-1])
        self.q_buf = X.to_device(draw.astype(self.dtype))
        self.error = xp.zeros(self.e_offsets[-1], dtype=self.dtype) if error_feedback else None
        self.rest_size = sum(s.size for s in self.rest)
        self.rest_buf = xp.zeros(self.rest_size, dtype=self.dtype)

    def _views(self, i):
        (s, r), n, m = self.mats[i], *self.mats[i][0].shape
        p = self.p_buf[self.p_offsets[i]:self.p_offsets[i + 1]].reshape(n, r)
        q = self.q_buf[self.q_offsets[i]:self.q_offsets[i + 1]].reshape(m, r)
        e = None if self.error is None else self.error[self.e_offsets[i]:self.e_offsets[i + 1]].reshape(n, m)
        return s, p, q, e

    def matrix_elements(self):
        return self.e_offsets[-1]

    def factor_elements(self):
        return self.p_buf.size + self.q_buf.size

    def step(self, comm, grad_flat, algorithm="mpi", timer=None):
        """grad_flat <- the PowerSGD average over `comm` (None: one rank, compression still applies).
        Regions: compress (P = MQ, orthogonalisation, Q = M^T P), comm (the all-reduces),
        decompress (G = P Q^T and the error update)."""
        world = 1 if comm is None else comm.Get_size()
        allreduce = (lambda buf: collectives.allreduce(comm, buf, op="average", algorithm=algorithm)) if world > 1 \
            else (lambda buf: buf)
        ms = []

        def compress_p():
            for i in range(len(self.mats)):
                s, p, q, e = self._views(i)
                g = grad_flat[s.offset:s.offset + s.size].reshape(s.shape)
                if e is not None:                      # M = E + G (E += G), P = M Q
                    accumulate_p(e, g, q, out=p)
                    ms.append(e)
                else:                                  # M = G: read until decompress overwrites it
                    compute_p(g, q, out=p)
                    ms.append(g)
            at = 0
            for s in self.rest:
                self.rest_buf[at:at + s.size] = grad_flat[s.offset:s.offset + s.size]
                at += s.size

        timed(timer, "compress", compress_p)
        timed(timer, "comm", lambda: (allreduce(self.p_buf), allreduce(self.rest_buf)))

        def compress_q():
            for i, m in enumerate(ms):
                _, p, q, _ = self._views(i)
                p[...] = orthogonalize(p)
                compute_q(m, p, out=q)

        timed(timer, "compress", compress_q)
        timed(timer, "comm", lambda: allreduce(self.q_buf))

        def decompress():
            for i in range(len(ms)):
                s, p, q, e = self._views(i)
                approximate(p, q, out=grad_flat[s.offset:s.offset + s.size].reshape(s.shape), subtract_from=e)
            at = 0
            for s in self.rest:
                grad_flat[s.offset:s.offset + s.size] = self.rest_buf[at:at + s.size]
                at += s.size

        timed(timer, "decompress", decompress)
        return grad_flat

    def state_dict(self):
        state = {"q": X.to_host(self.q_buf).copy()}
        if self.error is not None:
            state["error"] = X.to_host(self.error).copy()
        return state

    def load_state_dict(self, state):
        self.q_buf[...] = X.to_device(state["q"])
        if self.error is not None:
            self.error[...] = X.to_device(state["error"])


class PowerSGDSync(GradSync):
    """Data parallelism with PowerSGD after backward over the whole model (no bucket overlap: the
    two all-reduces need every matrix's gradient). With one rank, compression still applies."""

    def __init__(self, group, grad_flat, layout, comm_cfg, compress_cfg, grad_scale=1.0, timer=None):
        super().__init__(group, grad_flat, grad_scale, timer)
        from hpclm.compress.memory import wants_memory
        self.algorithm = comm_cfg.algorithm
        self.reducer = PowerSGDReducer(layout, grad_flat.dtype, rank=compress_cfg.powersgd_rank, seed=compress_cfg.seed,
                                       error_feedback=wants_memory(compress_cfg))

    def average(self):
        if self.grad_scale != 1.0:
            self.grad_flat *= self.grad_flat.dtype.type(self.grad_scale)
        self.reducer.step(self.group if self.world > 1 else None, self.grad_flat, self.algorithm, self.timer)

    def local_state(self):
        return {f"powersgd.{k}": v for k, v in self.reducer.state_dict().items()}

    def load_local_state(self, flat):
        self.reducer.load_state_dict({k.split(".", 1)[1]: v for k, v in flat.items()})
