/* Fused CPU kernels for lookups without autograd (embadvisor.methods._native).
 *
 * Each kernel does in one pass over the ids what the torch code does in several, with the same values
 * (the tests compare them): seeded hash rows, the hashing trick's and ROBE's serving lookups, a
 * prefetching row gather, and one grouped lookup over per-field descriptors. The seeded hash is
 *   h(x, s) = (fmix64(x ^ s) & (2^63 - 1)) % buckets      (murmur3's fmix64 on uint64)
 * where s is the already-mixed seed mix64(seed * golden) computed by the caller; the modulo is an
 * exact multiply-high division by the invariant bucket count. Row addresses are computed and
 * prefetched for a block of ids before the rows are copied, so the cache misses overlap.
 *
 * Parallel with OpenMP, built against the libgomp that torch has already loaded (same soname), so
 * the kernels run on torch's own worker threads: threads of our own competing with torch's spinning
 * workers ran ten times slower on 2 cores. Without OpenMP the pragmas are ignored (one thread).
 * Built at first use by _native.py with the system C compiler; no Python or torch headers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MASK63 0x7FFFFFFFFFFFFFFFULL
#define GRAIN 16384 /* fewer ids than this run on one thread */
#define BLOCK 32     /* ids per block: hash them all and prefetch their rows, then copy */

static inline uint64_t fmix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    x ^= x >> 33;
    return x;
}

/* Exact unsigned division by an invariant divisor d >= 1 without a divide instruction (Granlund and
 * Montgomery, "Division by invariant integers using multiplication", PLDI 1994, fig. 4.1): with
 * l = ceil(log2 d) and m' = floor(2^64 (2^l - d) / d) + 1, q = (t + ((n - t) >> min(l, 1))) >> max(l - 1, 0)
 * where t = mulhi(m', n), for every 64-bit n. A hardware 64-bit divide costs tens of cycles per id. */
typedef struct {
    uint64_t d, m;
    int sh1, sh2;
} udiv_t;

static udiv_t udiv_init(uint64_t d) {
    udiv_t v;
    int l = 0;
    while (l < 64 && ((uint64_t)1 << l) < d) l++;
    const unsigned __int128 two_l = (unsigned __int128)1 << l;
    v.d = d;
    v.m = (uint64_t)(((two_l - d) << 64) / d) + 1;
    v.sh1 = l < 1 ? l : 1;
    v.sh2 = l > 1 ? l - 1 : 0;
    return v;
}

static inline uint64_t udivq(uint64_t n, udiv_t v) {
    const uint64_t t = (uint64_t)(((unsigned __int128)v.m * n) >> 64);
    return (t + ((n - t) >> v.sh1)) >> v.sh2;
}

static inline uint64_t umod(uint64_t n, udiv_t v) { return n - udivq(n, v) * v.d; }

int ea_abi_version(void) { return 10; }

/* rows[i * k + s] = h(ids[i], mseeds[s]) % buckets for n ids and k seeds */
void ea_hash_rows(const int64_t *restrict ids, int64_t n, const int64_t *restrict mseeds, int64_t k,
                  int64_t buckets, int64_t *restrict rows, int nthreads) {
    const udiv_t b = udiv_init((uint64_t)buckets);
    if (k == 1) {
        const uint64_t s = (uint64_t)mseeds[0];
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n >= GRAIN)
        for (int64_t i = 0; i < n; i++) rows[i] = (int64_t)umod(fmix64((uint64_t)ids[i] ^ s) & MASK63, b);
        return;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n >= GRAIN)
    for (int64_t i = 0; i < n; i++)
        for (int64_t s = 0; s < k; s++)
            rows[i * k + s] = (int64_t)umod(fmix64((uint64_t)ids[i] ^ (uint64_t)mseeds[s]) & MASK63, b);
}

/* sign_lut[b][t]: bit 31 set where bit t of the byte b is set (XOR flips a float32's sign) */
static uint32_t sign_lut[256][8];
static int sign_lut_ready = 0;

static void init_sign_lut(void) { /* called before any parallel region */
    if (sign_lut_ready) return;
    for (int b = 0; b < 256; b++)
        for (int t = 0; t < 8; t++) sign_lut[b][t] = ((uint32_t)(b >> t) & 1u) << 31;
    sign_lut_ready = 1;
}

/* o[j] ^= bit j of `bits` moved to the float32 sign bit, for len <= 62 columns */
static inline void flip_bits(uint32_t *restrict o, uint64_t bits, int64_t len) {
    int64_t j = 0;
    for (; j + 8 <= len; j += 8) {
        const uint32_t *restrict m = sign_lut[(bits >> j) & 255u];
        for (int t = 0; t < 8; t++) o[j + t] ^= m[t];
    }
    for (; j < len; j++) o[j] ^= (uint32_t)(bits >> j) << 31;
}

/* o[j] ^= sign bit j of the id, for the d columns of one id (see ea_robe_gather) */
static inline void flip_signs(uint32_t *restrict o, uint64_t x, const int64_t *restrict mseeds, int64_t d) {
    for (int64_t c0 = 0; c0 < d; c0 += 62)
        flip_bits(o + c0, fmix64(x ^ (uint64_t)mseeds[c0 / 62]), d - c0 < 62 ? d - c0 : 62);
}

/* ROBE-Z (Z = 1) lookup of n ids from the circular float32 array a[m]: out[i, j] is
 * a[(h(x_i) + j) mod m] with its sign flipped where bit (j % 62) of fmix64(x_i ^ mseeds[1 + j / 62]) is
 * set; h uses mseeds[0]. */
void ea_robe_gather(const int64_t *restrict ids, int64_t n, const int64_t *restrict mseeds, int64_t m,
                    const uint32_t *restrict a, int64_t d, uint32_t *restrict out, int nthreads) {
    init_sign_lut();
    const udiv_t mm = udiv_init((uint64_t)m);
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n >= GRAIN)
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
        int64_t start[BLOCK];
        const int64_t nb = n - b0 < BLOCK ? n - b0 : BLOCK;
        uint64_t hv[BLOCK];
        const uint64_t seed = (uint64_t)mseeds[0];
        for (int64_t i = 0; i < nb; i++) hv[i] = fmix64((uint64_t)ids[b0 + i] ^ seed) & MASK63; /* vectorises */
        for (int64_t i = 0; i < nb; i++) {
            start[i] = (int64_t)umod(hv[i], mm);
            __builtin_prefetch(a + start[i]);
            __builtin_prefetch(a + start[i] + d - 1);
        }
        if (d <= 62) /* one sign word per id: hashed for the block at once (vectorises) */
            for (int64_t i = 0; i < nb; i++) hv[i] = fmix64((uint64_t)ids[b0 + i] ^ (uint64_t)mseeds[1]);
        for (int64_t i = 0; i < nb; i++) {
            uint32_t *restrict o = out + (b0 + i) * d;
            const int64_t s = start[i];
            if (s + d <= m) {
                memcpy(o, a + s, (size_t)d * sizeof(uint32_t));
            } else {
                int64_t pos = s;
                for (int64_t j = 0; j < d; j++) {
                    o[j] = a[pos];
                    if (++pos == m) pos = 0;
                }
            }
            if (d <= 62)
                flip_bits(o, hv[i], d);
            else
                flip_signs(o, (uint64_t)ids[b0 + i], mseeds + 1, d);
        }
    }
}

/* out[i] = table[idx[i]] for n row indices into a table of `rows` rows of row_bytes bytes (any dtype).
 * Returns the number of indices outside [0, rows) (their output rows are left unwritten). */
int64_t ea_gather(const int64_t *restrict idx, int64_t n, const char *restrict table, int64_t rows,
                  int64_t row_bytes, char *restrict out, int nthreads) {
    int64_t bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n >= GRAIN) reduction(+ : bad)
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
        const int64_t nb = n - b0 < BLOCK ? n - b0 : BLOCK;
        for (int64_t i = 0; i < nb; i++)
            if ((uint64_t)idx[b0 + i] < (uint64_t)rows) __builtin_prefetch(table + idx[b0 + i] * row_bytes);
        for (int64_t i = 0; i < nb; i++) {
            if ((uint64_t)idx[b0 + i] < (uint64_t)rows)
                memcpy(out + (b0 + i) * row_bytes, table + idx[b0 + i] * row_bytes, row_bytes);
            else
                bad++;
        }
    }
    return bad;
}

/* Quantized rows: out[i, j] = codes[idx[i]][j] * scale[idx[i]] for int8 (esize 1) or int16 (esize 2) codes,
 * rows code_stride bytes apart, float32 scales scale_stride bytes apart (packed rows share one stride).
 * Returns the number of indices outside [0, rows). */
int64_t ea_quant_gather(const int64_t *restrict idx, int64_t n, const char *restrict codes, int64_t code_stride,
                        int64_t esize, const char *restrict scale, int64_t scale_stride, int64_t rows, int64_t d,
                        float *restrict out, int nthreads) {
    int64_t bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n >= GRAIN) reduction(+ : bad)
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
        const int64_t nb = n - b0 < BLOCK ? n - b0 : BLOCK;
        for (int64_t i = 0; i < nb; i++)
            if ((uint64_t)idx[b0 + i] < (uint64_t)rows) {
                __builtin_prefetch(codes + idx[b0 + i] * code_stride);
                __builtin_prefetch(scale + idx[b0 + i] * scale_stride);
            }
        for (int64_t i = 0; i < nb; i++) {
            const int64_t r = idx[b0 + i];
            float *restrict o = out + (b0 + i) * d;
            if ((uint64_t)r >= (uint64_t)rows) {
                bad++;
                continue;
            }
            float s;
            memcpy(&s, scale + r * scale_stride, sizeof(float));
            if (esize == 1) {
                const int8_t *restrict q = (const int8_t *)(codes + r * code_stride);
                for (int64_t j = 0; j < d; j++) o[j] = (float)q[j] * s;
            } else {
                const int16_t *restrict q = (const int16_t *)(codes + r * code_stride);
                for (int64_t j = 0; j < d; j++) o[j] = (float)q[j] * s;
            }
        }
    }
    return bad;
}

/* The hashing trick's lookup of n ids: out[i] = sum over the k seeds of table[h(x_i, s) % rows], float32
 * rows of d values (the sum in seed order, as torch's sum over k <= 2 adds them). */
void ea_hash_gather(const int64_t *restrict ids, int64_t n, const int64_t *restrict mseeds, int64_t k,
                    int64_t rows, const float *restrict table, int64_t d, float *restrict out, int nthreads) {
    const udiv_t b = udiv_init((uint64_t)rows);
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n >= GRAIN)
    for (int64_t b0 = 0; b0 < n; b0 += BLOCK) {
        int64_t start[BLOCK];
        const int64_t nb = n - b0 < BLOCK ? n - b0 : BLOCK;
        for (int64_t s = 0; s < k; s++) {
            uint64_t hv[BLOCK];
            const uint64_t seed = (uint64_t)mseeds[s];
            for (int64_t i = 0; i < nb; i++) hv[i] = fmix64((uint64_t)ids[b0 + i] ^ seed) & MASK63; /* vectorises */
            for (int64_t i = 0; i < nb; i++) {
                start[i] = (int64_t)umod(hv[i], b) * d;
                __builtin_prefetch(table + start[i]);
            }
            for (int64_t i = 0; i < nb; i++) {
                float *restrict o = out + (b0 + i) * d;
                const float *restrict r = table + start[i];
                if (s == 0)
                    memcpy(o, r, (size_t)d * sizeof(float));
                else
                    for (int64_t j = 0; j < d; j++) o[j] += r[j];
            }
        }
    }
}

/* Grouped lookup: out[b, f, :] (float32, d wide) for ids[b, f], one descriptor per field (column):
 *   desc[f] = {kind, table, width, start, aux, k, aux_start, n}
 *   ROWS:      out = table[start + id]                                           (float32, width == d)
 *   REMAP:     out = table[start + aux_int32[id]]                                (float32, width == d)
 *   QR_MULT / QR_ADD: out = table[start + id / k] * or + aux[aux_start + id % k]  (float32, width == d)
 *   PROJECTED: out = aux[d, width] @ table[start + id]                           (nn.Linear layout)
 *   QUANT8 / QUANT16: out = table[start + id] (int8 / int16 codes) * aux_float32[start + id], the scale
 *                     rows k bytes apart (4, or the packed row size when codes and scale share rows);
 *                     width is the codes' row stride in elements (>= d)
 * Column f of ids is written to column out_cols[f] of out[batch, out_width, d] (the other columns are
 * left alone: their fields are embedded elsewhere).
 * Ids outside [0, n) are counted and their rows left unwritten; returns that count (-1: too many fields
 * or no memory). */
enum { K_ROWS = 0, K_REMAP = 1, K_QR_MULT = 2, K_QR_ADD = 3, K_PROJ = 4, K_Q8 = 5, K_Q16 = 6 };
#define MAXF 1024
#define LBLOCK 32 /* lookups per block: addresses computed and prefetched, then copied */

static inline int64_t elem_bytes(int64_t kind) { return kind == K_Q8 ? 1 : kind == K_Q16 ? 2 : 4; }

int64_t ea_grouped_lookup(const int64_t *restrict ids, int64_t batch, int64_t nf, const int64_t *restrict desc,
                          int64_t d, float *restrict out, int64_t out_width, const int64_t *restrict out_cols,
                          int nthreads) {
    if (nf > MAXF) return -1;
    udiv_t kdiv[MAXF];
    for (int64_t f = 0; f < nf; f++) kdiv[f] = udiv_init(desc[f * 8 + 5] > 0 ? (uint64_t)desc[f * 8 + 5] : 1);
    /* projections transposed once per call ([width, d]): the per-lookup product is then width
     * contiguous d-wide multiply-adds, which vectorise */
    int64_t ptoff[MAXF], total = 0;
    for (int64_t f = 0; f < nf; f++) {
        ptoff[f] = total;
        if (desc[f * 8] == K_PROJ) total += desc[f * 8 + 2] * d;
    }
    float *pt = (float *)malloc((size_t)(total > 0 ? total : 1) * sizeof(float));
    if (!pt) return -1;
    for (int64_t f = 0; f < nf; f++) {
        if (desc[f * 8] != K_PROJ) continue;
        const int64_t w = desc[f * 8 + 2];
        const float *P = (const float *)(intptr_t)desc[f * 8 + 4];
        for (int64_t j = 0; j < d; j++)
            for (int64_t t = 0; t < w; t++) pt[ptoff[f] + t * d + j] = P[j * w + t];
    }
    int any_remap = 0;
    for (int64_t f = 0; f < nf; f++) any_remap |= desc[f * 8] == K_REMAP;
    const int64_t n = batch * nf; /* lookups, row-major over (b, f): lookup l is field l % nf */
    int64_t bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n >= GRAIN) reduction(+ : bad)
    for (int64_t l0 = 0; l0 < n; l0 += LBLOCK) {
        const int64_t nl = n - l0 < LBLOCK ? n - l0 : LBLOCK;
        const char *src[LBLOCK], *src2[LBLOCK];
        int64_t f = l0 % nf;
        if (any_remap) /* remap entries first */
            for (int64_t i = 0; i < nl; i++, f = f + 1 == nf ? 0 : f + 1)
                if (desc[f * 8] == K_REMAP && (uint64_t)ids[l0 + i] < (uint64_t)desc[f * 8 + 7])
                    __builtin_prefetch((const int32_t *)(intptr_t)desc[f * 8 + 4] + ids[l0 + i]);
        f = l0 % nf;
        for (int64_t i = 0; i < nl; i++, f = f + 1 == nf ? 0 : f + 1) { /* addresses, rows prefetched */
            const int64_t *D = desc + f * 8;
            const int64_t id = ids[l0 + i], kind = D[0];
            const char *table = (const char *)(intptr_t)D[1];
            const int64_t rb = D[2] * elem_bytes(kind);
            src[i] = src2[i] = 0;
            if ((uint64_t)id >= (uint64_t)D[7]) continue;
            if (kind == K_REMAP) {
                src[i] = table + (D[3] + ((const int32_t *)(intptr_t)D[4])[id]) * rb;
            } else if (kind == K_QR_MULT || kind == K_QR_ADD) {
                const uint64_t q = udivq((uint64_t)id, kdiv[f]), r = (uint64_t)id - q * kdiv[f].d;
                src[i] = table + (D[3] + (int64_t)q) * rb;
                src2[i] = (const char *)(intptr_t)D[4] + (D[6] + (int64_t)r) * rb;
            } else {
                src[i] = table + (D[3] + id) * rb;
                if (kind == K_Q8 || kind == K_Q16) src2[i] = (const char *)(intptr_t)D[4] + (D[3] + id) * D[5];
            }
            __builtin_prefetch(src[i]);
            if (src2[i]) __builtin_prefetch(src2[i]);
        }
        f = l0 % nf;
        int64_t row = l0 / nf; /* batch row of lookup l0 + i, advanced as f wraps (no division per lookup) */
        for (int64_t i = 0; i < nl; i++, f = f + 1 == nf ? (row++, 0) : f + 1) {
            const int64_t *D = desc + f * 8;
            const int64_t kind = D[0];
            float *restrict o = out + (row * out_width + out_cols[f]) * d;
            if (!src[i]) {
                bad++;
                continue;
            }
            const float *restrict a = (const float *)src[i];
            const float *restrict c = (const float *)src2[i];
            if (kind == K_ROWS || kind == K_REMAP) {
                if (d == 16)
                    memcpy(o, a, 16 * sizeof(float)); /* a fixed size: inlined */
                else
                    memcpy(o, a, (size_t)d * sizeof(float));
            } else if (kind == K_QR_MULT) {
                for (int64_t j = 0; j < d; j++) o[j] = a[j] * c[j];
            } else if (kind == K_QR_ADD) {
                for (int64_t j = 0; j < d; j++) o[j] = a[j] + c[j];
            } else if (kind == K_Q8) {
                const int8_t *restrict q = (const int8_t *)src[i];
                for (int64_t j = 0; j < d; j++) o[j] = (float)q[j] * c[0];
            } else if (kind == K_Q16) {
                const int16_t *restrict q = (const int16_t *)src[i];
                for (int64_t j = 0; j < d; j++) o[j] = (float)q[j] * c[0];
            } else { /* K_PROJ */
                const int64_t w = D[2];
                const float *restrict P = pt + ptoff[f];
                for (int64_t j = 0; j < d; j++) o[j] = 0.0f;
                for (int64_t t = 0; t < w; t++)
                    for (int64_t j = 0; j < d; j++) o[j] += a[t] * P[t * d + j];
            }
        }
    }
    free(pt);
    return bad;
}
