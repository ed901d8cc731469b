"""The 1-bit compressed all-reduce of DeepSpeed's 1-bit Adam (Tang et al. 2021, "1-bit Adam:
Communication Efficient Large-Scale Training with Adam's Convergence Speed"; DeepSpeed's
`compressed_allreduce`), with the communicator passed in.

For a buffer of n elements on P ranks (padded with zeros to N, a multiple of 8P, so every chunk
of k = N/P elements packs into whole bytes):

    x        = pad(g) + e_worker                    e_worker (N,): this rank's worker error
    for each chunk j:  c_j = C(x_j)                 C: sign + scale (SignScale below)
    e_worker = x - D(c)                             what compression lost stays here
    all-to-all: chunk j of every rank goes to rank j
    y        = mean_i D(c_i^(r)) + e_server          e_server (k,): this rank's server error
    s        = C(y);  e_server = y - D(s)
    all-gather s;  g <- D(s_0) | D(s_1) | ... | D(s_{P-1}), cropped to n

On the wire per rank: (P-1) chunks each way in the all-to-all and in the all-gather, one chunk
being k/8 bytes of signs + 4 bytes of scale: 2 (P-1) (N/(8P) + 4) bytes sent, the same received,
against 2 (P-1)/P 4n for an fp32 all-reduce: ~32x fewer. Every rank ends with the same result
(the all-gathered server chunks). Both error buffers belong to the checkpoint (state_dict).

C is any compressor with fixed-size payloads for equal chunk sizes; the default is DeepSpeed's
sign + scale: scale = ||x||_2 / sqrt(k), signs packed 8 per byte (0 counts as +), D = scale * sign.
"""
import numpy

from hpclm import comm as collectives
from hpclm import xp as X
from hpclm.compress.base import Context
from hpclm.compress.ef_sign import EFSign
from hpclm.parallel.exchange import _align, pack, timed, unpack


class SignScale(EFSign):
    """EF-Sign's payload (packed sign bits (ceil(k/8),) uint8, scale (1,) float32; D = scale * sign,
    0 -> +1) with DeepSpeed's scale ||x||_2 / sqrt(k) instead of mean |x|."""

    name = "sign_scale"

    def scale_of(self, grad):
        xp = X.array_module(grad)
        return float(xp.linalg.norm(grad)) / numpy.sqrt(max(grad.size, 1))


def padded_size(n, P):
    """N >= n, a multiple of 8 P (whole bytes of signs in every chunk); at least 8 P."""
    unit = 8 * P
    return max(unit, -(-n // unit) * unit)


class OneBitAllreduce:
    """The per-buffer state (worker and server error) of the 1-bit compressed all-reduce."""

    name = "onebit"

    def __init__(self, n, world, dtype, compressor=None):
        self.n, self.P = n, world
        self.N = padded_size(n, world)
        self.k = self.N // world
        self.dtype = numpy.dtype(dtype)
        self.compressor = compressor or SignScale()
        self.worker_error = X.np.zeros(self.N, dtype=self.dtype)
        self.server_error = X.np.zeros(self.k, dtype=self.dtype)
        self._x = X.np.zeros(self.N, dtype=self.dtype)

    def chunk_bytes(self):
        """Bytes of one compressed chunk (what travels per peer per phase)."""
        return sum(_align(b) for b in self._part_bytes())

    def _part_bytes(self):
        payload, _ = self.compressor.compress(X.np.zeros(self.k, dtype=self.dtype))
        return [a.nbytes for a in payload]

    def wire_bytes(self):
        """Bytes this rank sends (= receives) per call: (P-1) chunks in each of the two phases."""
        return 2 * (self.P - 1) * self.chunk_bytes()

    def allreduce(self, comm, grad, algorithm="mpi", timer=None):
        """grad (n,) <- the 1-bit compressed average over `comm` (None or one rank: no traffic,
        but both compressions and error buffers still apply). Regions: compress, comm, decompress."""
        P, k, comp = self.P, self.k, self.compressor
        world = 1 if comm is None else comm.Get_size()
        if world != P:
            raise ValueError(f"onebit: built for {P} ranks, called on {world}")
        xp = X.array_module(grad)
        x = self._x
        a2a_alg = "mpi" if algorithm == "mpi" else "pairwise"
        ag_alg = "ring" if algorithm == "ring" else "mpi"

        def worker_compress():
            x[:self.n] = grad
            x[self.n:] = 0
            xp.add(x, self.worker_error, out=x)
            bufs, sent = [], []
            for j in range(P):
                payload, ctx = comp.compress(x[j * k:(j + 1) * k])
                buf, counts = pack(payload)
                bufs.append(buf)
                sent.append(comp.decompress(payload, ctx))
            xp.subtract(x, xp.concatenate(sent), out=self.worker_error)
            self._like, self._counts = payload, counts
            return numpy.concatenate(bufs)

        send = timed(timer, "compress", worker_compress)
        L = send.size // P
        recv = timed(timer, "comm", lambda: collectives.alltoall(comm, send, algorithm=a2a_alg) if P > 1 else send)
        ctx = Context(k, self.dtype)

        def server_compress():
            y = self.server_error.copy()
            for i in range(P):
                y += comp.decompress(unpack(recv[i * L:(i + 1) * L], self._counts, self._like), ctx) * \
                    self.dtype.type(1.0 / P)
            payload, sctx = comp.compress(y)
            xp.subtract(y, comp.decompress(payload, sctx), out=self.server_error)
            return pack(payload)[0]

        mine = timed(timer, "compress", server_compress)
        full = timed(timer, "comm", lambda: collectives.allgather(comm, mine, algorithm=ag_alg) if P > 1 else mine)

        def gather_decompress():
            out = xp.concatenate([comp.decompress(unpack(full[i * L:(i + 1) * L], self._counts, self._like), ctx)
                                  for i in range(P)])
            grad[...] = out[:self.n]
        timed(timer, "decompress", gather_decompress)
        return grad

    def average(self, comm, grad, step=0, algorithm="mpi", timer=None):
        """The bucket-codec interface of hpclm.parallel.exchange (step is not used)."""
        return self.allreduce(comm, grad, algorithm=algorithm, timer=timer)

    def state_dict(self):
        return {"worker_error": X.to_host(self.worker_error).copy(), "server_error": X.to_host(self.server_error).copy()}

    def load_state_dict(self, state):
        self.worker_error[...] = X.to_device(state["worker_error"])
        self.server_error[...] = X.to_device(state["server_error"])


def simulate(inputs, worker_errors, server_errors, compressor=None):
    """NumPy reference of one call on every rank at once: inputs[r] (n,), errors per rank (updated in
    place). Returns the common result (n,). Used by the tests; no communication."""
    comp = compressor or SignScale()
    P, n = len(inputs), inputs[0].size
    N = padded_size(n, P)
    k = N // P
    chunks = []                                           # chunks[r][j]: D(C(x_r chunk j))
    for r in range(P):
        x = numpy.zeros(N, dtype=inputs[r].dtype)
        x[:n] = inputs[r]
        x += worker_errors[r]
        parts = [comp.decompress(*comp.compress(x[j * k:(j + 1) * k])) for j in range(P)]
        worker_errors[r][...] = x - numpy.concatenate(parts)
        chunks.append(parts)
    out = []
    for j in range(P):                                    # rank j is the server of chunk j
        y = server_errors[j].copy()
        for i in range(P):
            y += chunks[i][j] * y.dtype.type(1.0 / P)
        s = comp.decompress(*comp.compress(y))
        server_errors[j][...] = y - s
        out.append(s)
    return numpy.concatenate(out)[:n]
