// Fused error-feedback updates (hpclm/compress/memory.py, signsgd.py). Each is one pass.
// Versions:
//   ef_accumulate_v1      e += g
//   ef_momentum_v1        u = m u + g; e += u   (DGC momentum correction; no FMA contraction)
//   ef_sign_residual_v1   acc -= copysign(scale, acc)   (= acc - D(C(acc)) for signsgd/ef_sign)
//   ef_zero_sent_v1       acc[idx] = 0 (and u[idx] = 0 with factor masking) for sparse payloads
#include "common.cuh"

extern "C" __global__ void ef_accumulate_v1(float* __restrict__ e, const float* __restrict__ g, i64 n) {
    i64 i = gtid();
    if (i < n) e[i] = __fadd_rn(e[i], g[i]);
}

extern "C" __global__ void ef_momentum_v1(float* __restrict__ e, float* __restrict__ u, const float* __restrict__ g, i64 n, float m) {
    i64 i = gtid();
    if (i >= n) return;
    float v = __fadd_rn(__fmul_rn(u[i], m), g[i]);
    u[i] = v;
    e[i] = __fadd_rn(e[i], v);
}

extern "C" __global__ void ef_sign_residual_v1(float* __restrict__ acc, i64 n, float scale) {
    i64 i = gtid();
    if (i < n) acc[i] = __fsub_rn(acc[i], copysignf(scale, acc[i]));
}

extern "C" __global__ void ef_zero_sent_v1(float* __restrict__ acc, float* __restrict__ u, const int* __restrict__ idx, i64 k) {
    i64 i = gtid();
    if (i >= k) return;
    acc[idx[i]] = 0.0f;
    if (u) u[idx[i]] = 0.0f;
}
