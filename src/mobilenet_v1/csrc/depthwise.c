/* Depthwise 3x3 convolution (padding 1, stride 1 or 2), forward and both gradients, for training on x86 CPUs
   (AVX2 + FMA): channels-last float32 maps, C % 8 == 0, weights tap-major [9][C] (tap = kh*3 + kw).

   Each output vector of 8 channels is its window's 9 fused multiply-adds in registers; rows outside the map
   are read from a zero row, so the interior of every row runs without bounds checks. At MobileNet's training
   shapes this runs near the memory bandwidth, where PyTorch's CPU depthwise kernels (oneDNN) do not
   (BENCHMARKS.md). Built and loaded by mobilenet_v1/fused.py with bn_relu.c. */
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

void bn_relu_row(const float *x, float *out, int64_t n, int64_t C, const float *mean, const float *a, const float *b);
void bn_relu_row_grad_sums(const float *g, const float *x, int64_t n, int64_t C, const float *mean, const float *a,
                           const float *b, float *s1, float *s2);

/* One thread's source of input rows: the map x itself, or (bn set) its batch norm + ReLU, computed a row at a time
   into a ring of three rows (a 3x3 window of stride 1 or 2 never needs more) instead of read from a stored map. */
typedef struct {
  const float *x, *zero;
  const bn_t *bn;
  float *ring;
  int64_t key[3], H, W, C;
} rows_t;

static rows_t rows_of(const float *x, const bn_t *bn, const float *zero, float *ring, int64_t H, int64_t W, int64_t C) {
  rows_t r = {x, zero, bn, ring, {-1, -1, -1}, H, W, C};
  return r;
}

static const float *row_at(rows_t *r, int64_t n, int64_t ih) {
  if (ih < 0 || ih >= r->H) return r->zero;
  const float *src = r->x + (n * r->H + ih) * r->W * r->C;
  if (!r->bn) return src;
  int slot = (int)(ih % 3);
  float *dst = r->ring + slot * r->W * r->C;
  if (r->key[slot] != n * r->H + ih) {
    bn_relu_row(src, dst, r->W, r->C, r->bn->mean, r->bn->a, r->bn->b);
    r->key[slot] = n * r->H + ih;
  }
  return dst;
}

/* Scratch for nt threads: a zero row, the row rings (rings set), and per thread k sums of C channels, in float (the
   current block) and in double (the totals); returns nonzero when there is no memory (scratch_free then releases
   what was had). */
typedef struct {
  float *zero, *ring, *f;
  double *part;
  int nt;
  int64_t k; /* sums per thread, each of C values */
} scratch_t;

static int scratch_get(scratch_t *sc, int64_t W, int64_t C, int rings, int64_t k) {
  sc->nt = omp_get_max_threads();
  sc->k = k;
  sc->zero = (float *)calloc((size_t)W * C, sizeof(float));
  sc->ring = rings ? (float *)malloc(sizeof(float) * 3 * W * C * sc->nt) : NULL;
  sc->f = k ? (float *)calloc((size_t)k * C * sc->nt, sizeof(float)) : NULL;
  sc->part = k ? (double *)calloc((size_t)k * C * sc->nt, sizeof(double)) : NULL;
  return !sc->zero || (rings && !sc->ring) || (k && (!sc->f || !sc->part));
}

static void scratch_free(scratch_t *sc) {
  free(sc->zero);
  free(sc->ring);
  free(sc->f);
  free(sc->part);
}

/* Thread t's float block joins its double totals and starts again from zero */
static void sums_flush(const scratch_t *sc, int t, int64_t C) {
  float *f = sc->f + (size_t)t * sc->k * C;
  double *p = sc->part + (size_t)t * sc->k * C;
  for (int64_t i = 0; i < sc->k * C; i++) {
    p[i] += f[i];
    f[i] = 0.f;
  }
}

/* out[k*C] = the threads' totals, added in a fixed order (results do not depend on timing) */
static void sums_total(const scratch_t *sc, int64_t C, double *out) {
  for (int64_t i = 0; i < sc->k * C; i++) out[i] = 0.0;
  for (int t = 0; t < sc->nt; t++)
    for (int64_t i = 0; i < sc->k * C; i++) out[i] += sc->part[(size_t)t * sc->k * C + i];
}

/* The gradient sums of the previous block's batch norm ([2][C]: sum of m*g, of m*g*(x - mean)), from one finished
   row of dL/da (ga) and the same row of its input x: in float over the row, then into thread t's double totals */
static void sums_row(const scratch_t *sc, int t, const float *ga, const float *x, int64_t W, int64_t C, const bn_t *bn) {
  float *f = sc->f + (size_t)t * 2 * C;
  bn_relu_row_grad_sums(ga, x, W, C, bn->mean, bn->a, bn->b, f, f + C);
  sums_flush(sc, t, C);
}

/* Rows [first, last) of `rows` for thread t of T */
#define THREAD_ROWS(rows)                                                   \
  int t = omp_get_thread_num(), T = omp_get_num_threads();                  \
  int64_t first = (rows) * t / T, last = (rows) * (t + 1) / T;

/* y[n, oh, ow] = sum_{kh,kw} w[kh,kw] * in[n, oh*s + kh - 1, ow*s + kw - 1], in = x or (pro) its batch norm +
   ReLU. With epi: each finished row of y is also added to the gradient sums of the batch norm whose input is ex
   (y then being dL/da of that block, ex its input map, with y's shape). */
static int conv(const float *x, const bn_t *pro, const float *w, float *y, int64_t N, int64_t H, int64_t W, int64_t C,
                int64_t OH, int64_t OW, int s, const float *ex, const bn_t *epi, double *sums) {
  scratch_t sc;
  if (scratch_get(&sc, W, C, pro != NULL, epi ? 2 : 0)) {
    scratch_free(&sc);
    return 1;
  }
#pragma omp parallel num_threads(sc.nt)
  {
    THREAD_ROWS(N * OH)
    rows_t in = rows_of(x, pro, sc.zero, sc.ring ? sc.ring + (size_t)t * 3 * W * C : NULL, H, W, C);
    for (int64_t row = first; row < last; row++) {
      int64_t n = row / OH, oh = row % OH;
      const float *r[3];
      for (int kh = 0; kh < 3; kh++) r[kh] = row_at(&in, n, oh * s + kh - 1);
      float *yr = y + row * OW * C;
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
      if (epi) sums_row(&sc, t, yr, ex + row * OW * C, OW, C, epi);
    }
  }
  if (epi) sums_total(&sc, C, sums);
  scratch_free(&sc);
  return 0;
}

/* The exported functions return 0, or 1 when memory for their scratch buffers could not be had. Where mean, a and
   b are given (not NULL), the convolution's input is the previous block's batch norm + ReLU of x,
   max((x - mean)*a + b, 0), computed as it is read (that map is never stored). */
int dw3x3_forward(const float *x, const float *mean, const float *a, const float *b, const float *w, float *y,
                  int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW, int s) {
  bn_t bn = {mean, a, b};
  return conv(x, mean ? &bn : NULL, w, y, N, H, W, C, OH, OW, s, NULL, NULL, NULL);
}

/* dL/d(input). Stride 1: the forward with reversed taps. Stride 2: input (ih, iw) gets the taps with
   ih = 2*oh + kh - 1, i.e. kh = 1 for even ih, kh in {0, 2} for odd ih (and the same for columns).
   With mean, a, b: gx is dL/da for a = the batch norm + ReLU of x, and sums [2][C] gets that batch norm's gradient
   sums (bn_relu_grad_sums of gx and x) from each row as it is written. */
int dw3x3_grad_input(const float *gy, const float *w, float *gx, int64_t N, int64_t H, int64_t W, int64_t C,
                     int64_t OH, int64_t OW, int s, const float *x, const float *mean, const float *a, const float *b,
                     double *sums) {
  bn_t bn = {mean, a, b};
  const bn_t *epi = mean ? &bn : NULL;
  if (s == 1) {
    float *reversed = (float *)malloc(sizeof(float) * 9 * C);
    if (!reversed) return 1;
    for (int k = 0; k < 9; k++) memcpy(reversed + k * C, w + (8 - k) * C, sizeof(float) * C);
    int err = conv(gy, NULL, reversed, gx, N, OH, OW, C, H, W, 1, x, epi, sums);
    free(reversed);
    return err;
  }
  scratch_t sc;
  if (scratch_get(&sc, OW, C, 0, epi ? 2 : 0)) {
    scratch_free(&sc);
    return 1;
  }
  const float *zero = sc.zero;
#pragma omp parallel num_threads(sc.nt)
  {
    THREAD_ROWS(N * H)
    for (int64_t row = first; row < last; row++) {
      int64_t n = row / H, ih = row % H;
      /* up to two (gy row, kh) pairs; a missing one reads the zero row */
      const float *ra, *rb;
      int ka, kb;
      if (ih % 2 == 0) {
        ra = gy + (n * OH + ih / 2) * OW * C, ka = 1;
        rb = zero, kb = 1;
      } else {
        int64_t o0 = (ih + 1) / 2, o2 = (ih - 1) / 2; /* kh = 0 and kh = 2 */
        ra = o0 < OH ? gy + (n * OH + o0) * OW * C : zero, ka = 0;
        rb = gy + (n * OH + o2) * OW * C, kb = 2;
      }
      float *o = gx + row * W * C;
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
      if (epi) sums_row(&sc, t, gx + row * W * C, x + row * W * C, W, C, epi);
    }
  }
  if (epi) sums_total(&sc, C, sums);
  scratch_free(&sc);
  return 0;
}

#define FLUSH_TERMS 128 /* rows narrower than this are grouped to about this many products per float partial sum */

/* dL/dw[k][c] = sum over n, oh, ow of gy[n,oh,ow,c] * in[n, oh*s+kh-1, ow*s+kw-1, c]; per-thread double totals;
   in = x or (mean, a, b given) its batch norm + ReLU */
int dw3x3_grad_weight(const float *gy, const float *x, const float *mean, const float *a, const float *b,
                      double *gw, int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW, int s) {
  bn_t bn = {mean, a, b};
  scratch_t sc;
  if (scratch_get(&sc, W, C, mean != NULL, 9)) {
    scratch_free(&sc);
    return 1;
  }
#pragma omp parallel num_threads(sc.nt)
  {
    THREAD_ROWS(N * OH)
    float *f = sc.f + (size_t)t * 9 * C; /* the current block of rows, in float */
    int64_t flush_rows = OW >= FLUSH_TERMS || OW < 1 ? 1 : FLUSH_TERMS / OW; /* one row at least */
    rows_t in = rows_of(x, mean ? &bn : NULL, sc.zero, sc.ring ? sc.ring + (size_t)t * 3 * W * C : NULL, H, W, C);
    for (int64_t row = first; row < last; row++) {
      int64_t n = row / OH, oh = row % OH;
      const float *r[3];
      for (int kh = 0; kh < 3; kh++) r[kh] = row_at(&in, n, oh * s + kh - 1);
      const float *g = gy + row * OW * C;
      /* columns outer, channels inner: the maps are read in memory order, into f[9][C] (L1 or L2). A channel-outer
         loop with the 9 sums in registers strides by C floats down a row, which at C >= 512 keeps landing in the
         same few L1 sets: 1.5x slower over MobileNet's layers (BENCHMARKS.md, session 11). */
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
      if ((row - first + 1) % flush_rows == 0 || row + 1 == last) sums_flush(&sc, t, C);
    }
  }
  sums_total(&sc, C, gw);
  scratch_free(&sc);
  return 0;
}
