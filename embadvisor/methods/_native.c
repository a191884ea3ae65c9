/* Fused CPU kernels for the hashing methods (embadvisor.methods._native).
 *
 * Each kernel does in one pass over the ids what the torch reference in _hashing.py / robe.py
 * does in about fifteen elementwise passes, with bit-identical results (tests compare the two):
 *   h(x, s) = (fmix64(x ^ s) & (2^63 - 1)) % buckets      (murmur3's fmix64 on uint64)
 * where s is the already-mixed seed mix64(seed * golden) computed by the caller. The row gathers
 * themselves stay with torch (multi-threaded index_select).
 *
 * Single-threaded on purpose: torch's OpenMP workers spin between parallel regions, and a thread
 * of our own competing with them on a small machine ran ten times slower (measured on 2 cores).
 * Built at first use by _native.py with the system C compiler; no Python or torch headers.
 */
#include <stdint.h>

#define MASK63 0x7FFFFFFFFFFFFFFFULL

static inline uint64_t fmix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    x ^= x >> 33;
    return x;
}

int ea_abi_version(void) { return 2; }

/* rows[i * k + s] = h(ids[i], mseeds[s]) % buckets for n ids and k seeds */
void ea_hash_rows(const int64_t *restrict ids, int64_t n, const int64_t *restrict mseeds, int64_t k,
                  int64_t buckets, int64_t *restrict rows) {
    const uint64_t b = (uint64_t)buckets;
    if (k == 1) {
        const uint64_t s = (uint64_t)mseeds[0];
        for (int64_t i = 0; i < n; i++) rows[i] = (int64_t)((fmix64((uint64_t)ids[i] ^ s) & MASK63) % b);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t s = 0; s < k; s++)
            rows[i * k + s] = (int64_t)((fmix64((uint64_t)ids[i] ^ (uint64_t)mseeds[s]) & MASK63) % b);
}

/* ROBE's signs, applied in place to float32 values out[n, d]: column j of id x is negated where
 * bit (j % 62) of fmix64(x ^ mseeds[j / 62]) is set (h(x, s) % 2^62 keeps exactly those bits). */
void ea_robe_sign_flip(const int64_t *restrict ids, int64_t n, const int64_t *restrict mseeds, int64_t d,
                       uint32_t *restrict out) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t *restrict o = out + i * d;
        for (int64_t c0 = 0; c0 < d; c0 += 62) {
            const uint64_t bits = fmix64((uint64_t)ids[i] ^ (uint64_t)mseeds[c0 / 62]);
            const int64_t len = d - c0 < 62 ? d - c0 : 62;
            for (int64_t j = 0; j < len; j++) o[c0 + j] ^= (uint32_t)(bits >> j) << 31;
        }
    }
}
