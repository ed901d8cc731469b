// Shared device helpers, included by the kernels (the loader hpclm/compress/cuda.py inlines this
// file for NVRTC; nvcc finds it with -I kernels).
// SplitMix64 counter-based hash: the same arithmetic as hpclm/compress/rng.py, so draws are
// bit-identical between the CUDA kernels and their NumPy twins.
#pragma once
typedef unsigned long long u64;
typedef long long i64;

__device__ __forceinline__ u64 splitmix64(u64 key, u64 counter) {
    u64 z = key + (counter + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// top 24 bits * 2^-24: exact in float32, in [0, 1)
__device__ __forceinline__ float uniform24(u64 key, u64 counter) {
    return (float)(unsigned int)(splitmix64(key, counter) >> 40) * 5.9604644775390625e-08f;
}

__device__ __forceinline__ i64 gtid() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
