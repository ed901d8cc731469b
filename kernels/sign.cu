// Sign bits: pack / unpack (np.packbits semantics: element 0 -> MSB of byte 0; bit 1 = IEEE sign
// bit set), majority vote over ranks, NumPy twins in hpclm/compress/bits.py and signsgd.py.
// Versions:
//   sign_pack_v1    one thread per output byte, 8 scalar loads (naive)
//   sign_pack_v2    one thread per element, warp __ballot_sync -> 4 bytes per warp (coalesced)
//   sign_unpack_v1  one thread per element, one byte load each (naive)
//   sign_unpack_v2  one thread per byte, writes its 8 floats as two float4 stores
//   sign_vote_v1    one thread per byte: counts each bit over the W ranks' packed vectors
#include "common.cuh"

extern "C" __global__ void sign_pack_v1(const float* __restrict__ g, unsigned char* __restrict__ out, i64 n) {
    i64 j = gtid();
    i64 nb = (n + 7) >> 3;
    if (j >= nb) return;
    unsigned int b = 0;
    for (int t = 0; t < 8; ++t) {
        i64 i = j * 8 + t;
        unsigned int bit = (i < n) ? (__float_as_uint(g[i]) >> 31) : 0u;
        b |= bit << (7 - t);
    }
    out[j] = (unsigned char)b;
}

// launch with blockDim a multiple of 32; every lane must reach the ballot (no early return)
extern "C" __global__ void sign_pack_v2(const float* __restrict__ g, unsigned char* __restrict__ out, i64 n) {
    i64 i = gtid();
    unsigned int bit = (i < n) ? (__float_as_uint(g[i]) >> 31) : 0u;
    unsigned int ballot = __ballot_sync(0xffffffffu, bit);
    int lane = threadIdx.x & 31;
    i64 base = (i - lane) >> 3;
    i64 nb = (n + 7) >> 3;
    if (lane < 4 && base + lane < nb)
        out[base + lane] = (unsigned char)((__brev(ballot) >> (24 - 8 * lane)) & 0xffu);
}

extern "C" __global__ void sign_unpack_v1(const unsigned char* __restrict__ p, float* __restrict__ out, i64 n, float scale) {
    i64 i = gtid();
    if (i >= n) return;
    out[i] = ((p[i >> 3] >> (7 - (i & 7))) & 1) ? -scale : scale;
}

extern "C" __global__ void sign_unpack_v2(const unsigned char* __restrict__ p, float* __restrict__ out, i64 n, float scale) {
    i64 j = gtid();
    i64 nb = (n + 7) >> 3;
    if (j >= nb) return;
    unsigned int b = p[j];
    float v[8];
    for (int t = 0; t < 8; ++t) v[t] = ((b >> (7 - t)) & 1) ? -scale : scale;
    if (j * 8 + 8 <= n && (((unsigned long long)(out + j * 8)) & 15) == 0) {
        float4* o = (float4*)(out + j * 8);
        o[0] = make_float4(v[0], v[1], v[2], v[3]);
        o[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
        for (int t = 0; t < 8 && j * 8 + t < n; ++t) out[j * 8 + t] = v[t];
    }
}

// packed: W rows of nb bytes; out bit = (2 * #negative > W); bits past n are 0
extern "C" __global__ void sign_vote_v1(const unsigned char* __restrict__ packed, unsigned char* __restrict__ out, i64 nb, int W, i64 n) {
    i64 j = gtid();
    if (j >= nb) return;
    int cnt[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int w = 0; w < W; ++w) {
        unsigned int b = packed[(i64)w * nb + j];
        for (int t = 0; t < 8; ++t) cnt[t] += (b >> (7 - t)) & 1;
    }
    unsigned int r = 0;
    for (int t = 0; t < 8; ++t)
        if (j * 8 + t < n && 2 * cnt[t] > W) r |= 1u << (7 - t);
    out[j] = (unsigned char)r;
}
