// Fused error-feedback update (hpclm/compress/signsgd.py). One pass.
// Versions:
//   ef_sign_residual_v1   acc -= copysign(scale, acc)   (= acc - D(C(acc)) for signsgd/ef_sign)
#include "common.cuh"

extern "C" __global__ void ef_sign_residual_v1(float* __restrict__ acc, i64 n, float scale) {
    i64 i = gtid();
    if (i < n) acc[i] = __fsub_rn(acc[i], copysignf(scale, acc[i]));
}
