"""`qsgd` (Alistarh et al. 2017): s = cfg.levels levels, stochastic rounding, unbiased.

    r = |g| / ||g||_2 * s;   l = floor(r + u), u ~ U[0,1) from the (seed, step, rank) stream
    code = sign(g) * l + s   in [0, 2s], packed with b = bits(2s + 1) bits per element
    decompress: (code - s) * ||g|| / s     E[l] = r, so E[decompress] = g.

Travels: norm (1,) float32 and the packed codes: 4 + ceil(n * b / 8) bytes (s = 16: b = 6).
Aggregate: gather (norms differ across ranks). GPU: kernels/quantize.cu qsgd_codes + pack.cu.
"""
import numpy

from hpclm import xp as X
from hpclm.compress import rng
from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.compress.bits import CHUNK, code_bits, compiled, on_gpu, pack_codes, packed_size, spans, unpack_codes


def qsgd_codes(g, f, s, key):
    """NumPy twin of qsgd_codes in kernels/quantize.cu: f = s / ||g|| (float32). In chunks of
    CHUNK elements (the stream drawn at their offsets), so that the temporaries stay in cache."""
    n = g.size
    out = numpy.empty(n, numpy.uint8 if 2 * s < 256 else numpy.uint16)
    r = numpy.empty(min(n, CHUNK), numpy.float32)
    for lo, hi in spans(n):
        t, gc = r[: hi - lo], g[lo:hi]
        numpy.abs(gc, out=t, casting="same_kind")
        t *= numpy.float32(f)                                                # |g| / ||g|| * s
        t += rng.uniform(key, hi - lo, offset=lo, xp=numpy)
        numpy.floor(t, out=t)
        numpy.minimum(t, numpy.float32(s), out=t)
        numpy.copysign(t, gc, out=t, casting="same_kind")                   # -0.0 + s == s: fine
        t += numpy.float32(s)
        out[lo:hi] = t
    return out


class QSGD(Compressor):
    """payload = (norm float32 (1,), codes uint8 packed); 4 + ceil(n * bits(2s+1) / 8) bytes."""

    name = "qsgd"
    aggregate = AGGREGATE_GATHER

    def __init__(self, cfg, rank=0):
        self.s = cfg.levels
        if 2 * self.s + 1 > 256:
            from hpclm.errors import UserError
            raise UserError(f"qsgd: compress.levels must be <= 127, got {self.s}")
        self.bits = code_bits(2 * self.s + 1)
        self.seed, self.rank = cfg.seed, rank

    def compress(self, grad, step=0):
        xp = X.array_module(grad)
        norm = xp.linalg.norm(grad.astype(xp.float32, copy=False)).astype(xp.float32).reshape(1)
        nrm = float(norm[0])
        f = numpy.float32(self.s) / numpy.float32(nrm) if nrm > 0 else numpy.float32(0.0)
        key = rng.stream_key(self.seed, step, self.rank)
        if on_gpu(grad):
            from hpclm.compress import cuda
            codes = cuda.qsgd_codes(grad, f, self.s, key)
        elif compiled(grad):                                                 # codes and packing in one pass
            from hpclm.compress import cpu
            return (norm, cpu.encode_codes(grad, cpu.QSGD, self.bits, f, self.s, key)), Context(grad.size, grad.dtype)
        else:
            codes = qsgd_codes(grad, f, self.s, key)
        return (norm, pack_codes(codes, self.bits)), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx, out=None):
        """out: an optional (n,) buffer of ctx.dtype the compiled kernel writes into."""
        norm, packed = payload
        xp = X.array_module(packed)
        if compiled(packed):                                                 # (code - s) * norm / s
            from hpclm.compress import cpu
            scale = (norm / numpy.float32(self.s)).astype(ctx.dtype)[0]
            return cpu.decode_affine(packed, ctx.n, self.bits, self.s, scale, ctx.dtype, out)
        codes = unpack_codes(packed, ctx.n, self.bits)
        out = codes.astype(ctx.dtype)
        out -= self.s
        out *= (norm / xp.float32(self.s)).astype(ctx.dtype)
        return out

    def payload_bytes(self, n, itemsize=4):
        return 4 + packed_size(n, self.bits)
