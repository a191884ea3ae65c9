/* Fused CPU kernels for lookups without autograd (embadvisor.kernels.native).
 *
 * Each kernel does in one pass over the ids what the torch code does in several, with the same values
 * (the tests compare them): seeded hash rows, the hashing trick's and ROBE's serving lookups, a
 * prefetching row gather, quantized rows, TT-Rec, and one grouped lookup over per-field descriptors.
 * The seeded hash is
 *   h(x, s) = (fmix64(x ^ s) & (2^63 - 1)) % buckets      (murmur3's fmix64 on uint64)
 * where s is the already-mixed seed mix64(seed * golden) computed by the caller; the modulo is an
 * exact multiply-high division by the invariant bucket count. Each row is prefetched DIST lookups before
 * it is copied, so the cache misses overlap.
 *
 * Parallel with OpenMP, built against the libgomp that torch has already loaded (same soname), so
 * the kernels run on torch's own worker threads: threads of our own competing with torch's spinning
 * workers ran ten times slower on 2 cores. Without OpenMP the pragmas are ignored (one thread).
 * Built at first use by native.py with the system C compiler; no Python or torch headers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MASK63 0x7FFFFFFFFFFFFFFFULL
#ifdef _OPENMP
#include <omp.h>
#endif

#define GRAIN 16384 /* fewer ids than this run on one thread */
/* Prefetch distance in lookups: while lookup i is copied, the row of lookup i + DIST is addressed and
 * prefetched, so about DIST cache misses are always in flight. (Prefetching a block of 32 rows and then
 * copying them, as before, left the first rows' latency exposed in every block: the plain gather took
 * 1.9x as long.) */
#define DIST 64
/* Ids hashed per chunk by the hashing trick's and ROBE's lookups: their offsets live on the stack. */
#define CH 2048

/* this thread's contiguous share [lo, hi) of n items (the whole range without OpenMP) */
static inline void thread_range(int64_t n, int64_t *lo, int64_t *hi) {
#ifdef _OPENMP
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t t = 0, nt = 1;
#endif
    const int64_t per = (n + nt - 1) / nt;
    *lo = t * per < n ? t * per : n;
    *hi = *lo + per < n ? *lo + per : n;
}

/* prefetch every cache line of the `bytes` bytes at p (one instruction per line) */
static inline void prefetch_row(const void *p, int64_t bytes) {
    const uintptr_t first = (uintptr_t)p & ~(uintptr_t)63, last = ((uintptr_t)p + (uintptr_t)bytes - 1) & ~(uintptr_t)63;
    __builtin_prefetch((const void *)first);
    for (uintptr_t line = first + 64; line <= last; line += 64) __builtin_prefetch((const void *)line);
}

static inline uint64_t fmix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDULL;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ULL;
    x ^= x >> 33;
    return x;
}

/* a seed as the hash uses it: mix64(seed * golden), as _hashing.mixed_seeds computes it */
static inline uint64_t mix_seed(int64_t seed) { return fmix64((uint64_t)seed * 0x9E3779B97F4A7C15ULL); }

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

/* mulhi(a, b) = the high 64 bits of a·b from four 32 x 32 -> 64-bit products (exact; unlike the 128-bit
 * multiply this vectorises: 8 ids per AVX-512 instruction) */
#define M32 0xFFFFFFFFULL
static inline uint64_t mulhi_split(uint64_t a, uint64_t b) {
    const uint64_t al = a & M32, ah = a >> 32, bl = b & M32, bh = b >> 32;
    const uint64_t ll = al * bl, hl = ah * bl, lh = al * bh, hh = ah * bh;
    const uint64_t cross = (ll >> 32) + (hl & M32) + lh; /* < 2^64 */
    return hh + (hl >> 32) + (cross >> 32);
}

/* out[i * ostride] = h(ids[i], seed) % b.d * mult for n ids, in a loop the compiler vectorises (the same
 * values as umod(fmix64(...)) above: the division is the same, only the multiply is split) */
static void hash_mod(const int64_t *restrict ids, int64_t n, uint64_t seed, udiv_t b, int64_t mult,
                     int64_t *restrict out, int64_t ostride) {
    const uint64_t m = b.m, dd = b.d;
    const int sh1 = b.sh1, sh2 = b.sh2;
    for (int64_t i = 0; i < n; i++) {
        const uint64_t h = fmix64((uint64_t)ids[i] ^ seed) & MASK63, t = mulhi_split(m, h);
        out[i * ostride] = (int64_t)(h - ((t + ((h - t) >> sh1)) >> sh2) * dd) * mult;
    }
}

/* Row arithmetic in chunks of 16 columns with GCC/clang vector types (one 16-lane operation per chunk
 * with AVX-512, four with SSE), then the remaining columns one by one. Plain loops over a run-time d were
 * vectorised for 64 int8 lanes (or peeled) and so ran scalar for the usual d = 16. The types allow
 * unaligned access (aligned(1 or 4)) and aliasing. */
typedef float f32x16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t i32x16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int8_t i8x16 __attribute__((vector_size(16), aligned(1), may_alias));
typedef int16_t i16x16 __attribute__((vector_size(32), aligned(1), may_alias));
#define CHUNK 16
#define V(p, j) (*(f32x16 *)((p) + (j)))
#define CV(p, j) (*(const f32x16 *)((p) + (j)))

static inline void row_copy(float *restrict o, const float *restrict a, int64_t d) {
    if (d == 16) { /* the common row, one vector (gcc turns the loop below into a call to memmove) */
        V(o, 0) = CV(a, 0);
        return;
    }
    int64_t j = 0;
    for (; j + CHUNK <= d; j += CHUNK) V(o, j) = CV(a, j);
    for (; j < d; j++) o[j] = a[j];
}
static inline void row_add(float *restrict o, const float *restrict a, int64_t d) {
    int64_t j = 0;
    for (; j + CHUNK <= d; j += CHUNK) V(o, j) += CV(a, j);
    for (; j < d; j++) o[j] += a[j];
}
static inline void row_mul2(float *restrict o, const float *restrict a, const float *restrict c, int64_t d) {
    int64_t j = 0;
    for (; j + CHUNK <= d; j += CHUNK) V(o, j) = CV(a, j) * CV(c, j);
    for (; j < d; j++) o[j] = a[j] * c[j];
}
static inline void row_add2(float *restrict o, const float *restrict a, const float *restrict c, int64_t d) {
    int64_t j = 0;
    for (; j + CHUNK <= d; j += CHUNK) V(o, j) = CV(a, j) + CV(c, j);
    for (; j < d; j++) o[j] = a[j] + c[j];
}
/* o = P^T x for x of w values and P [w, d] (row t of P is the contribution of x[t]); each chunk of 16
 * columns accumulates in a register (through memory, every multiply-add waited for the previous store) */
static inline void row_proj(float *restrict o, const float *restrict x, const float *restrict P, int64_t w,
                            int64_t d) {
    int64_t j = 0;
    for (; j + CHUNK <= d; j += CHUNK) {
        f32x16 acc = {0};
        for (int64_t t = 0; t < w; t++) acc += CV(P, t * d + j) * x[t];
        V(o, j) = acc;
    }
    for (; j < d; j++) {
        float acc = 0.0f;
        for (int64_t t = 0; t < w; t++) acc += P[t * d + j] * x[t];
        o[j] = acc;
    }
}
/* int8 -> float through int16 and int32: gcc 12 turns a direct int8 -> float vector conversion into 16
 * scalar conversions */
static inline void row_deq8(float *restrict o, const int8_t *restrict q, float s, int64_t d) {
    int64_t j = 0;
    for (; j + CHUNK <= d; j += CHUNK)
        V(o, j) = __builtin_convertvector(
                      __builtin_convertvector(__builtin_convertvector(*(const i8x16 *)(q + j), i16x16), i32x16),
                      f32x16) *
                  s;
    for (; j < d; j++) o[j] = (float)q[j] * s;
}
static inline void row_deq16(float *restrict o, const int16_t *restrict q, float s, int64_t d) {
    int64_t j = 0;
    for (; j + CHUNK <= d; j += CHUNK)
        V(o, j) = __builtin_convertvector(__builtin_convertvector(*(const i16x16 *)(q + j), i32x16), f32x16) * s;
    for (; j < d; j++) o[j] = (float)q[j] * s;
}

int ea_abi_version(void) { return 16; }

/* rows[i * k + s] = h(ids[i], mseeds[s]) % buckets for n ids and k seeds */
void ea_hash_rows(const int64_t *restrict ids, int64_t n, const int64_t *restrict mseeds, int64_t k,
                  int64_t buckets, int64_t *restrict rows, int nthreads) {
    const udiv_t b = udiv_init((uint64_t)buckets);
#pragma omp parallel num_threads(nthreads) if (n >= GRAIN)
    {
        int64_t lo, hi;
        thread_range(n, &lo, &hi);
        for (int64_t s = 0; s < k; s++) hash_mod(ids + lo, hi - lo, (uint64_t)mseeds[s], b, 1, rows + lo * k + s, k);
    }
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

typedef uint32_t u32x16 __attribute__((vector_size(64), aligned(4), may_alias));

/* o[j] = a[j] with its sign flipped where bit j of `bits` is set, for d <= 62 columns: 16 columns at a time
 * in a vector register (the lane masks from the bits), the rest one by one */
static inline void copy_flip(uint32_t *restrict o, const uint32_t *restrict a, uint64_t bits, int64_t d) {
    const u32x16 lane = {1u << 0, 1u << 1, 1u << 2, 1u << 3, 1u << 4, 1u << 5, 1u << 6, 1u << 7,
                         1u << 8, 1u << 9, 1u << 10, 1u << 11, 1u << 12, 1u << 13, 1u << 14, 1u << 15};
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        const u32x16 b = (u32x16){0} + (uint32_t)((bits >> j) & 0xFFFFu);
        const u32x16 sign = (u32x16)((b & lane) != 0) & 0x80000000u;
        *(u32x16 *)(o + j) = *(const u32x16 *)(a + j) ^ sign;
    }
    for (; j < d; j++) o[j] = a[j] ^ ((uint32_t)(bits >> j) & 1u) << 31;
}

/* o[j] ^= sign bit j of the id, for the d columns of one id (see ea_robe_gather) */
static inline void flip_signs(uint32_t *restrict o, uint64_t x, const uint64_t *restrict mseeds, int64_t d) {
    for (int64_t c0 = 0; c0 < d; c0 += 62)
        flip_bits(o + c0, fmix64(x ^ mseeds[c0 / 62]), d - c0 < 62 ? d - c0 : 62);
}

/* ROBE-Z (Z = 1) lookup of n ids from the circular float32 array a[m]: out[i, j] is
 * a[(h(x_i) + j) mod m] with its sign flipped where bit (j % 62) of fmix64(x_i ^ ms[1 + j / 62]) is
 * set; h uses ms[0]. ms are the module's 1 + ceil(d / 62) seeds, mixed here (mix_seed). */
int64_t ea_robe_gather(const int64_t *restrict ids, int64_t n, const int64_t *restrict seeds, int64_t m,
                       const uint32_t *restrict a, int64_t d, uint32_t *restrict out, int nthreads) {
    init_sign_lut();
    const udiv_t mm = udiv_init((uint64_t)m);
    uint64_t mseeds[1 + (d + 61) / 62];
    for (int64_t s = 0; s < 1 + (d + 61) / 62; s++) mseeds[s] = mix_seed(seeds[s]);
#pragma omp parallel num_threads(nthreads) if (n >= GRAIN)
    {
        int64_t lo, hi, st[CH];
        uint64_t sg[CH];
        thread_range(n, &lo, &hi);
        /* in chunks of CH ids on the stack, as in ea_hash_gather: the block starts and sign words, then the copies */
        for (int64_t c0 = lo; c0 < hi; c0 += CH) {
            const int64_t cnt = hi - c0 < CH ? hi - c0 : CH;
            hash_mod(ids + c0, cnt, mseeds[0], mm, 1, st, 1);
            if (d <= 62) {
                const uint64_t s1 = mseeds[1];
                for (int64_t i = 0; i < cnt; i++) sg[i] = fmix64((uint64_t)ids[c0 + i] ^ s1); /* vectorises */
            }
            for (int64_t i = 0; i < cnt && i < DIST; i++) prefetch_row(a + st[i], d * 4);
            for (int64_t k = 0; k < cnt; k++) {
                if (k + DIST < cnt) prefetch_row(a + st[k + DIST], d * 4);
                uint32_t *restrict o = out + (c0 + k) * d;
                const int64_t s0 = st[k];
                if (s0 + d <= m && d <= 62) { /* the block in one piece, one sign word: one pass */
                    copy_flip(o, a + s0, sg[k], d);
                    continue;
                }
                if (s0 + d <= m) {
                    row_copy((float *)o, (const float *)(a + s0), d);
                } else { /* the block wraps around the array */
                    int64_t pos = s0;
                    for (int64_t j = 0; j < d; j++) {
                        o[j] = a[pos];
                        if (++pos == m) pos = 0;
                    }
                }
                if (d <= 62)
                    flip_bits(o, sg[k], d);
                else
                    flip_signs(o, (uint64_t)ids[c0 + k], mseeds + 1, d);
            }
        }
    }
    return 0;
}

/* out[i] = table[idx[i]] for n row indices into a table of `rows` rows of row_bytes bytes (any dtype).
 * Returns the number of indices outside [0, rows) (their output rows are left unwritten). */
int64_t ea_gather(const int64_t *restrict idx, int64_t n, const char *restrict table, int64_t rows,
                  int64_t row_bytes, char *restrict out, int nthreads) {
    int64_t bad = 0;
#pragma omp parallel num_threads(nthreads) if (n >= GRAIN) reduction(+ : bad)
    {
        int64_t lo, hi;
        thread_range(n, &lo, &hi);
        for (int64_t i = lo; i < hi && i < lo + DIST; i++)
            if ((uint64_t)idx[i] < (uint64_t)rows) prefetch_row(table + idx[i] * row_bytes, row_bytes);
        for (int64_t i = lo; i < hi; i++) {
            if (i + DIST < hi && (uint64_t)idx[i + DIST] < (uint64_t)rows)
                prefetch_row(table + idx[i + DIST] * row_bytes, row_bytes);
            const int64_t r = idx[i];
            if ((uint64_t)r >= (uint64_t)rows)
                bad++;
            else if (row_bytes == 64) /* d = 16 float32: a fixed size, inlined */
                memcpy(out + i * 64, table + r * 64, 64);
            else
                memcpy(out + i * row_bytes, table + r * row_bytes, (size_t)row_bytes);
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
#pragma omp parallel num_threads(nthreads) if (n >= GRAIN) reduction(+ : bad)
    {
        int64_t lo, hi;
        thread_range(n, &lo, &hi);
        for (int64_t i = lo; i < hi + DIST; i++) {
            if (i < hi && (uint64_t)idx[i] < (uint64_t)rows) {
                prefetch_row(codes + idx[i] * code_stride, d * esize);
                __builtin_prefetch(scale + idx[i] * scale_stride);
            }
            const int64_t k = i - DIST;
            if (k < lo) continue;
            const int64_t r = idx[k];
            if ((uint64_t)r >= (uint64_t)rows) {
                bad++;
                continue;
            }
            float s;
            memcpy(&s, scale + r * scale_stride, sizeof(float));
            if (esize == 1)
                row_deq8(out + k * d, (const int8_t *)(codes + r * code_stride), s, d);
            else
                row_deq16(out + k * d, (const int16_t *)(codes + r * code_stride), s, d);
        }
    }
    return bad;
}

/* The hashing trick's lookup of n ids: out[i] = sum over the k <= 4 seeds of table[h(x_i, s) % rows]
 * (the module's seeds, mixed here: mix_seed),
 * float32 rows of d values (the sum in seed order, as torch's sum over k <= 2 adds them).
 * Each thread's share goes in chunks of CH ids: the chunk's row offsets are hashed first, in a loop of
 * their own, into a buffer on the stack, then its rows are copied with the prefetch pipeline. (Hashing
 * inside the copy loop made the whole lookup about 1.7x slower.) Returns -1 for k outside 1..4, else 0. */
#define KMAX 4
int64_t ea_hash_gather(const int64_t *restrict ids, int64_t n, const int64_t *restrict seeds, int64_t k,
                       int64_t rows, const float *restrict table, int64_t d, float *restrict out, int nthreads) {
    if (k < 1 || k > KMAX) return -1; /* the caller checks */
    uint64_t mseeds[KMAX];
    for (int64_t s = 0; s < k; s++) mseeds[s] = mix_seed(seeds[s]);
    const udiv_t b = udiv_init((uint64_t)rows);
#pragma omp parallel num_threads(nthreads) if (n >= GRAIN)
    {
        int64_t lo, hi, st[KMAX * CH];
        thread_range(n, &lo, &hi);
        for (int64_t c0 = lo; c0 < hi; c0 += CH) {
            const int64_t m = hi - c0 < CH ? hi - c0 : CH;
            for (int64_t s = 0; s < k; s++) hash_mod(ids + c0, m, mseeds[s], b, d, st + s * CH, 1);
            for (int64_t i = 0; i < m && i < DIST; i++)
                for (int64_t s = 0; s < k; s++) prefetch_row(table + st[i + s * CH], d * 4);
            if (k == 1) /* the usual case, without the loops over the seeds: with them, 1.4-1.5x the time */
                for (int64_t l = 0; l < m; l++) {
                    if (l + DIST < m) prefetch_row(table + st[l + DIST], d * 4);
                    row_copy(out + (c0 + l) * d, table + st[l], d);
                }
            else
                for (int64_t l = 0; l < m; l++) {
                    if (l + DIST < m)
                        for (int64_t s = 0; s < k; s++) prefetch_row(table + st[l + DIST + s * CH], d * 4);
                    float *restrict o = out + (c0 + l) * d;
                    row_copy(o, table + st[l], d);
                    for (int64_t s = 1; s < k; s++) row_add(o, table + st[l + s * CH], d);
                }
        }
    }
    return 0;
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
 *   TT:        TT-Rec (cached hot rows, else the three-core product; see tt_field), aux its int64
 *              parameters; these fields are embedded after the others, in parallel over the fields
 * Column f of ids is written to column out_cols[f] of out[batch, out_width, d] (the other columns are
 * left alone: their fields are embedded elsewhere).
 * Ids outside [0, n) are counted and their rows left unwritten; returns that count (-1: too many fields
 * or no memory). */
/* The field kinds, numbered as native.py's ROWS..TT. A new kind is one entry here and one branch in the
 * per-field loop below (see "Adding a kernel kind" in embadvisor/kernels/__init__.py); the kind is an
 * enum, not a per-method function pointer, so that each field's loop is one kind's inlined body with no
 * indirect call per row. */
enum { K_ROWS = 0, K_REMAP = 1, K_QR_MULT = 2, K_QR_ADD = 3, K_PROJ = 4, K_Q8 = 5, K_Q16 = 6, K_TT = 7 };
/* TT-Rec's parameter words (see tt_field) */
enum { TT_CORE1, TT_CORE2, TT_CORE3, TT_NB, TT_NC, TT_D1, TT_D2, TT_D3, TT_R, TT_CACHE, TT_CACHE_IDS,
       TT_CACHE_ROWS, TT_ID_BYTES, TT_NPARAMS };
static int64_t tt_field(const int64_t *restrict P, int64_t num_ids, const int64_t *restrict ids, int64_t id_stride,
                        int64_t n, float *restrict out, int64_t out_stride, int nthreads);
#define MAXF 1024

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
    int64_t bad = 0;
    /* Field by field over each thread's share of the batch rows, one loop per kind: the kind and the
     * descriptor stay fixed in the loop, and each lookup's address is computed where it is prefetched
     * (DIST lookups ahead) and again where it is used. (Row-major over (row, field) with the kind
     * dispatched and the addresses kept per lookup, a full table took 2x as long as the plain gather;
     * this takes as long as the plain gather of one global table; the id column is prefetched, since
     * a field reads every nf-th id.) Out-of-range ids are counted
     * and their rows left unwritten. */
#define FIELD_LOOP(PREFETCH, BODY)                                                  \
    do {                                                                          \
        for (int64_t i = lo; i < hi && i < lo + DIST; i++) PREFETCH(i);           \
        for (int64_t l = lo; l < hi; l++) {                                       \
            if (l + 2 * DIST < hi) __builtin_prefetch(fid + (l + 2 * DIST) * nf); \
            if (l + DIST < hi) PREFETCH(l + DIST);                                \
            const int64_t id = fid[l * nf];                                       \
            if ((uint64_t)id >= (uint64_t)n) {                                    \
                bad++;                                                            \
                continue;                                                         \
            }                                                                     \
            float *restrict o = fout + l * ostride;                               \
            BODY;                                                                 \
        }                                                                         \
    } while (0)
#define OK(i) ((uint64_t)fid[(i) * nf] < (uint64_t)n)
#pragma omp parallel num_threads(nthreads) if (batch * nf >= GRAIN) reduction(+ : bad)
    {
        int64_t lo, hi;
        thread_range(batch, &lo, &hi);
        const int64_t ostride = out_width * d;
        for (int64_t f = 0; f < nf; f++) {
            const int64_t *D = desc + f * 8;
            const int64_t kind = D[0], n = D[7], start = D[3];
            const int64_t *restrict fid = ids + f; /* stride nf */
            float *restrict fout = out + out_cols[f] * d;
            const udiv_t kd = kdiv[f];
            if (kind == K_ROWS) {
                const float *restrict tab = (const float *)(intptr_t)D[1] + start * d;
#define PF(i)                                                           \
    if (OK(i)) prefetch_row(tab + fid[(i) * nf] * d, d * 4)
                FIELD_LOOP(PF, row_copy(o, tab + id * d, d));
#undef PF
            } else if (kind == K_REMAP) { /* remap entries DIST lookups before the rows */
                const float *restrict tab = (const float *)(intptr_t)D[1] + start * d;
                const int32_t *restrict remap = (const int32_t *)(intptr_t)D[4];
                for (int64_t i = lo; i < hi && i < lo + DIST; i++)
                    if (OK(i)) __builtin_prefetch(remap + fid[i * nf]);
#define PF(i)                                                           \
    do {                                                                \
        if ((i) + DIST < hi && OK((i) + DIST)) __builtin_prefetch(remap + fid[((i) + DIST) * nf]); \
        if (OK(i)) prefetch_row(tab + (int64_t)remap[fid[(i) * nf]] * d, d * 4);                     \
    } while (0)
                FIELD_LOOP(PF, row_copy(o, tab + (int64_t)remap[id] * d, d));
#undef PF
            } else if (kind == K_QR_MULT || kind == K_QR_ADD) {
                const float *restrict tab = (const float *)(intptr_t)D[1] + start * d;
                const float *restrict rem = (const float *)(intptr_t)D[4] + D[6] * d;
#define PF(i)                                                                                   \
    if (OK(i)) {                                                                                \
        const uint64_t q_ = udivq((uint64_t)fid[(i) * nf], kd);                                 \
        prefetch_row(tab + (int64_t)q_ * d, d * 4);                                             \
        prefetch_row(rem + ((int64_t)fid[(i) * nf] - (int64_t)(q_ * kd.d)) * d, d * 4);         \
    }
                if (kind == K_QR_MULT)
                    FIELD_LOOP(PF, {
                        const uint64_t q = udivq((uint64_t)id, kd);
                        row_mul2(o, tab + (int64_t)q * d, rem + (id - (int64_t)(q * kd.d)) * d, d);
                    });
                else
                    FIELD_LOOP(PF, {
                        const uint64_t q = udivq((uint64_t)id, kd);
                        row_add2(o, tab + (int64_t)q * d, rem + (id - (int64_t)(q * kd.d)) * d, d);
                    });
#undef PF
            } else if (kind == K_PROJ) {
                const int64_t w = D[2];
                const float *restrict tab = (const float *)(intptr_t)D[1] + start * w;
                const float *restrict P = pt + ptoff[f];
#define PF(i)                                                           \
    if (OK(i)) prefetch_row(tab + fid[(i) * nf] * w, w * 4)
                FIELD_LOOP(PF, row_proj(o, tab + id * w, P, w, d));
#undef PF
            } else if (kind == K_Q8 || kind == K_Q16) {
                const int64_t esize = kind == K_Q8 ? 1 : 2, rb = D[2] * esize, sstride = D[5];
                const char *restrict codes = (const char *)(intptr_t)D[1] + start * rb;
                const char *restrict scale = (const char *)(intptr_t)D[4] + start * sstride;
#define PF(i)                                                           \
    if (OK(i)) {                                                        \
        prefetch_row(codes + fid[(i) * nf] * rb, d * esize);            \
        __builtin_prefetch(scale + fid[(i) * nf] * sstride);            \
    }
                FIELD_LOOP(PF, {
                    float sc;
                    memcpy(&sc, scale + id * sstride, sizeof(float));
                    if (esize == 1)
                        row_deq8(o, (const int8_t *)(codes + id * rb), sc, d);
                    else
                        row_deq16(o, (const int16_t *)(codes + id * rb), sc, d);
                });
#undef PF
            } /* K_TT: below */
        }
    }
#undef OK
#undef FIELD_LOOP
    free(pt);
    /* TT fields: one field per thread at a time (each field's ids grouped by its middle core), or the
     * threads inside the field when it is the only one. The fields go out costliest first (the work per
     * uncached id, r^2·d1·d2, times the ids outside the cache), so no thread starts a large field last. */
    int64_t tt[MAXF], cost[MAXF], ntt = 0;
    for (int64_t f = 0; f < nf; f++) {
        if (desc[f * 8] != K_TT) continue;
        const int64_t *P = (const int64_t *)(intptr_t)desc[f * 8 + 4];
        const int64_t c = P[TT_R] * P[TT_R] * P[TT_D1] * P[TT_D2] * (desc[f * 8 + 7] - P[TT_CACHE_ROWS] > 0 ? 1 : 0);
        int64_t k = ntt++;
        for (; k > 0 && cost[k - 1] < c; k--) { /* insertion: descending cost, stable */
            tt[k] = tt[k - 1];
            cost[k] = cost[k - 1];
        }
        tt[k] = f;
        cost[k] = c;
    }
    int fail = 0;
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, 1) if (ntt > 1) reduction(+ : bad) reduction(| : fail)
    for (int64_t k = 0; k < ntt; k++) {
        const int64_t f = tt[k];
        const int64_t r = tt_field((const int64_t *)(intptr_t)desc[f * 8 + 4], desc[f * 8 + 7], ids + f, nf, batch,
                                   out + out_cols[f] * d, out_width * d, ntt > 1 ? 1 : nthreads);
        if (r < 0)
            fail = 1;
        else
            bad += r;
    }
    return fail ? -1 : bad;
}

/* TT-Rec serving lookup (see embadvisor.methods.tt_rec), one field: its parameters P[TT_NPARAMS] hold the
 * addresses of the three cores (float32, slices row-major: G1[i1] is d1 x r, G2[i2] r x d2·r, G3[i3] r x d3),
 * the factors, and the cache of hot rows (float32 [cache_rows, d]) with its sorted ids (int32 or int64,
 * id_bytes 4 or 8). Row i of the output is the cached row where the id is cached (when the sorted ids are
 * 0..cache_rows-1 the slot is the id, else a binary search), else the tensor-train product
 *   row(x)[(a·d2 + b)·d3 + c] = sum_{p,q} G1[i1][a, p] · G2[i2][p, b·r + q] · G3[i3][q, c]
 * with i2 = x % n_b, i3 = (x / n_b) % n_c, i1 = x / (n_b·n_c).
 * Repeated ids are computed once (a small direct-mapped table of seen ids; a collision only costs a
 * recomputation), and the distinct ids are computed grouped by i2, so each G2 slice (r·d2·r values, the
 * bulk of the work) is read about once per call. */
#define TT_SEEN 4096

static inline int64_t cache_id_at(const void *cache_ids, int64_t id_bytes, int64_t k) {
    return id_bytes == 4 ? ((const int32_t *)cache_ids)[k] : ((const int64_t *)cache_ids)[k];
}

/* The slots of ids x[0..g) among the rows sorted distinct cached ids (not a prefix), or -1: g branchless
 * binary searches in lockstep, each level's two candidate probes prefetched for all of them, so about g
 * cache misses overlap instead of one search's ~log2(rows) misses in a row (the cached ids of large
 * tables are megabytes). */
#define TT_SEARCH 32
static void tt_cache_slots(const int64_t *restrict x, int64_t g, const void *cache_ids, int64_t rows,
                           int64_t id_bytes, int64_t *restrict slot) {
    int64_t base[TT_SEARCH];
    for (int64_t k = 0; k < g; k++) base[k] = 0;
    const char *c = (const char *)cache_ids;
    for (int64_t len = rows; len > 1;) {
        const int64_t half = len / 2, next = (len - half) / 2;
        for (int64_t k = 0; k < g; k++) { /* the next level probes base + next or base + half + next */
            __builtin_prefetch(c + (base[k] + next) * id_bytes);
            __builtin_prefetch(c + (base[k] + half + next) * id_bytes);
        }
        for (int64_t k = 0; k < g; k++) base[k] = cache_id_at(cache_ids, id_bytes, base[k] + half) <= x[k] ? base[k] + half : base[k];
        len -= half;
    }
    for (int64_t k = 0; k < g; k++) slot[k] = cache_id_at(cache_ids, id_bytes, base[k]) == x[k] ? base[k] : -1;
}

typedef float f32x4 __attribute__((vector_size(16), aligned(4), may_alias));

/* C[M x N] = A[M x K] @ B[K x N] (row-major, small: TT slices), in register tiles so that independent
 * multiply-adds overlap: 2 rows x 64 columns (8 vectors of 16), then 4 rows x 16 columns, then 4 rows x 4
 * columns, then single values. */
static void gemm_small(float *restrict C, const float *restrict A, const float *restrict B, int64_t M, int64_t N,
                       int64_t K) {
    int64_t n0 = 0;
    for (; n0 + 64 <= N; n0 += 64) {
        int64_t m = 0;
        for (; m + 2 <= M; m += 2) {
            f32x16 c0[4] = {{0}}, c1[4] = {{0}};
            for (int64_t k = 0; k < K; k++) {
                const float a0 = A[m * K + k], a1 = A[(m + 1) * K + k];
                for (int v = 0; v < 4; v++) {
                    const f32x16 b = CV(B, k * N + n0 + 16 * v);
                    c0[v] += a0 * b;
                    c1[v] += a1 * b;
                }
            }
            for (int v = 0; v < 4; v++) {
                V(C, m * N + n0 + 16 * v) = c0[v];
                V(C, (m + 1) * N + n0 + 16 * v) = c1[v];
            }
        }
        for (; m < M; m++) {
            f32x16 c0[4] = {{0}};
            for (int64_t k = 0; k < K; k++)
                for (int v = 0; v < 4; v++) c0[v] += A[m * K + k] * CV(B, k * N + n0 + 16 * v);
            for (int v = 0; v < 4; v++) V(C, m * N + n0 + 16 * v) = c0[v];
        }
    }
    for (; n0 + 16 <= N; n0 += 16)
        for (int64_t m = 0; m < M; m++) {
            f32x16 c0 = {0};
            for (int64_t k = 0; k < K; k++) c0 += A[m * K + k] * CV(B, k * N + n0);
            V(C, m * N + n0) = c0;
        }
    for (; n0 + 4 <= N; n0 += 4) {
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) {
            f32x4 c[4] = {{0}};
            for (int64_t k = 0; k < K; k++) {
                const f32x4 b = *(const f32x4 *)(B + k * N + n0);
                for (int i = 0; i < 4; i++) c[i] += A[(m + i) * K + k] * b;
            }
            for (int i = 0; i < 4; i++) *(f32x4 *)(C + (m + i) * N + n0) = c[i];
        }
        for (; m < M; m++) {
            f32x4 c0 = {0};
            for (int64_t k = 0; k < K; k++) c0 += A[m * K + k] * *(const f32x4 *)(B + k * N + n0);
            *(f32x4 *)(C + m * N + n0) = c0;
        }
    }
    for (; n0 < N; n0++)
        for (int64_t m = 0; m < M; m++) {
            float c0 = 0.0f;
            for (int64_t k = 0; k < K; k++) c0 += A[m * K + k] * B[k * N + n0];
            C[m * N + n0] = c0;
        }
}

/* T = G1 @ G2 (d1 x r times r x d2·r), then o = T viewed as [d1·d2, r] @ G3 [r, d3] */
static inline void tt_row(float *restrict o, float *restrict T, const float *restrict g1, const float *restrict g2,
                          const float *restrict g3, int64_t d1, int64_t d2, int64_t d3, int64_t r) {
    gemm_small(T, g1, g2, d1, d2 * r, r);
    gemm_small(o, T, g3, d1 * d2, d3, r);
}

/* ids[i * id_stride] for i < n -> out + i * out_stride (d floats each); parallel over the i2 groups with
 * nthreads. Returns the number of ids outside [0, num_ids) (rows left unwritten), -1 without memory. */
static int64_t tt_field(const int64_t *restrict P, int64_t num_ids, const int64_t *restrict ids, int64_t id_stride,
                        int64_t n, float *restrict out, int64_t out_stride, int nthreads) {
    const float *core1 = (const float *)(intptr_t)P[TT_CORE1], *core2 = (const float *)(intptr_t)P[TT_CORE2],
                *core3 = (const float *)(intptr_t)P[TT_CORE3], *cache = (const float *)(intptr_t)P[TT_CACHE];
    const void *cache_ids = (const void *)(intptr_t)P[TT_CACHE_IDS];
    const int64_t n_b = P[TT_NB], n_c = P[TT_NC], d1 = P[TT_D1], d2 = P[TT_D2], d3 = P[TT_D3], r = P[TT_R];
    const int64_t rows = P[TT_CACHE_ROWS], id_bytes = P[TT_ID_BYTES], d = d1 * d2 * d3;
    int64_t prefix = 0; /* sorted distinct ids whose last is rows - 1 are 0..rows-1 */
    if (rows > 0)
        prefix = (id_bytes == 4 ? ((const int32_t *)cache_ids)[rows - 1] : ((const int64_t *)cache_ids)[rows - 1]) ==
                 rows - 1;
    int64_t bad = 0, nu = 0, ndup = 0;
    /* uniq: positions of the first occurrence of each uncached id; dup: (position, its first occurrence);
     * cnt: the i2 groups; sorted: uniq grouped by i2; seen: the direct-mapped table (ids, positions) */
    int64_t *uniq = (int64_t *)malloc((size_t)(5 * n + n_b + 1 + 2 * TT_SEEN) * sizeof(int64_t));
    if (!uniq) return -1;
    int64_t *dup = uniq + n, *sorted = uniq + 3 * n, *slots = uniq + 4 * n, *cnt = uniq + 5 * n,
            *seen_id = cnt + n_b + 1, *seen_pos = seen_id + TT_SEEN;
    for (int64_t h = 0; h < TT_SEEN; h++) seen_id[h] = -1;
    /* The cache slot of each id (-1: not cached, -2: out of range), then the cached rows copied with
     * prefetching and the others' first occurrences listed. A prefix cache's slot is the id, computed
     * where it is used (one pass over the id column); other caches' slots are searched for first. */
    const int search = rows > 0 && !prefix;
    if (search)
        for (int64_t i0 = 0; i0 < n; i0 += TT_SEARCH) {
            const int64_t g = n - i0 < TT_SEARCH ? n - i0 : TT_SEARCH;
            int64_t x[TT_SEARCH], sl[TT_SEARCH], m = 0, at[TT_SEARCH];
            for (int64_t k = 0; k < g; k++) {
                const int64_t i = i0 + k;
                if (id_stride > 1 && i + 2 * DIST < n) __builtin_prefetch(ids + (i + 2 * DIST) * id_stride); /* a column */
                const int64_t v = ids[i * id_stride];
                if ((uint64_t)v >= (uint64_t)num_ids)
                    slots[i] = -2;
                else {
                    x[m] = v;
                    at[m++] = i;
                }
            }
            if (m) {
                tt_cache_slots(x, m, cache_ids, rows, id_bytes, sl);
                for (int64_t k = 0; k < m; k++) slots[at[k]] = sl[k];
            }
        }
#define TT_SLOT(i, v) (search ? slots[i] : (uint64_t)(v) >= (uint64_t)num_ids ? -2 : (v) < rows ? (v) : -1)
    for (int64_t i = 0; i < n && i < DIST; i++) {
        const int64_t sl = TT_SLOT(i, ids[i * id_stride]);
        if (sl >= 0) prefetch_row(cache + sl * d, d * 4);
    }
    for (int64_t i = 0; i < n; i++) {
        if (id_stride > 1 && !search && i + 2 * DIST < n) __builtin_prefetch(ids + (i + 2 * DIST) * id_stride);
        if (i + DIST < n) {
            const int64_t sl = TT_SLOT(i + DIST, ids[(i + DIST) * id_stride]);
            if (sl >= 0) prefetch_row(cache + sl * d, d * 4);
        }
        const int64_t x = ids[i * id_stride], slot = TT_SLOT(i, x);
        if (slot == -2) {
            bad++;
            continue;
        }
        if (slot >= 0) {
            row_copy(out + i * out_stride, cache + slot * d, d);
            continue;
        }
        const int64_t h = (int64_t)(fmix64((uint64_t)x) & (TT_SEEN - 1));
        if (seen_id[h] == x) {
            dup[2 * ndup] = i;
            dup[2 * ndup + 1] = seen_pos[h];
            ndup++;
        } else {
            seen_id[h] = x;
            seen_pos[h] = i;
            uniq[nu++] = i;
        }
    }
#undef TT_SLOT
    /* counting sort of the distinct ids by i2; afterwards group b spans [b ? cnt[b - 1] : 0, cnt[b]) */
    const udiv_t db = udiv_init((uint64_t)n_b), dc = udiv_init((uint64_t)n_c);
    for (int64_t b = 0; b <= n_b; b++) cnt[b] = 0;
    for (int64_t u = 0; u < nu; u++) cnt[umod((uint64_t)ids[uniq[u] * id_stride], db) + 1]++;
    for (int64_t b = 0; b < n_b; b++) cnt[b + 1] += cnt[b];
    for (int64_t u = 0; u < nu; u++) sorted[cnt[umod((uint64_t)ids[uniq[u] * id_stride], db)]++] = uniq[u];
    int fail = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && nu >= 64) reduction(| : fail)
    {
        float *T = (float *)malloc((size_t)(d1 * d2 * r) * sizeof(float));
        if (!T) fail = 1;
#pragma omp for schedule(dynamic, 4)
        for (int64_t b = 0; b < n_b; b++) {
            if (!T) continue;
            const float *g2 = core2 + b * r * d2 * r;
            for (int64_t k = b ? cnt[b - 1] : 0; k < cnt[b]; k++) {
                const int64_t i = sorted[k];
                const uint64_t rest = udivq((uint64_t)ids[i * id_stride], db), i1 = udivq(rest, dc),
                               i3 = rest - i1 * (uint64_t)n_c;
                tt_row(out + i * out_stride, T, core1 + i1 * d1 * r, g2, core3 + i3 * r * d3, d1, d2, d3, r);
            }
        }
        free(T);
    }
    for (int64_t k = 0; k < ndup; k++) row_copy(out + dup[2 * k] * out_stride, out + dup[2 * k + 1] * out_stride, d);
    free(uniq);
    return fail ? -1 : bad;
}

/* One TT field's lookup of n contiguous ids into out [n, d] (see tt_field). */
int64_t ea_tt_lookup(const int64_t *restrict params, int64_t num_ids, const int64_t *restrict ids, int64_t n,
                     float *restrict out, int nthreads) {
    return tt_field(params, num_ids, ids, 1, n, out, params[TT_D1] * params[TT_D2] * params[TT_D3], nthreads);
}

/* torch.optim.SparseAdam's update of nnz distinct rows (a coalesced gradient: row idx[i] gets the values
 * g[i, 0..w)) of the float32 parameter p and its moments m and v ([rows, w] each, contiguous), with the
 * float32 operations of torch.optim._functional.sparse_adam in its order, in two passes over the rows:
 *   moments:  u1 = (g - m)·c1,  m' = m + u1,  u2 = (g·g - v)·c2,  v' = v + u2;
 *             numer[i] = u1 + m,  s[i] = u2 + v                      (temporaries [nnz, w])
 *   (the caller takes torch's sqrt of s in place: torch's vectorised sqrt is not correctly rounded, so
 *   sqrtf here would differ from torch's in the last bit of about one value in six)
 *   params:   p' = p + (numer / (s + eps))·neg_step
 * c1 = 1 - beta1, c2 = 1 - beta2 and neg_step = -lr·sqrt(1 - beta2^t) / (1 - beta1^t) are the caller's
 * scalars rounded to float32, as torch rounds a Python scalar for a float32 tensor. The values are the
 * same bits as torch's (the tests compare them): nothing is contracted into fused multiply-adds, which
 * round once instead of twice. Each pass prefetches its table rows DIST rows ahead; torch's version makes
 * about ten passes over the rows, gathers and scatters into the tables and temporaries.
 * Both return the number of indices outside [0, rows) (those rows are left alone). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
int64_t ea_sparse_adam_moments(const int64_t *restrict idx, int64_t nnz, const float *restrict g, int64_t w,
                               int64_t rows, float *restrict m, float *restrict v, float c1, float c2,
                               float *restrict numer, float *restrict s, int nthreads) {
    int64_t bad = 0;
#pragma omp parallel num_threads(nthreads) if (nnz * w >= GRAIN * 4) reduction(+ : bad)
    {
        int64_t lo, hi;
        thread_range(nnz, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) {
            if (i + DIST < hi && (uint64_t)idx[i + DIST] < (uint64_t)rows) {
                prefetch_row(m + idx[i + DIST] * w, w * 4);
                prefetch_row(v + idx[i + DIST] * w, w * 4);
            }
            if ((uint64_t)idx[i] >= (uint64_t)rows) {
                bad++;
                continue;
            }
            const float *restrict gi = g + i * w;
            float *restrict mi = m + idx[i] * w, *restrict vi = v + idx[i] * w;
            float *restrict ni = numer + i * w, *restrict si = s + i * w;
            for (int64_t j = 0; j < w; j++) {
                const float gj = gi[j], m0 = mi[j], v0 = vi[j];
                const float u1 = (gj - m0) * c1;
                const float gg = gj * gj;
                const float u2 = (gg - v0) * c2;
                mi[j] = m0 + u1;
                vi[j] = v0 + u2;
                ni[j] = u1 + m0;
                si[j] = u2 + v0;
            }
        }
    }
    return bad;
}

int64_t ea_sparse_adam_params(const int64_t *restrict idx, int64_t nnz, int64_t w, int64_t rows, float *restrict p,
                              const float *restrict numer, const float *restrict root, float eps, float neg_step,
                              int nthreads) {
    int64_t bad = 0;
#pragma omp parallel num_threads(nthreads) if (nnz * w >= GRAIN * 4) reduction(+ : bad)
    {
        int64_t lo, hi;
        thread_range(nnz, &lo, &hi);
        for (int64_t i = lo; i < hi; i++) {
            if (i + DIST < hi && (uint64_t)idx[i + DIST] < (uint64_t)rows) prefetch_row(p + idx[i + DIST] * w, w * 4);
            if ((uint64_t)idx[i] >= (uint64_t)rows) {
                bad++;
                continue;
            }
            const float *restrict ni = numer + i * w, *restrict ri = root + i * w;
            float *restrict pi = p + idx[i] * w;
            for (int64_t j = 0; j < w; j++) {
                const float denom = ri[j] + eps;
                const float q = ni[j] / denom;
                const float step = q * neg_step;
                pi[j] = pi[j] + step;
            }
        }
    }
    return bad;
}
#if !defined(__clang__) && defined(__GNUC__)
#pragma GCC pop_options
#endif
