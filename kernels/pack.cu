// b-bit code packing (codes back to back, MSB first, as np.packbits of each code's low b bits);
// NumPy twins: pack_codes / unpack_codes in hpclm/compress/bits.py.
// Versions:
//   pack_codes_v1    one thread per output byte, bit by bit (any b in 1..8; naive)
//   pack_codes_v2    one thread per output byte, 8/b whole codes per byte (b in 1, 2, 4, 8)
//   unpack_codes_v1  one thread per element, bit by bit (any b in 1..8)
//   unpack_codes_v2  one thread per element, one shift and mask (b in 1, 2, 4, 8)
#include "common.cuh"

extern "C" __global__ void pack_codes_v1(const unsigned char* __restrict__ codes, unsigned char* __restrict__ out, i64 n, int bits) {
    i64 j = gtid();
    i64 nb = (n * bits + 7) >> 3;
    if (j >= nb) return;
    unsigned int r = 0;
    for (int t = 0; t < 8; ++t) {
        i64 pos = j * 8 + t;
        i64 e = pos / bits;
        unsigned int bit = 0;
        if (e < n) bit = (codes[e] >> (bits - 1 - (int)(pos % bits))) & 1u;
        r |= bit << (7 - t);
    }
    out[j] = (unsigned char)r;
}

extern "C" __global__ void pack_codes_v2(const unsigned char* __restrict__ codes, unsigned char* __restrict__ out, i64 n, int bits) {
    i64 j = gtid();
    i64 nb = (n * bits + 7) >> 3;
    if (j >= nb) return;
    int per = 8 / bits;
    unsigned int mask = (1u << bits) - 1u, r = 0;
    for (int t = 0; t < per; ++t) {
        i64 e = j * per + t;
        unsigned int c = (e < n) ? (codes[e] & mask) : 0u;
        r |= c << (8 - bits * (t + 1));
    }
    out[j] = (unsigned char)r;
}

extern "C" __global__ void unpack_codes_v1(const unsigned char* __restrict__ p, unsigned char* __restrict__ codes, i64 n, int bits) {
    i64 i = gtid();
    if (i >= n) return;
    unsigned int c = 0;
    for (int t = 0; t < bits; ++t) {
        i64 pos = i * bits + t;
        c = (c << 1) | ((p[pos >> 3] >> (7 - (int)(pos & 7))) & 1u);
    }
    codes[i] = (unsigned char)c;
}

extern "C" __global__ void unpack_codes_v2(const unsigned char* __restrict__ p, unsigned char* __restrict__ codes, i64 n, int bits) {
    i64 i = gtid();
    if (i >= n) return;
    int per = 8 / bits;
    int t = (int)(i % per);
    codes[i] = (unsigned char)((p[i / per] >> (8 - bits * (t + 1))) & ((1u << bits) - 1u));
}
