/* Depthwise 3x3 convolution (padding 1, stride 1 or 2), forward and both gradients (in one backward pass), for
   training on x86 CPUs (AVX2 + FMA): channels-last float32 maps, C % 8 == 0, weights tap-major [9][C] (tap = kh*3 +
   kw). Either side can take on a neighbouring batch norm + ReLU row by row (rows_t): the forward reads the previous
   block's in place of its input map and sums the next one's statistics from its output rows; the backward reads
   the previous block's for the weight gradient, sums its gradient sums from the input-gradient rows, and computes
   dL/dy through the next one from dL/dz as it reads.

   Each output vector of 8 channels is its window's 9 fused multiply-adds in registers; rows outside the map
   are read from a zero row, so the interior of every row runs without bounds checks. At MobileNet's training
   shapes this runs near the memory bandwidth, where PyTorch's CPU depthwise kernels (oneDNN) do not. Built and
   loaded by mobilenet_v1/kernels/build.py with bn_relu.c. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "these kernels need AVX2 and FMA"
#endif

#define LD _mm256_loadu_ps
#define FMA _mm256_fmadd_ps

/* Sum over the 3x3 window whose top-left input is column `col` of rows r[0..2] (each already offset to the
   8-channel chunk), taps w (offset to the chunk) in tap order kh*3+kw; columns outside [0, W) skipped. */
static inline __m256 window(const float *const r[3], int64_t col, int64_t W, int64_t C, const float *w) {
  __m256 acc = _mm256_setzero_ps();
  for (int kw = 0; kw < 3; kw++) {
    int64_t iw = col + kw;
    if (iw < 0 || iw >= W) continue;
    for (int kh = 0; kh < 3; kh++) acc = FMA(LD(r[kh] + iw * C), LD(w + (kh * 3 + kw) * C), acc);
  }
  return acc;
}

/* The same for a window inside the map, unrolled, in three independent sums */
static inline __m256 window_full(const float *r0, const float *r1, const float *r2, int64_t C, const float *w) {
  __m256 a = FMA(LD(r0), LD(w), _mm256_mul_ps(LD(r0 + C), LD(w + C)));
  __m256 b = FMA(LD(r1), LD(w + 3 * C), _mm256_mul_ps(LD(r1 + C), LD(w + 4 * C)));
  __m256 c = FMA(LD(r2), LD(w + 6 * C), _mm256_mul_ps(LD(r2 + C), LD(w + 7 * C)));
  a = FMA(LD(r0 + 2 * C), LD(w + 2 * C), a);
  b = FMA(LD(r1 + 2 * C), LD(w + 5 * C), b);
  c = FMA(LD(r2 + 2 * C), LD(w + 8 * C), c);
  return _mm256_add_ps(_mm256_add_ps(a, b), c);
}

/* The previous block's batch norm + ReLU, read in place of its output map: max((x - mean)*a + b, 0) (bn_relu.c) */
typedef struct {
  const float *mean, *a, *b;
} bn_t;

/* The next block's batch norm + ReLU z = max((y - mean)*a + b, 0) in a gradient: dL/dy = m*g*p + (y - mean)*q + r
   from g = dL/dz (bn_relu_grad_apply), read in place of a stored dL/dy */
typedef struct {
  const float *y, *mean, *a, *b, *p, *q, *r;
} bngrad_t;

void bn_relu_row(const float *x, float *out, int64_t n, int64_t C, const float *mean, const float *a, const float *b);
void bn_relu_row_grad_sums(const float *g, const float *x, int64_t n, int64_t C, const float *mean, const float *a,
                           const float *b, float *s1, float *s2);
void bn_stats_row(const float *x, int64_t n, int64_t C, const float *k, float *s1, float *s2);
void bn_relu_grad_row(const float *g, const float *y, float *out, int64_t n, int64_t C, const float *mean,
                      const float *a, const float *b, const float *p, const float *q, const float *r);

/* One thread's source of rows: the map x itself, or (bn set) its batch norm + ReLU, or (gb set) the gradient
   through the next batch norm + ReLU with x = dL/dz, computed a row at a time into a ring of three rows (a 3x3
   window of stride 1 or 2 never needs more) instead of read from a stored map. */
typedef struct {
  const float *x, *zero;
  const bn_t *bn;
  const bngrad_t *gb;
  float *ring;
  int64_t key[3], H, W, C;
} rows_t;

static rows_t rows_of(const float *x, const bn_t *bn, const bngrad_t *gb, const float *zero, float *ring, int64_t H,
                      int64_t W, int64_t C) {
  rows_t r = {x, zero, bn, gb, ring, {-1, -1, -1}, H, W, C};
  return r;
}

static const float *row_at(rows_t *r, int64_t n, int64_t ih) {
  if (ih < 0 || ih >= r->H) return r->zero;
  int64_t offset = (n * r->H + ih) * r->W * r->C;
  if (!r->bn && !r->gb) return r->x + offset;
  int slot = (int)(ih % 3);
  float *dst = r->ring + slot * r->W * r->C;
  if (r->key[slot] != n * r->H + ih) {
    if (r->bn)
      bn_relu_row(r->x + offset, dst, r->W, r->C, r->bn->mean, r->bn->a, r->bn->b);
    else
      bn_relu_grad_row(r->x + offset, r->gb->y + offset, dst, r->W, r->C, r->gb->mean, r->gb->a, r->gb->b, r->gb->p,
                       r->gb->q, r->gb->r);
    r->key[slot] = n * r->H + ih;
  }
  return dst;
}

/* Scratch for nt threads: a zero row of W pixels, rings of three rows of W pixels (rings set) and of W2 pixels (W2
   > 0), and per thread k sums of C channels, in float (the current block) and in double (the totals); returns
   nonzero when there is no memory (scratch_free then releases what was had). */
typedef struct {
  float *zero, *ring, *ring2, *f;
  double *part;
  int nt;
  int64_t k; /* sums per thread, each of C values */
} scratch_t;

static int scratch_get(scratch_t *sc, int64_t W, int64_t C, int rings, int64_t W2, int64_t k) {
  sc->nt = omp_get_max_threads();
  sc->k = k;
  sc->zero = (float *)calloc((size_t)W * C, sizeof(float));
  sc->ring = rings ? (float *)malloc(sizeof(float) * 3 * W * C * sc->nt) : NULL;
  sc->ring2 = W2 ? (float *)malloc(sizeof(float) * 3 * W2 * C * sc->nt) : NULL;
  sc->f = k ? (float *)calloc((size_t)k * C * sc->nt, sizeof(float)) : NULL;
  sc->part = k ? (double *)calloc((size_t)k * C * sc->nt, sizeof(double)) : NULL;
  return !sc->zero || (rings && !sc->ring) || (W2 && !sc->ring2) || (k && (!sc->f || !sc->part));
}

static float *ring_of(float *ring, int t, int64_t W, int64_t C) { return ring ? ring + (size_t)t * 3 * W * C : NULL; }

static void scratch_free(scratch_t *sc) {
  free(sc->zero);
  free(sc->ring);
  free(sc->ring2);
  free(sc->f);
  free(sc->part);
}

/* Values [from, from + n) of thread t's float block join its double totals, and start again from zero */
static void sums_flush(const scratch_t *sc, int t, int64_t C, int64_t from, int64_t n) {
  float *f = sc->f + (size_t)t * sc->k * C + from;
  double *p = sc->part + (size_t)t * sc->k * C + from;
  for (int64_t i = 0; i < n; i++) {
    p[i] += f[i];
    f[i] = 0.f;
  }
}

/* out[n] = the threads' totals of values [from, from + n), added in a fixed order (results do not depend on timing) */
static void sums_total(const scratch_t *sc, int64_t C, int64_t from, int64_t n, double *out) {
  for (int64_t i = 0; i < n; i++) out[i] = 0.0;
  for (int t = 0; t < sc->nt; t++)
    for (int64_t i = 0; i < n; i++) out[i] += sc->part[(size_t)t * sc->k * C + from + i];
}

/* Rows [first, last) of `rows` for thread t of T */
#define THREAD_ROWS(rows)                                                   \
  int t = omp_get_thread_num(), T = omp_get_num_threads();                  \
  int64_t first = (rows) * t / T, last = (rows) * (t + 1) / T;

/* Output row `row` (n*OH + oh) of the convolution of `in` into yr */
static void conv_row(rows_t *in, int64_t row, int64_t OH, int64_t OW, int64_t W, int64_t C, int s, const float *w,
                     float *yr) {
  int64_t n = row / OH, oh = row % OH;
  const float *r[3];
  for (int kh = 0; kh < 3; kh++) r[kh] = row_at(in, n, oh * s + kh - 1);
  for (int64_t ow = 0; ow < OW; ow++) {
    int64_t col = ow * s - 1;
    float *o = yr + ow * C;
    if (col >= 0 && col + 2 < W) {
      const float *r0 = r[0] + col * C, *r1 = r[1] + col * C, *r2 = r[2] + col * C;
      for (int64_t c = 0; c < C; c += 8) _mm256_storeu_ps(o + c, window_full(r0 + c, r1 + c, r2 + c, C, w + c));
    } else {
      for (int64_t c = 0; c < C; c += 8) {
        const float *rc[3] = {r[0] + c, r[1] + c, r[2] + c};
        _mm256_storeu_ps(o + c, window(rc, col, W, C, w + c));
      }
    }
  }
}

/* The exported functions return 0, or 1 when memory for their scratch buffers could not be had. Where mean, a and
   b are given (not NULL), the convolution's input is the previous block's batch norm + ReLU of x,
   max((x - mean)*a + b, 0), computed as it is read (that map is never stored). */

/* y[n, oh, ow] = sum_{kh,kw} w[kh,kw] * in[n, oh*s + kh - 1, ow*s + kw - 1], in = x or its batch norm + ReLU.
   With stats (not NULL): also the batch statistics of y for the next batch norm, summed from each output row while
   it is in cache: stats [2][C] = sums of y - shift and (y - shift)^2, shift [C] = the mean of the first image's
   middle output row (against cancellation; bn_relu_stats; an edge pixel, with zero padding, can be far from the
   map's mean). */
int dw3x3_forward(const float *x, const float *mean, const float *a, const float *b, const float *w, float *y,
                  int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW, int s, float *shift,
                  double *stats) {
  bn_t bn = {mean, a, b};
  const bn_t *pro = mean ? &bn : NULL;
  scratch_t sc;
  if (scratch_get(&sc, W, C, pro != NULL, 0, stats ? 2 : 0)) {
    scratch_free(&sc);
    return 1;
  }
  if (stats) { /* the shift, from one output row computed here (and once more below: the same values) */
    rows_t in = rows_of(x, pro, NULL, sc.zero, ring_of(sc.ring, 0, W, C), H, W, C);
    float *yr = y + OH / 2 * OW * C;
    conv_row(&in, OH / 2, OH, OW, W, C, s, w, yr);
    for (int64_t c = 0; c < C; c++) {
      double sum = 0.0;
      for (int64_t ow = 0; ow < OW; ow++) sum += yr[ow * C + c];
      shift[c] = (float)(sum / OW);
    }
  }
#pragma omp parallel num_threads(sc.nt)
  {
    THREAD_ROWS(N * OH)
    rows_t in = rows_of(x, pro, NULL, sc.zero, ring_of(sc.ring, t, W, C), H, W, C);
    float *f = sc.f ? sc.f + (size_t)t * 2 * C : NULL;
    for (int64_t row = first; row < last; row++) {
      float *yr = y + row * OW * C;
      conv_row(&in, row, OH, OW, W, C, s, w, yr);
      if (stats) {
        bn_stats_row(yr, OW, C, shift, f, f + C);
        sums_flush(&sc, t, C, 0, 2 * C);
      }
    }
  }
  if (stats) sums_total(&sc, C, 0, 2 * C, stats);
  scratch_free(&sc);
  return 0;
}

/* The gradient source of dw3x3_backward: gy itself (y NULL), or dL/dy through the next block's batch norm +
   ReLU of y, with gy = dL/dz */
static bngrad_t bngrad_of(const float *y, const float *mean, const float *a, const float *b, const float *p,
                          const float *q, const float *r) {
  bngrad_t g = {y, mean, a, b, p, q, r};
  return g;
}

/* One row of dL/d(input) of a stride-2 convolution (W columns, into o) from up to two gy rows ra, rb of OW columns
   with their kernel rows ka, kb (a missing one: the zero row). Input (ih, iw) gets the taps with ih = 2*oh + kh - 1,
   i.e. kh = 1 for even ih, kh in {0, 2} for odd ih (and the same for columns). */
static void grad_input_row_s2(const float *ra, int ka, const float *rb, int kb, const float *w, float *o, int64_t W,
                              int64_t OW, int64_t C) {
  for (int64_t iw = 0; iw < W; iw++, o += C) {
    if (iw % 2 == 0) { /* kw = 1, ow = iw/2 */
      const float *pa = ra + (iw / 2) * C, *pb = rb + (iw / 2) * C;
      const float *wa = w + (ka * 3 + 1) * C, *wb = w + (kb * 3 + 1) * C;
      for (int64_t c = 0; c < C; c += 8)
        _mm256_storeu_ps(o + c, FMA(LD(pa + c), LD(wa + c), _mm256_mul_ps(LD(pb + c), LD(wb + c))));
    } else { /* kw = 0 at ow = (iw+1)/2 (may be past the end), kw = 2 at ow = (iw-1)/2 */
      int64_t o0 = (iw + 1) / 2, o2 = (iw - 1) / 2;
      const float *wa0 = w + ka * 3 * C, *wa2 = w + (ka * 3 + 2) * C;
      const float *wb0 = w + kb * 3 * C, *wb2 = w + (kb * 3 + 2) * C;
      if (o0 < OW) {
        for (int64_t c = 0; c < C; c += 8) {
          __m256 v = _mm256_mul_ps(LD(ra + o0 * C + c), LD(wa0 + c));
          v = FMA(LD(ra + o2 * C + c), LD(wa2 + c), v);
          v = FMA(LD(rb + o0 * C + c), LD(wb0 + c), v);
          v = FMA(LD(rb + o2 * C + c), LD(wb2 + c), v);
          _mm256_storeu_ps(o + c, v);
        }
      } else {
        for (int64_t c = 0; c < C; c += 8)
          _mm256_storeu_ps(o + c, FMA(LD(ra + o2 * C + c), LD(wa2 + c), _mm256_mul_ps(LD(rb + o2 * C + c), LD(wb2 + c))));
      }
    }
  }
}

/* gy row g's products with the input rows r[0..2] into the float sums f[9][C] of dL/dw. Columns outer, channels
   inner: the maps are read in memory order, into f (L1 or L2). A channel-outer loop with the 9 sums in registers
   strides by C floats down a row, which at C >= 512 keeps landing in the same few L1 sets: 1.5x slower over
   MobileNet's layers. */
static void grad_weight_row(const float *g, const float *const r[3], float *f, int64_t W, int64_t C, int64_t OW,
                            int s) {
  for (int64_t ow = 0; ow < OW; ow++) {
    const float *gp = g + ow * C;
    for (int kw = 0; kw < 3; kw++) {
      int64_t iw = ow * s - 1 + kw;
      if (iw < 0 || iw >= W) continue;
      const float *p0 = r[0] + iw * C, *p1 = r[1] + iw * C, *p2 = r[2] + iw * C;
      float *f0 = f + kw * C, *f1 = f0 + 3 * C, *f2 = f0 + 6 * C;
      for (int64_t c = 0; c < C; c += 8) {
        __m256 gv = LD(gp + c);
        _mm256_storeu_ps(f0 + c, FMA(gv, LD(p0 + c), LD(f0 + c)));
        _mm256_storeu_ps(f1 + c, FMA(gv, LD(p1 + c), LD(f1 + c)));
        _mm256_storeu_ps(f2 + c, FMA(gv, LD(p2 + c), LD(f2 + c)));
      }
    }
  }
}

#define FLUSH_TERMS 128 /* rows narrower than this are grouped to about this many products per float partial sum */

/* Both gradients in one pass over gy, a row at a time (each row of gy, of x's batch norm + ReLU and of dL/dy is
   read or computed once, and used for both while in cache):
   gx (not NULL) = dL/d(input): stride 1, the forward with reversed taps; stride 2, grad_input_row_s2. With mean, a, b:
   gx is dL/da for a = the batch norm + ReLU of x, and sums [2][C] gets that batch norm's gradient sums
   (bn_relu_grad_sums of gx and x) from each row as it is written (sums NULL: not).
   gw (not NULL) [9][C] = dL/dw[k][c] = sum over n, oh, ow of gy[n,oh,ow,c] * in[n, oh*s+kh-1, ow*s+kw-1, c]
   (per-thread double totals; in = x or, with mean, a, b, its batch norm + ReLU).
   With gy_y (not NULL): gy is dL/dz of the next block's batch norm + ReLU z of this convolution's output gy_y
   (bngrad_t), whose dL/dy is computed as read. */
int dw3x3_backward(const float *gy, const float *x, const float *w, float *gx, double *gw, int64_t N, int64_t H,
                   int64_t W, int64_t C, int64_t OH, int64_t OW, int s, const float *mean, const float *a,
                   const float *b, double *sums, const float *gy_y, const float *g_mean, const float *g_a,
                   const float *g_b, const float *g_p, const float *g_q, const float *g_r) {
  bn_t bn = {mean, a, b};
  const bn_t *pro = mean ? &bn : NULL, *epi = gx && sums ? &bn : NULL;
  bngrad_t gb = bngrad_of(gy_y, g_mean, g_a, g_b, g_p, g_q, g_r);
  const bngrad_t *gpro = gy_y ? &gb : NULL;
  /* sums per thread: gw's 9 rows of C, then two of C for epi */
  int64_t k_gw = gw ? 9 : 0, k = k_gw + (epi ? 2 : 0);
  scratch_t sc;
  float *reversed = (float *)malloc(sizeof(float) * 9 * C); /* stride 1: dL/d(input) is the forward convolution of
                                                                gy with the taps reversed */
  if (scratch_get(&sc, W, C, gw && pro, gpro ? OW : 0, k) || !reversed) {
    scratch_free(&sc);
    free(reversed);
    return 1;
  }
  for (int kk = 0; kk < 9; kk++) memcpy(reversed + kk * C, w + (8 - kk) * C, sizeof(float) * C);
#pragma omp parallel num_threads(sc.nt)
  {
    THREAD_ROWS(N * OH)
    float *f = sc.f ? sc.f + (size_t)t * k * C : NULL; /* gw's current block of rows, then epi's row, in float */
    int64_t flush_rows = OW >= FLUSH_TERMS || OW < 1 ? 1 : FLUSH_TERMS / OW; /* one row at least */
    rows_t in = rows_of(x, pro, NULL, sc.zero, ring_of(sc.ring, t, W, C), H, W, C);
    rows_t grad = rows_of(gy, NULL, gpro, sc.zero, ring_of(sc.ring2, t, OW, C), OH, OW, C);
    for (int64_t row = first; row < last; row++) {
      int64_t n = row / OH, oh = row % OH;
      if (gx) { /* input rows oh (s = 1), 2*oh and 2*oh + 1 (s = 2) */
        int64_t i0 = s == 1 ? oh : 2 * oh, i1 = s == 1 ? oh + 1 : (2 * oh + 2 < H ? 2 * oh + 2 : H);
        for (int64_t ih = i0; ih < i1; ih++) {
          float *o = gx + (n * H + ih) * W * C;
          if (s == 1)
            conv_row(&grad, n * H + ih, H, W, OW, C, 1, reversed, o);
          else if (ih % 2 == 0)
            grad_input_row_s2(row_at(&grad, n, ih / 2), 1, sc.zero, 1, w, o, W, OW, C);
          else /* kh = 0 at gy row (ih + 1)/2 (the zero row past the end), kh = 2 at (ih - 1)/2 */
            grad_input_row_s2(row_at(&grad, n, (ih + 1) / 2), 0, row_at(&grad, n, (ih - 1) / 2), 2, w, o, W, OW, C);
          if (epi) { /* into the epi block, which follows gw's */
            float *fe = f + k_gw * C;
            bn_relu_row_grad_sums(o, x + (n * H + ih) * W * C, W, C, epi->mean, epi->a, epi->b, fe, fe + C);
            sums_flush(&sc, t, C, k_gw * C, 2 * C);
          }
        }
      }
      if (gw) {
        const float *r[3];
        for (int kh = 0; kh < 3; kh++) r[kh] = row_at(&in, n, oh * s + kh - 1);
        grad_weight_row(row_at(&grad, n, oh), r, f, W, C, OW, s);
        if ((row - first + 1) % flush_rows == 0 || row + 1 == last) sums_flush(&sc, t, C, 0, 9 * C);
      }
    }
  }
  free(reversed);
  if (gw) sums_total(&sc, C, 0, 9 * C, gw);
  if (epi) sums_total(&sc, C, k_gw * C, 2 * C, sums);
  scratch_free(&sc);
  return 0;
}
