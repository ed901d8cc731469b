// Quantize / dequantize. NumPy twins: int8_quantize / int8_dequantize (hpclm/compress/int8.py),
// qsgd_codes (qsgd.py), terngrad_codes (terngrad.py). Stochastic rounding draws u from the
// SplitMix64 stream (common.cuh) at the element's index: bit-identical to the twin given the same
// scale inputs. Products/sums use __fmul_rn/__fadd_rn so nvcc cannot contract them into FMAs
// (NumPy rounds each operation separately).
// Versions:
//   int8_absmax_v1   one thread per block, serial max |g| (naive)
//   int8_absmax_v2   one CUDA block (256 threads) per quantization block, shared-memory tree max
//   int8_quantize_v1 one thread per element: q = rint(g * (1 / scale)) (round half even)
//   int8_dequantize_v1 one thread per element
//   qsgd_codes_v1    one thread per element: code = sign * min(floor(|g| f + u), s) + s
//   terngrad_codes_v1 one thread per element: code = 1 + sign * [u < |g| inv_m]
#include "common.cuh"

extern "C" __global__ void int8_absmax_v1(const float* __restrict__ g, float* __restrict__ scales, i64 n, int block) {
    i64 b = gtid();
    i64 nblk = (n + block - 1) / block;
    if (b >= nblk) return;
    float m = 0.0f;
    for (i64 i = b * block; i < n && i < (b + 1) * block; ++i) m = fmaxf(m, fabsf(g[i]));
    scales[b] = m / 127.0f;
}

extern "C" __global__ void int8_absmax_v2(const float* __restrict__ g, float* __restrict__ scales, i64 n, int block) {
    __shared__ float red[256];
    i64 b = blockIdx.x;
    i64 lo = b * block, hi = min(n, lo + (i64)block);
    float m = 0.0f;
    for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) m = fmaxf(m, fabsf(g[i]));
    red[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    if (threadIdx.x == 0) scales[b] = red[0] / 127.0f;
}

extern "C" __global__ void int8_quantize_v1(const float* __restrict__ g, const float* __restrict__ scales, signed char* __restrict__ q, i64 n, int block) {
    i64 i = gtid();
    if (i >= n) return;
    float s = scales[i / block];
    float inv = s > 0.0f ? 1.0f / s : 0.0f;
    q[i] = (signed char)rintf(__fmul_rn(g[i], inv));
}

extern "C" __global__ void int8_dequantize_v1(const signed char* __restrict__ q, const float* __restrict__ scales, float* __restrict__ out, i64 n, int block) {
    i64 i = gtid();
    if (i >= n) return;
    out[i] = __fmul_rn((float)q[i], scales[i / block]);
}

extern "C" __global__ void qsgd_codes_v1(const float* __restrict__ g, unsigned char* __restrict__ codes, i64 n, float f, int s, u64 key) {
    i64 i = gtid();
    if (i >= n) return;
    float x = g[i];
    float r = floorf(__fadd_rn(__fmul_rn(fabsf(x), f), uniform24(key, (u64)i)));
    r = fminf(r, (float)s);
    codes[i] = (unsigned char)__fadd_rn(copysignf(r, x), (float)s);
}

extern "C" __global__ void terngrad_codes_v1(const float* __restrict__ g, unsigned char* __restrict__ codes, i64 n, float inv_m, u64 key) {
    i64 i = gtid();
    if (i >= n) return;
    float x = g[i];
    int keep = uniform24(key, (u64)i) < __fmul_rn(fabsf(x), inv_m);
    int neg = __float_as_uint(x) >> 31;
    codes[i] = (unsigned char)(1 + (keep ? (neg ? -1 : 1) : 0));
}
