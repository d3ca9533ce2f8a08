/* ropekit's CPU kernel: RoPE on q and k in one pass over memory.
 *
 * Built on first use by ropekit/apply/cpu/loader.py (`cc -O3 -ffp-contract=off
 * -fno-tree-slp-vectorize -march=native -fopenmp`), cached on disk and loaded with ctypes;
 * the torch formula it must match is ropekit.apply.formula.rope_reference.
 *
 * For every row x of d lanes (one head of one token) and its table row (c, s) of n pairs:
 *
 *     y[p] = x[p] c_i - x[q] s_i      (p, q) = (i, i + n)    half layout
 *     y[q] = x[q] c_i + x[p] s_i      (p, q) = (2i, 2i + 1)  interleaved layout
 *     y[2n:] = x[2n:]                 copied bit for bit
 *
 * `inverse` rotates by -angle (s_i -> -s_i), which is the gradient: R(a)^T = R(-a).
 *
 * Precision: half-precision lanes are widened to float32 (exactly), the two products and
 * the sum are float32 operations, and the result is rounded once (round to nearest even,
 * as torch rounds). The build flags forbid fusing a*c - b*s into an FMA, so every
 * operation rounds exactly as torch's separate mul/sub kernels do: results equal
 * rope_reference bit for bit, in every dtype.
 *
 * Memory: each lane of x is read once and each lane of y written once. Table rows are
 * read once per row of x, but a table is shared by all heads, so after the first head it
 * comes from cache (a float32 [4096, 64] table is 2 MiB for cos and sin: from L3 on a
 * Zen 4/5 core, which has 1 MiB of L2; blocking positions so that the table stays in L2
 * was measured slower there, as it cuts q's and k's long sequential streams into short
 * ones). y may be x itself (in place): every row reads both lanes of a pair before
 * writing them, and the `omp simd` loops carry no dependence between pairs. Outputs
 * larger than the last-level cache are written with streaming stores (stream_row).
 *
 * Layout: any batch dims, each with its own element stride for x, y, cos and sin (0
 * broadcasts a table over heads), as long as at most MAX_DIMS remain after merging;
 * lanes and table pairs have stride 1. Rows are visited in memory order (make_plan) and
 * split evenly over `nthreads` OpenMP threads (torch's own libgomp, already loaded).
 *
 * What decided the design, measured on an AMD EPYC (Zen 5, 2 threads; figures in
 * docs/performance.md): float32 rows are memory-bound (3.7 ns of arithmetic per 128-lane
 * row with the data in L1, against ~10 ns of memory time per row and thread), so
 * streaming stores pay off; bfloat16 rows were nearly compute-bound (8.4 ns in L1 for
 * half the bytes), hence the AVX512-BF16 rounding (5.2 ns); 512-bit vectors beat 256-bit
 * ones (-mprefer-vector-width=256: float32 rows 6.5 ns, portable bfloat16 rows 16 ns).
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { F32 = 0, F64 = 1, BF16 = 2, F16 = 3 };
enum { OK = 0, BAD_COUNT = 1, BAD_DTYPE = 2, TOO_MANY_DIMS = 3 };
#define MAX_TENSORS 8
#define MAX_DIMS 6 /* batch dims after merging */

/* bfloat16 is the top half of a float32: widening is exact. */
static inline float bf16_load(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Round to nearest even, NaN kept NaN (c10::BFloat16's rounding); branch-free so the
 * loops vectorise. */
static inline uint16_t bf16_store(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return f != f ? (uint16_t)0x7fc0 : (uint16_t)rounded;
}

#define SAME(v) (v)

/* A run: `rows` rows of one or two tensors (q and k) that share table rows. Row r of
 * tensor k is at x[k] + r * sx[k] (elements); its table row at cos + r * sc. */
typedef struct {
  const char *x[2];
  char *y[2]; /* x[1] == NULL: one tensor */
  int64_t sx[2], sy[2], sc, ss, rows;
  const char *cos, *sin;
  char *buf; /* non-NULL: streaming stores (via this L1 buffer of STREAM_MAX_ROW bytes) */
} run_t;

/* Streaming (non-temporal) stores, for calls whose outputs are at least as large as the
 * last-level cache (ropekit_stream_min_bytes): such outputs are mostly evicted before
 * the next op reads them anyway. A plain store first reads its line into the cache
 * (read for ownership), so an out-of-place rotation moves 3 bytes through memory per
 * byte of output, as copy_ does; streaming stores write whole lines without reading
 * them: 2. Measured on a Zen 5 EPYC, 2 threads, prefill q and k, this kernel without
 * and with them (docs/performance.md): float32 1.06x -> 0.94x copy_ (interleaved
 * 1.04x -> 0.83x), bfloat16 1.09x -> 0.93x.
 *
 * float32 rows are rotated by the ordinary code into a buffer in L1, then copied out
 * by stream_row: full 64-byte lines with streaming stores, the partial lines at the
 * ends of a row (shared with the neighbouring rows) with plain ones. bfloat16 rows with
 * AVX512-BF16 (bf16_cvt_rows) store their vectors with streaming stores directly (the
 * buffer there made GCC 12 spill registers in some instantiations: bf16 rows 1.5-2x
 * slower). Other rows (float64, float16, bfloat16 without AVX512-BF16 or with n not a
 * multiple of 16) keep plain stores: rarer, and not measured to gain (float16
 * interleaved rows were ~10% slower streamed), and every streaming instantiation adds
 * to the first build's time. In place, the lines are in the cache already: plain
 * stores. */
#if defined(__SSE2__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_STREAM 1
static inline __attribute__((always_inline)) void stream_row(char *dst, const char *src,
                                                              int64_t bytes) {
  int64_t i = (int64_t)(-(uintptr_t)dst & 63); /* bytes before the first full line */
  if (i > bytes) i = bytes;
  if (i) memcpy(dst, src, (size_t)i);
  for (; i + 64 <= bytes; i += 64) {
#if defined(__AVX512F__)
    _mm512_stream_si512((void *)(dst + i), _mm512_loadu_si512((const void *)(src + i)));
#elif defined(__AVX__)
    for (int k = 0; k < 64; k += 32)
      _mm256_stream_si256((__m256i *)(dst + i + k),
                          _mm256_loadu_si256((const __m256i *)(src + i + k)));
#else
    for (int k = 0; k < 64; k += 16)
      _mm_stream_si128((__m128i *)(dst + i + k), _mm_loadu_si128((const __m128i *)(src + i + k)));
#endif
  }
  if (i < bytes) memcpy(dst + i, src + i, (size_t)(bytes - i));
}
static inline void stream_fence(void) { _mm_sfence(); }
#else
static inline void stream_row(char *dst, const char *src, int64_t bytes) {
  memcpy(dst, src, (size_t)bytes);
}
static inline void stream_fence(void) {}
#endif
#define STREAM_MAX_ROW 4096 /* bytes (the buffer); longer rows are stored plainly */

/* Rows. T: storage type of x and y; W: arithmetic and table type. NAME(run, ...) rotates
 * the rows of a run. The row loop is instantiated for each layout, sign, one or two
 * tensors, and the common pair counts (n = 16, 32, 64: head dims 32, 64, 128) with n a
 * constant, so a row is straight vector code with no remainder handling and no per-row
 * setup: at 64 or 128 lanes a row is only a few vectors, and per-row overhead would
 * otherwise cost as much as the arithmetic. With two tensors the k row follows the q row
 * of the same position, so the table row is read from memory once for both. */
#define DEFINE_ROW(NAME, T, W, LOAD, STORE, SPECIALISE, STREAM)                            \
  static inline __attribute__((always_inline)) void NAME##_one(                             \
      const T *xr, T *yr, const W *cr, const W *sr, int64_t n, int64_t d, int interleaved,  \
      W sign) {                                                                             \
    if (interleaved) {                                                                      \
      _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                 \
        W a = LOAD(xr[2 * i]), b = LOAD(xr[2 * i + 1]), ci = cr[i], si = sign * sr[i];     \
        yr[2 * i] = STORE(a * ci - b * si);                                                 \
        yr[2 * i + 1] = STORE(b * ci + a * si);                                             \
      }                                                                                     \
    } else {                                                                                \
      _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                 \
        W a = LOAD(xr[i]), b = LOAD(xr[i + n]), ci = cr[i], si = sign * sr[i];              \
        yr[i] = STORE(a * ci - b * si);                                                     \
        yr[i + n] = STORE(b * ci + a * si);                                                 \
      }                                                                                     \
    }                                                                                       \
    if (yr != xr && d > 2 * n) memcpy(yr + 2 * n, xr + 2 * n, (size_t)(d - 2 * n) * sizeof(T)); \
  }                                                                                         \
  static inline __attribute__((always_inline)) void NAME##_rows(                            \
      const run_t *ru, int64_t n, int64_t d, int interleaved, W sign, int two) {            \
    /* the run in locals: a store through y may alias *ru as far as the compiler knows    \
     * (the may_alias bf16 pairs), which made it reload the run after every row */        \
    const T *x0 = (const T *)ru->x[0], *x1 = (const T *)ru->x[1];                           \
    T *y0 = (T *)ru->y[0], *y1 = (T *)ru->y[1];                                             \
    const W *c = (const W *)ru->cos, *s = (const W *)ru->sin;                               \
    const int64_t sx0 = ru->sx[0], sx1 = ru->sx[1], sy0 = ru->sy[0], sy1 = ru->sy[1];       \
    const int64_t sc = ru->sc, ss = ru->ss, rows = ru->rows;                                \
    T *const buf = STREAM ? (T *)ru->buf : NULL; /* streaming stores: see stream_row */     \
    for (int64_t r = 0; r < rows; r++) {                                                    \
      T *ya = y0 + r * sy0, *yb = two ? y1 + r * sy1 : NULL;                                \
      NAME##_one(x0 + r * sx0, buf ? buf : ya, c + r * sc, s + r * ss, n, d, interleaved, sign); \
      if (buf) stream_row((char *)ya, (const char *)buf, d * (int64_t)sizeof(T));           \
      if (!two) continue;                                                                   \
      NAME##_one(x1 + r * sx1, buf ? buf : yb, c + r * sc, s + r * ss, n, d, interleaved, sign); \
      if (buf) stream_row((char *)yb, (const char *)buf, d * (int64_t)sizeof(T));           \
    }                                                                                       \
  }                                                                                         \
  static inline __attribute__((always_inline)) void NAME##_n(                               \
      const run_t *ru, int64_t n, int64_t d, int interleaved, W sign) {                     \
    int two = ru->x[1] != NULL;                                                             \
    switch (SPECIALISE ? n * 2 + two : 0) {                                                 \
      case 32: NAME##_rows(ru, 16, d, interleaved, sign, 0); break;                         \
      case 33: NAME##_rows(ru, 16, d, interleaved, sign, 1); break;                         \
      case 64: NAME##_rows(ru, 32, d, interleaved, sign, 0); break;                         \
      case 65: NAME##_rows(ru, 32, d, interleaved, sign, 1); break;                         \
      case 128: NAME##_rows(ru, 64, d, interleaved, sign, 0); break;                        \
      case 129: NAME##_rows(ru, 64, d, interleaved, sign, 1); break;                        \
      default: NAME##_rows(ru, n, d, interleaved, sign, two);                               \
    }                                                                                       \
  }                                                                                         \
  static void NAME(const run_t *ru, int64_t n, int64_t d, int interleaved, int inverse) {   \
    /* constant layout and sign: the multiply by +-1 folds away (it is exact) */            \
    if (interleaved && inverse) NAME##_n(ru, n, d, 1, (W)-1);                               \
    else if (interleaved) NAME##_n(ru, n, d, 1, (W)1);                                      \
    else if (inverse) NAME##_n(ru, n, d, 0, (W)-1);                                         \
    else NAME##_n(ru, n, d, 0, (W)1);                                                       \
  }

/* With AVX512-BF16, bfloat16 rows with n = 16, 32, 64 take bf16_cvt_rows (below): the
 * portable bfloat16 rows are then not specialised for them (half the build time). */
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define HAVE_BF16_CVT 1
#define BF16_SPECIALISE 0
#else
#define BF16_SPECIALISE 1
#endif

DEFINE_ROW(row_f32, float, float, SAME, SAME, 1, 1)
DEFINE_ROW(row_f64, double, double, SAME, SAME, 1, 0)
DEFINE_ROW(row_bf16_lanes, uint16_t, float, bf16_load, bf16_store, BF16_SPECIALISE, 0)

/* Interleaved bfloat16: a pair (x[2i], x[2i+1]) is one 32-bit word, x[2i] in its low half
 * (little-endian). Widening is then a shift and a mask, and the two rounded results are
 * merged with a shift and an or: no lane shuffles, ~25% faster than the generic rows.
 * (The half layout's lanes a_i, b_i are not adjacent, so it keeps the generic rows.) */
typedef uint32_t __attribute__((aligned(2), may_alias)) bf16_pair; /* rows are 2-aligned */

static inline float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* f rounded to bfloat16 as bf16_store does, in the top 16 bits of the result. */
static inline uint32_t bf16_round_high(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  return f != f ? 0x7fc00000u : rounded;
}

static inline __attribute__((always_inline)) void bf16_pair_one(
    const uint16_t *xr, uint16_t *yr, const float *cr, const float *sr, int64_t n, int64_t d,
    float sign) {
  const bf16_pair *xp = (const bf16_pair *)xr;
  bf16_pair *yp = (bf16_pair *)yr;
  _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {
    uint32_t u = xp[i];
    float a = bits_to_float(u << 16), b = bits_to_float(u & 0xffff0000u);
    float ci = cr[i], si = sign * sr[i];
    yp[i] = (bf16_round_high(a * ci - b * si) >> 16) | bf16_round_high(b * ci + a * si);
  }
  if (yr != xr && d > 2 * n) memcpy(yr + 2 * n, xr + 2 * n, (size_t)(d - 2 * n) * 2);
}

static inline __attribute__((always_inline)) void bf16_pair_rows(const run_t *ru, int64_t n,
                                                                 int64_t d, float sign,
                                                                 int two) {
  const uint16_t *x0 = (const uint16_t *)ru->x[0], *x1 = (const uint16_t *)ru->x[1];
  uint16_t *y0 = (uint16_t *)ru->y[0], *y1 = (uint16_t *)ru->y[1];
  const float *c = (const float *)ru->cos, *s = (const float *)ru->sin;
  const int64_t sx0 = ru->sx[0], sx1 = ru->sx[1], sy0 = ru->sy[0], sy1 = ru->sy[1];
  const int64_t sc = ru->sc, ss = ru->ss, rows = ru->rows; /* in locals: see NAME##_rows */
  for (int64_t r = 0; r < rows; r++) {
    bf16_pair_one(x0 + r * sx0, y0 + r * sy0, c + r * sc, s + r * ss, n, d, sign);
    if (two) bf16_pair_one(x1 + r * sx1, y1 + r * sy1, c + r * sc, s + r * ss, n, d, sign);
  }
}

static inline __attribute__((always_inline)) void bf16_pair_n(const run_t *ru, int64_t n,
                                                              int64_t d, float sign) {
  int two = ru->x[1] != NULL;
  switch (BF16_SPECIALISE ? n * 2 + two : 0) {
    case 32: bf16_pair_rows(ru, 16, d, sign, 0); break;
    case 33: bf16_pair_rows(ru, 16, d, sign, 1); break;
    case 64: bf16_pair_rows(ru, 32, d, sign, 0); break;
    case 65: bf16_pair_rows(ru, 32, d, sign, 1); break;
    case 128: bf16_pair_rows(ru, 64, d, sign, 0); break;
    case 129: bf16_pair_rows(ru, 64, d, sign, 1); break;
    default: bf16_pair_rows(ru, n, d, sign, two);
  }
}

/* bfloat16 with AVX512-BF16 (a build feature: Sapphire Rapids, Zen 4 and later):
 * vcvtne2ps2bf16 rounds 32 float32 lanes to nearest even and packs them in one
 * instruction, where the portable rounding spends about 8 per 16 lanes (shift, mask, two
 * adds, shift, NaN compare and blend, pack). Those made bf16 rows compute-bound on a
 * Zen 5 core: 8.4 ns per 128-lane row with everything in L1 (float32 rows: 3.7 ns for
 * twice the bytes), close to the memory time of a row at 2 threads, so bf16 prefill ran
 * at ~1.3-1.4x copy_ when memory was fast. With the instruction: 5.2 ns (interleaved
 * pairs: 7.1 -> 5.3 ns).
 *
 * It differs from bf16_store only where the float32 result is NaN (it keeps the
 * payload; bf16_store gives 0x7fc0) or denormal (it flushes it to zero): a block of 16
 * pairs with such a result is computed again by the portable code before anything of it
 * is stored (so in place is safe), and the output is bit for bit bf16_store's on every
 * input, on machines with and without the instruction. Used when n is a multiple of 16
 * (head dims 32, 64, 128, ...); other n take the portable rows. */
#ifdef HAVE_BF16_CVT
#include <immintrin.h>
#define BF16_SPECIAL 0xa1 /* vfpclassps: QNaN (0x01), denormal (0x20), SNaN (0x80) */

static inline __m512 bf16x16_load(const uint16_t *p) { /* 16 lanes widened, exactly */
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* Pairs [i, i + 16) of a row by the portable rounding (NaN or denormal results). Out of
 * line: rare, and one copy instead of one per instantiation and block (build time). */
static __attribute__((noinline)) void bf16_block_portable(const uint16_t *xr, uint16_t *yr,
                                                          const float *cr, const float *sr,
                                                          int64_t i, int64_t n, int interleaved,
                                                          float sign) {
  for (int64_t j = i; j < i + 16; j++) {
    int64_t p = interleaved ? 2 * j : j, q = interleaved ? 2 * j + 1 : j + n;
    float aj = bf16_load(xr[p]), bj = bf16_load(xr[q]), cj = cr[j], sj = sign * sr[j];
    yr[p] = bf16_store(aj * cj - bj * sj);
    yr[q] = bf16_store(bj * cj + aj * sj);
  }
}

static inline __attribute__((always_inline)) void bf16_cvt_one(
    const uint16_t *xr, uint16_t *yr, const float *cr, const float *sr, int64_t n, int64_t d,
    int interleaved, float sign, int nt) {
  for (int64_t i = 0; i < n; i += 16) {
    __m512 a, b;
    if (interleaved) { /* 16 pairs, one 32-bit word each: a in the low half */
      __m512i w = _mm512_loadu_si512((const void *)(xr + 2 * i));
      a = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
      b = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000u)));
    } else {
      a = bf16x16_load(xr + i);
      b = bf16x16_load(xr + n + i);
    }
    __m512 c = _mm512_loadu_ps(cr + i);
    __m512 s = _mm512_mul_ps(_mm512_set1_ps(sign), _mm512_loadu_ps(sr + i)); /* +-1: exact */
    __m512 ya = _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s));
    __m512 yb = _mm512_add_ps(_mm512_mul_ps(b, c), _mm512_mul_ps(a, s));
    if (__builtin_expect(_mm512_fpclass_ps_mask(ya, BF16_SPECIAL) |
                             _mm512_fpclass_ps_mask(yb, BF16_SPECIAL), 0)) {
      bf16_block_portable(xr, yr, cr, sr, i, n, interleaved, sign);
      continue;
    }
    __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(yb, ya); /* lanes 0-15: ya, 16-31: yb */
    if (interleaved) { /* back to pairs: word k = ya[k] | yb[k] << 16 */
      const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                             24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17,
                                             1, 16, 0);
      __m512i out = _mm512_permutexvar_epi16(pairs, packed);
      if (nt) _mm512_stream_si512((void *)(yr + 2 * i), out);
      else _mm512_storeu_si512((void *)(yr + 2 * i), out);
    } else if (nt) {
      _mm256_stream_si256((__m256i *)(yr + i), _mm512_castsi512_si256(packed));
      _mm256_stream_si256((__m256i *)(yr + n + i), _mm512_extracti64x4_epi64(packed, 1));
    } else {
      _mm256_storeu_si256((__m256i *)(yr + i), _mm512_castsi512_si256(packed));
      _mm256_storeu_si256((__m256i *)(yr + n + i), _mm512_extracti64x4_epi64(packed, 1));
    }
  }
  if (yr != xr && d > 2 * n) memcpy(yr + 2 * n, xr + 2 * n, (size_t)(d - 2 * n) * 2);
}

static inline __attribute__((always_inline)) void bf16_cvt_rows(const run_t *ru, int64_t n,
                                                                int64_t d, int interleaved,
                                                                float sign, int two) {
  const uint16_t *x0 = (const uint16_t *)ru->x[0], *x1 = (const uint16_t *)ru->x[1];
  uint16_t *y0 = (uint16_t *)ru->y[0], *y1 = (uint16_t *)ru->y[1];
  const float *c = (const float *)ru->cos, *s = (const float *)ru->sin;
  const int64_t sx0 = ru->sx[0], sx1 = ru->sx[1], sy0 = ru->sy[0], sy1 = ru->sy[1];
  const int64_t sc = ru->sc, ss = ru->ss, rows = ru->rows; /* in locals: see NAME##_rows */
  /* streaming (ru->buf set): the vectors go out with streaming stores directly, where
   * every row starts a 64-byte line and fills whole lines; otherwise plain stores */
  const uintptr_t lines = (uintptr_t)y0 | (uintptr_t)(sy0 * 2) | (uintptr_t)(n * 4) |
                          (two ? (uintptr_t)y1 | (uintptr_t)(sy1 * 2) : 0);
#define BF16_CVT_ROWS(NT)                                                                  \
  for (int64_t r = 0; r < rows; r++) {                                                     \
    bf16_cvt_one(x0 + r * sx0, y0 + r * sy0, c + r * sc, s + r * ss, n, d, interleaved,    \
                 sign, NT);                                                                \
    if (two)                                                                               \
      bf16_cvt_one(x1 + r * sx1, y1 + r * sy1, c + r * sc, s + r * ss, n, d, interleaved,  \
                   sign, NT);                                                              \
  }
  if (ru->buf != NULL && d == 2 * n && lines % 64 == 0) {
    BF16_CVT_ROWS(1)
  } else {
    BF16_CVT_ROWS(0)
  }
#undef BF16_CVT_ROWS
}

static inline __attribute__((always_inline)) void bf16_cvt_n(const run_t *ru, int64_t n,
                                                             int64_t d, int interleaved,
                                                             float sign) {
  int two = ru->x[1] != NULL;
  switch (n * 2 + two) {
    case 32: bf16_cvt_rows(ru, 16, d, interleaved, sign, 0); break;
    case 33: bf16_cvt_rows(ru, 16, d, interleaved, sign, 1); break;
    case 64: bf16_cvt_rows(ru, 32, d, interleaved, sign, 0); break;
    case 65: bf16_cvt_rows(ru, 32, d, interleaved, sign, 1); break;
    case 128: bf16_cvt_rows(ru, 64, d, interleaved, sign, 0); break;
    case 129: bf16_cvt_rows(ru, 64, d, interleaved, sign, 1); break;
    default: bf16_cvt_rows(ru, n, d, interleaved, sign, two);
  }
}
#endif

static void row_bf16(const run_t *ru, int64_t n, int64_t d, int interleaved, int inverse) {
#ifdef HAVE_BF16_CVT
  if (n % 16 == 0) {
    if (interleaved && inverse) bf16_cvt_n(ru, n, d, 1, -1.0f);
    else if (interleaved) bf16_cvt_n(ru, n, d, 1, 1.0f);
    else if (inverse) bf16_cvt_n(ru, n, d, 0, -1.0f);
    else bf16_cvt_n(ru, n, d, 0, 1.0f);
    return;
  }
#endif
  if (!interleaved)
    row_bf16_lanes(ru, n, d, 0, inverse);
  else if (inverse)
    bf16_pair_n(ru, n, d, -1.0f);
  else
    bf16_pair_n(ru, n, d, 1.0f);
}

/* float16 <-> float32, IEEE round to nearest even. Compilers do not vectorise _Float16
 * conversions without AVX512-FP16, so with F16C they are spelled out 8 lanes at a time. */
#if defined(__F16C__)
#include <immintrin.h>
static inline void f16_widen(const uint16_t *src, float *dst, int64_t m) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
  for (; i < m; i++) dst[i] = _cvtsh_ss(src[i]);
}
static inline void f16_narrow(const float *src, uint16_t *dst, int64_t m) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < m; i++) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}
#elif !defined(ROPEKIT_NO_FLOAT16)
static inline void f16_widen(const uint16_t *src, float *dst, int64_t m) {
  const _Float16 *h = (const _Float16 *)src;
  for (int64_t i = 0; i < m; i++) dst[i] = (float)h[i];
}
static inline void f16_narrow(const float *src, uint16_t *dst, int64_t m) {
  _Float16 *h = (_Float16 *)dst;
  for (int64_t i = 0; i < m; i++) h[i] = (_Float16)src[i];
}
#endif

#if defined(__F16C__) || !defined(ROPEKIT_NO_FLOAT16)
#define HAVE_F16 1
/* float16 rows go through float32 buffers, CHUNK pairs at a time (in L1): widen the
 * pairs' lanes, rotate them with row_f32, narrow the result. */
#define CHUNK 64
static void row_f16(const run_t *ru, int64_t n, int64_t d, int interleaved, int inverse) {
  float in[2 * CHUNK], out[2 * CHUNK];
  run_t chunk = {{(const char *)in, NULL}, {(char *)out, NULL}, {0, 0}, {0, 0}, 0, 0, 1,
                 0, 0, NULL};
  for (int64_t r = 0; r < ru->rows; r++) {
    const float *cr = (const float *)ru->cos + r * ru->sc, *sr = (const float *)ru->sin + r * ru->ss;
    for (int k = 0; k < 2 && ru->x[k] != NULL; k++) {
      const uint16_t *xr = (const uint16_t *)ru->x[k] + r * ru->sx[k];
      uint16_t *yr = (uint16_t *)ru->y[k] + r * ru->sy[k];
      for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
        int64_t m = n - i0 < CHUNK ? n - i0 : CHUNK;
        chunk.cos = (const char *)(cr + i0);
        chunk.sin = (const char *)(sr + i0);
        if (interleaved) {
          f16_widen(xr + 2 * i0, in, 2 * m);
          row_f32(&chunk, m, 2 * m, 1, inverse);
          f16_narrow(out, yr + 2 * i0, 2 * m);
        } else {
          f16_widen(xr + i0, in, m);
          f16_widen(xr + n + i0, in + m, m);
          row_f32(&chunk, m, 2 * m, 0, inverse);
          f16_narrow(out, yr + i0, m);
          f16_narrow(out + m, yr + n + i0, m);
        }
      }
      if (yr != xr && d > 2 * n)
        memcpy(yr + 2 * n, xr + 2 * n, (size_t)(d - 2 * n) * sizeof(uint16_t));
    }
  }
}
#endif

/* A tensor's rows as at most MAX_DIMS batch dims, each with a stride for x, y, cos, sin. */
typedef struct {
  char *ptr[4]; /* x, y, cos, sin */
  int nd;
  int64_t rows, size[MAX_DIMS], stride[4][MAX_DIMS];
} plan_t;

/* Parse one record: x, y, cos, sin pointers; x.ndim; cos.ndim; x's sizes and strides;
 * y's strides; the tables' sizes; cos's and sin's strides (elements, all dims including
 * the last, which is ignored: lanes and pairs have stride 1). Tables are broadcast to x's
 * batch shape (aligned on the right, stride 0 where their size is 1), size-1 dims are
 * dropped, the others are visited in memory order (by y's stride, largest first; rows
 * are independent, so any order gives the same result), and neighbouring dims are merged
 * where all four tensors allow it ([b, h, s] with [s, n] tables becomes [b*h, s]).
 * Memory order matters for [b, s, h, d] tensors viewed as [b, h, s, d] (flash-attn's
 * and Meta's layout): in the view's order every row is 8 KiB from the last (32 heads of
 * 128 bf16 lanes) and each head sweeps the whole tensor, 2-3x copy_'s time; in memory
 * order the heads of a position are one contiguous run sharing one table row. Returns
 * the next record, or NULL if more than MAX_DIMS dims remain. */
static const int64_t *make_plan(const int64_t *rec, plan_t *pl) {
  const int64_t xdims = rec[4], cdims = rec[5], nb = xdims - 1, nc = cdims - 1;
  const int64_t *size = rec + 6, *sx = size + xdims, *sy = sx + xdims;
  const int64_t *csize = sy + xdims, *cst = csize + cdims, *sst = cst + cdims;
  for (int k = 0; k < 4; k++) pl->ptr[k] = (char *)(intptr_t)rec[k];
  pl->nd = 0;
  pl->rows = 1;
  int64_t order[nb > 0 ? nb : 1], count = 0; /* the dims of size > 1, in memory order */
  for (int64_t i = 0; i < nb; i++) {
    pl->rows *= size[i];
    if (size[i] == 1) continue;
    int64_t at = count++; /* insertion sort, stable: ties keep the given order */
    for (; at > 0 && (sy[order[at - 1]] < sy[i] ||
                      (sy[order[at - 1]] == sy[i] && sx[order[at - 1]] < sx[i]));
         at--)
      order[at] = order[at - 1];
    order[at] = i;
  }
  for (int64_t o = 0; o < count; o++) {
    const int64_t i = order[o];
    int64_t j = i - (nb - nc); /* the table dim under x's dim i, if any */
    int table = j >= 0 && csize[j] != 1;
    int64_t st[4] = {sx[i], sy[i], table ? cst[j] : 0, table ? sst[j] : 0};
    int last = pl->nd - 1, merge = last >= 0;
    for (int k = 0; k < 4 && merge; k++) merge = pl->stride[k][last] == size[i] * st[k];
    if (merge) {
      pl->size[last] *= size[i];
      for (int k = 0; k < 4; k++) pl->stride[k][last] = st[k];
    } else {
      if (pl->nd == MAX_DIMS) return NULL;
      pl->size[pl->nd] = size[i];
      for (int k = 0; k < 4; k++) pl->stride[k][pl->nd] = st[k];
      pl->nd++;
    }
  }
  return sst + cdims;
}

/* The rows of a run in plan p (and q, the second tensor of a pair, or NULL) starting at
 * element offsets off (x, y, cos, sin) and offq (q's x, y). */
static void one_run(int dtype, const plan_t *p, const plan_t *q, const int64_t *off,
                    const int64_t *offq, int64_t rows, int last, int64_t n, int64_t d, int interleaved,
                    int inverse, char *buf) {
  const int64_t esize = dtype == F64 ? 8 : dtype == F32 ? 4 : 2, tsize = dtype == F64 ? 8 : 4;
  run_t ru;
  ru.x[0] = p->ptr[0] + off[0] * esize;
  ru.y[0] = p->ptr[1] + off[1] * esize;
  ru.x[1] = q ? q->ptr[0] + offq[0] * esize : NULL;
  ru.y[1] = q ? q->ptr[1] + offq[1] * esize : NULL;
  ru.cos = p->ptr[2] + off[2] * tsize;
  ru.sin = p->ptr[3] + off[3] * tsize;
  ru.rows = rows;
  ru.sx[0] = last >= 0 ? p->stride[0][last] : 0;
  ru.sy[0] = last >= 0 ? p->stride[1][last] : 0;
  ru.sx[1] = q && last >= 0 ? q->stride[0][last] : 0;
  ru.sy[1] = q && last >= 0 ? q->stride[1][last] : 0;
  ru.sc = last >= 0 ? p->stride[2][last] : 0;
  ru.ss = last >= 0 ? p->stride[3][last] : 0;
  /* in place, the output lines are in the cache already (just read): plain stores */
  ru.buf = buf && ru.y[0] != ru.x[0] && (!q || ru.y[1] != ru.x[1]) ? buf : NULL;
  switch (dtype) {
    case F32: row_f32(&ru, n, d, interleaved, inverse); break;
    case F64: row_f64(&ru, n, d, interleaved, inverse); break;
    case BF16: row_bf16(&ru, n, d, interleaved, inverse); break;
#ifdef HAVE_F16
    case F16: row_f16(&ru, n, d, interleaved, inverse); break;
#endif
  }
}

/* Step the odometer over dims [0, nd) (last fastest); returns 0 after the last index.
 * off holds the x, y, cos, sin offsets of p; offq the x, y offsets of q (if any). */
static inline int next_index(const plan_t *p, const plan_t *q, int nd, int64_t *idx,
                             int64_t *off, int64_t *offq) {
  for (int k = nd - 1; k >= 0; k--) {
    for (int t = 0; t < 4; t++) off[t] += p->stride[t][k];
    for (int t = 0; q && t < 2; t++) offq[t] += q->stride[t][k];
    if (++idx[k] < p->size[k]) return 1;
    for (int t = 0; t < 4; t++) off[t] -= p->stride[t][k] * p->size[k];
    for (int t = 0; q && t < 2; t++) offq[t] -= q->stride[t][k] * q->size[k];
    idx[k] = 0;
  }
  return 0;
}

/* Rows [r0, r1) of plan p (and the same rows of q, its pair), in row-major order of the
 * batch dims: runs along the last dim, then the odometer over the others. */
static void run_rows(int dtype, const plan_t *p, const plan_t *q, int64_t r0, int64_t r1,
                     int64_t n, int64_t d, int interleaved, int inverse, char *buf) {
  const int last = p->nd - 1;
  int64_t idx[MAX_DIMS], off[4] = {0, 0, 0, 0}, offq[2] = {0, 0}, rest = r0;
  for (int k = last; k >= 0; k--) {
    idx[k] = rest % p->size[k];
    rest /= p->size[k];
    for (int t = 0; t < 4; t++) off[t] += idx[k] * p->stride[t][k];
    for (int t = 0; q && t < 2; t++) offq[t] += idx[k] * q->stride[t][k];
  }
  if (last < 0) { /* a single row */
    if (r0 < r1) one_run(dtype, p, q, off, offq, 1, last, n, d, interleaved, inverse, buf);
    return;
  }
  for (int64_t r = r0; r < r1;) {
    int64_t run = p->size[last] - idx[last];
    if (run > r1 - r) run = r1 - r;
    one_run(dtype, p, q, off, offq, run, last, n, d, interleaved, inverse, buf);
    r += run;
    for (int t = 0; t < 4; t++) off[t] += run * p->stride[t][last];
    for (int t = 0; q && t < 2; t++) offq[t] += run * q->stride[t][last];
    idx[last] += run;
    if (idx[last] == p->size[last]) { /* wrap, carry into the outer dims */
      for (int t = 0; t < 4; t++) off[t] -= p->size[last] * p->stride[t][last];
      for (int t = 0; q && t < 2; t++) offq[t] -= q->size[last] * q->stride[t][last];
      idx[last] = 0;
      next_index(p, q, last, idx, off, offq);
    }
  }
}

/* Whether two plans have the same rows and table rows (q and k with equal head counts):
 * then they are done together, each table row read once for both. */
static int same_rows(const plan_t *a, const plan_t *b) {
  if (a->nd != b->nd || a->ptr[2] != b->ptr[2] || a->ptr[3] != b->ptr[3]) return 0;
  for (int k = 0; k < a->nd; k++)
    if (a->size[k] != b->size[k] || a->stride[2][k] != b->stride[2][k] ||
        a->stride[3][k] != b->stride[3][k])
      return 0;
  return 1;
}

/* Calls whose outputs (all tensors together) have at least this many bytes use streaming
 * stores; negative: never. ropekit/apply/cpu/loader.py sets it to the last-level cache
 * of the process's CPUs together (sysfs: per core complex, times the complexes it may
 * run on; glibc's sysconf reports the whole package's L3 on EPYC, 12x too much for a
 * 2-core guest), so that outputs which could still be in the cache for the next op are
 * stored normally. 32 MiB until set. Tests set 0 (stream everything) or -1. Not
 * thread-safe: set it when no call is running. */
static int64_t stream_bytes = (int64_t)32 << 20;
void ropekit_set_stream_min_bytes(int64_t bytes) { stream_bytes = bytes; }
int64_t ropekit_stream_min_bytes(void) {
#ifdef HAVE_STREAM
  return stream_bytes < 0 ? INT64_MAX : stream_bytes;
#else
  return INT64_MAX;
#endif
}

/* What one call's threads share: the plans and the call's parameters. */
typedef struct {
  const plan_t *plans;
  int32_t ntensors;
  int64_t total;
  int paired, stream;
  int32_t dtype;
  int64_t n, d;
  int32_t interleaved, inverse;
} job_t;

/* Thread tid of nt: its even share of the rows (of the row pairs, when paired). */
static void run_part(const job_t *job, int64_t tid, int64_t nt) {
  _Alignas(64) char rowbuf[STREAM_MAX_ROW];
  char *buf = job->stream ? rowbuf : NULL;
  const plan_t *plans = job->plans;
  if (job->paired) {
    int64_t rows = plans[0].rows;
    int64_t lo = rows * tid / nt, hi = rows * (tid + 1) / nt;
    if (lo < hi)
      run_rows(job->dtype, &plans[0], &plans[1], lo, hi, job->n, job->d, job->interleaved,
               job->inverse, buf);
  } else {
    int64_t lo = job->total * tid / nt, hi = job->total * (tid + 1) / nt, base = 0;
    for (int t = 0; t < job->ntensors && lo < hi; t++) {
      int64_t rows = plans[t].rows;
      int64_t a = lo > base ? lo : base, b = hi < base + rows ? hi : base + rows;
      if (a < b)
        run_rows(job->dtype, &plans[t], NULL, a - base, b - base, job->n, job->d,
                 job->interleaved, job->inverse, buf);
      base += rows;
    }
  }
  if (job->stream) stream_fence(); /* streamed lines visible before the region ends */
}

/* Rotate `ntensors` tensors (e.g. q and k) sharing one dtype, n and d, in one parallel
 * region. One argument, int64 [7 + records]: ntensors, dtype, n, d, interleaved,
 * inverse, threads, then one make_plan record per tensor, back to back. One pointer
 * rather than eight arguments: ctypes converts each argument in Python, and at decode
 * sizes that shows. */
int ropekit_rotate(const int64_t *call) {
  const int32_t ntensors = (int32_t)call[0], dtype = (int32_t)call[1];
  const int64_t n = call[2], d = call[3];
  const int32_t interleaved = (int32_t)call[4], inverse = (int32_t)call[5];
  const int32_t nthreads = (int32_t)call[6];
  const int64_t *records = call + 7;
  plan_t plans[MAX_TENSORS];
  int64_t total = 0;
  if (ntensors < 1 || ntensors > MAX_TENSORS) return BAD_COUNT;
#ifndef HAVE_F16
  if (dtype == F16) return BAD_DTYPE;
#endif
  if (dtype < F32 || dtype > F16) return BAD_DTYPE;
  for (int t = 0; t < ntensors; t++) {
    records = make_plan(records, &plans[t]);
    if (records == NULL) return TOO_MANY_DIMS;
    total += plans[t].rows;
  }
  if (total == 0) return OK;
  const int paired = ntensors == 2 && same_rows(&plans[0], &plans[1]);
  const int64_t esize = dtype == F64 ? 8 : dtype == F32 ? 4 : 2;
  /* streaming stores: rows that support them (stream_row) use them */
  const int stream = (dtype == F32 || dtype == BF16) &&
                     total * d * esize >= ropekit_stream_min_bytes() && d * esize <= STREAM_MAX_ROW;
  const job_t job = {plans, ntensors, total, paired, stream, dtype, n, d, interleaved, inverse};
  if (nthreads <= 1) {
    /* no parallel region at all: a one-thread OpenMP team still costs a region's set-up
     * per call, which at decode sizes is comparable to the rotation */
    run_part(&job, 0, 1);
  } else {
#pragma omp parallel num_threads(nthreads)
    {
      int64_t nt = 1, tid = 0;
#ifdef _OPENMP
      nt = omp_get_num_threads();
      tid = omp_get_thread_num();
#endif
      run_part(&job, tid, nt);
    }
  }
  return OK;
}

/* What this build supports. */
int ropekit_has_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

int ropekit_has_float16(void) {
#ifdef HAVE_F16
  return 1;
#else
  return 0;
#endif
}
