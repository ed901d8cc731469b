// Top-k selection by radix select on |g| (the float's bits with the sign cleared are ordered like
// |g|), compaction, and scatter-add of sparse payloads. The host loop in hpclm/compress/cuda.py
// runs 4 histogram passes of 8 bits (MSB first) to find the exact k-th largest key t, then
// compacts key > t and takes ties key == t by lowest index (cupy.flatnonzero), sorts the
// indices: the same set as the NumPy twin select_topk (hpclm/compress/topk.py).
// Versions:
//   radix_hist_v1    global-memory atomics per element (naive)
//   radix_hist_v2    per-block shared-memory histogram, one global atomic per bin per block
//   compact_gt_v1    one thread per element, atomic slot counter (order fixed afterwards by a sort)
//   scatter_add_v1   out[idx[i]] += vals[i] with atomicAdd (payloads of many ranks, repeated indices)
#include "common.cuh"

__device__ __forceinline__ unsigned int abskey(float x) { return __float_as_uint(x) & 0x7fffffffu; }

extern "C" __global__ void radix_hist_v1(const float* __restrict__ g, i64 n, unsigned int prefix, unsigned int mask, int shift, unsigned int* __restrict__ hist) {
    i64 i = gtid();
    if (i >= n) return;
    unsigned int k = abskey(g[i]);
    if ((k & mask) == prefix) atomicAdd(hist + ((k >> shift) & 0xffu), 1u);
}

extern "C" __global__ void radix_hist_v2(const float* __restrict__ g, i64 n, unsigned int prefix, unsigned int mask, int shift, unsigned int* __restrict__ hist) {
    __shared__ unsigned int local[256];
    for (int b = threadIdx.x; b < 256; b += blockDim.x) local[b] = 0;
    __syncthreads();
    for (i64 i = gtid(); i < n; i += (i64)gridDim.x * blockDim.x) {
        unsigned int k = abskey(g[i]);
        if ((k & mask) == prefix) atomicAdd(local + ((k >> shift) & 0xffu), 1u);
    }
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x)
        if (local[b]) atomicAdd(hist + b, local[b]);
}

extern "C" __global__ void compact_gt_v1(const float* __restrict__ g, i64 n, unsigned int t, int* __restrict__ idx, unsigned int* __restrict__ counter) {
    i64 i = gtid();
    if (i >= n) return;
    if (abskey(g[i]) > t) idx[atomicAdd(counter, 1u)] = (int)i;
}

extern "C" __global__ void scatter_add_v1(const float* __restrict__ vals, const int* __restrict__ idx, i64 k, float* __restrict__ out) {
    i64 i = gtid();
    if (i >= k) return;
    atomicAdd(out + idx[i], vals[i]);
}
