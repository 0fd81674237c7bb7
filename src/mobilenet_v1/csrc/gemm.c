/* The 1x1 convolutions' matrix products on channels-last maps, float32, row-major (built by mobilenet_v1/kernels/build.py
   with -O3 -march=native -fopenmp: AVX2 + FMA):

   - gemm_at_b, the weight gradient: C[M, N] = A^T B, for A = dL/dy viewed as [K, M] (K = pixels, M = output
     channels) and B = x viewed as [K, N] (N = input channels). MKL's sgemm runs this product at ~140 GFLOP/s on a
     2-core AVX2 CPU (AMD Zen 3), and oneDNN's backward-weights convolution at ~120-145; this blocked product (BLIS's
     loop order: B packed in KC x NC blocks, A in KC x MC blocks, a 6 x 16 register tile of FMAs) at ~155-170
     there. Where K is long against the channels (the large maps), the threads split K and sum
     their partial products, rather than packing the same rows twice. Between its tiles each thread prefetches the
     next KC block's rows of A and B into L2, so that packing them does not wait on memory: on the large maps,
     whose rows come from DRAM, 3-20% faster alone.
   - gemm_a_w, the forward (y = x W^T) and the input gradient (dL/dx = dL/dy W): C[M, N] = A[M, K] times the weight
     W, M = pixels. The weight is packed once into KC x 16 panels; each thread takes whole 6-row tiles of the pixels
     and reads A's rows in place, where BLIS would pack them: a row of a channels-last map is contiguous already.
     It prefetches the next block of rows as gemm_at_b does (the large maps' input gradients 5-25% faster alone).
     Measured 3-5% faster than oneDNN's 1x1 convolution and its input gradient over MobileNet's layers. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MR 6    /* rows of C per register tile */
#define NR 16   /* columns of C per register tile: two 8-float vectors */
#define KC 192  /* K per packed block */
#define MC 72   /* rows of C per packed A block (12 tiles) */
#define NC 512  /* columns of C per packed B block */
#ifndef PREFETCH
#define PREFETCH 1 /* each product fetches its next block's rows of A (and B) while it computes (-DPREFETCH=0: not) */
#endif
#define KSPLIT_RATIO 4 /* the threads split K when K >= this x max(M, N), */
#define KSPLIT_MAX_THREADS 8 /* there are at most this many (one partial product each), */
                             /* and each gets at least one KC block of K */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* A batch norm + ReLU read in place of a map, with csrc/bn_relu.c's arithmetic: z = max(fma(x - mean, a, b), 0) per
   channel; NULL mean: none */
typedef struct {
  const float *mean, *a, *b;
} bn_relu;

static inline __m256 bn_relu8(__m256 x, const bn_relu *bn, int64_t c) {
  __m256 v = _mm256_fmadd_ps(_mm256_sub_ps(x, _mm256_loadu_ps(bn->mean + c)), _mm256_loadu_ps(bn->a + c),
                             _mm256_loadu_ps(bn->b + c));
  return _mm256_max_ps(_mm256_setzero_ps(), v); /* NaN stays NaN, as in relu */
}

static inline float bn_relu1(float x, const bn_relu *bn, int64_t c) {
  float v = fmaf(x - bn->mean[c], bn->a[c], bn->b[c]);
  return v <= 0.f ? 0.f : v;
}

/* A[0:kc, m0:m0+mc] as mc/MR panels [kc][MR], zero past column m_end (a partial tile's padding) */
static void pack_a(const float *A, int64_t lda, int64_t kc, int64_t m0, int64_t mc, int64_t m_end, float *Ap) {
  for (int64_t i = 0; i < mc; i += MR) {
    int64_t mr = min64(m_end - (m0 + i), MR);
    const float *a = A + m0 + i;
    float *p = Ap + i * kc;
    if (mr == MR) {
      for (int64_t k = 0; k < kc; k++) memcpy(p + k * MR, a + k * lda, MR * sizeof(float));
    } else {
      for (int64_t k = 0; k < kc; k++)
        for (int r = 0; r < MR; r++) p[k * MR + r] = r < mr ? a[k * lda + r] : 0.f;
    }
  }
}

/* B[0:kc, n0:n0+nc] as nc/NR panels [kc][NR], zero past column n_end; through bn (per column) where bn->mean */
static void pack_b(const float *B, int64_t ldb, int64_t kc, int64_t n0, int64_t nc, int64_t n_end, const bn_relu *bn,
                   float *Bp) {
  for (int64_t j = 0; j < nc; j += NR) {
    int64_t nr = min64(n_end - (n0 + j), NR), c0 = n0 + j;
    const float *b = B + c0;
    float *p = Bp + j * kc;
    if (nr == NR && bn->mean) {
      for (int64_t k = 0; k < kc; k++) {
        _mm256_store_ps(p + k * NR, bn_relu8(_mm256_loadu_ps(b + k * ldb), bn, c0));
        _mm256_store_ps(p + k * NR + 8, bn_relu8(_mm256_loadu_ps(b + k * ldb + 8), bn, c0 + 8));
      }
    } else if (nr == NR) {
      for (int64_t k = 0; k < kc; k++) {
        _mm256_store_ps(p + k * NR, _mm256_loadu_ps(b + k * ldb));
        _mm256_store_ps(p + k * NR + 8, _mm256_loadu_ps(b + k * ldb + 8));
      }
    } else {
      for (int64_t k = 0; k < kc; k++)
        for (int c = 0; c < NR; c++)
          p[k * NR + c] = c >= nr ? 0.f : bn->mean ? bn_relu1(b[k * ldb + c], bn, c0 + c) : b[k * ldb + c];
    }
  }
}

/* The tile's sums acc (rows past mr, columns past nr dropped) into the mr x nr tile at c (row stride ldc): stored,
   or added to it unless first. Inlined into each tile function with loops of constant length for a whole tile, so
   that the accumulators stay in registers there (with a loop to mr, GCC kept them in memory, a store after each
   FMA). */
static inline __attribute__((always_inline)) void store_tile(__m256 acc[MR][2], float *c, int64_t ldc, int mr, int nr,
                                                             int first) {
  if (mr == MR && nr == NR) {
    for (int r = 0; r < MR; r++) {
      float *o = c + r * ldc;
      if (!first) {
        acc[r][0] = _mm256_add_ps(_mm256_loadu_ps(o), acc[r][0]);
        acc[r][1] = _mm256_add_ps(_mm256_loadu_ps(o + 8), acc[r][1]);
      }
      _mm256_storeu_ps(o, acc[r][0]);
      _mm256_storeu_ps(o + 8, acc[r][1]);
    }
    return;
  }
  float t[MR][NR];
  for (int r = 0; r < MR; r++) {
    _mm256_storeu_ps(t[r], acc[r][0]);
    _mm256_storeu_ps(t[r] + 8, acc[r][1]);
  }
  for (int r = 0; r < mr; r++)
    for (int j = 0; j < nr; j++) c[r * ldc + j] = first ? t[r][j] : c[r * ldc + j] + t[r][j];
}

/* the mr x nr tile at c (row stride ldc) = (first ? 0 : itself) + a panel^T b panel over kc */
static void tile(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr, int first) {
  __m256 acc[MR][2];
  for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; k++, a += MR, b += NR) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    for (int r = 0; r < MR; r++) {
      __m256 x = _mm256_broadcast_ss(a + r);
      acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  store_tile(acc, c, ldc, mr, nr, first);
}

/* Prefetches into L2 of the rows [k0, k1) of A[:, m0:m1] and B[:, n0:n1] (the next KC block), a few cache lines at a
   time between the current block's tiles, so that its packing does not wait on memory */
typedef struct {
  const char *a, *b;
  int64_t lda, ldb, la, lb; /* row strides in bytes; lines per row */
  int64_t row, line, end;   /* the next line to fetch: row, line in it (A's first, then B's); rows end here */
} prefetch_t;

static void prefetch_some(prefetch_t *p, int n) {
  for (; n > 0 && p->row < p->end; n--) {
    const char *addr = p->line < p->la ? p->a + p->row * p->lda + p->line * 64
                                       : p->b + p->row * p->ldb + (p->line - p->la) * 64;
    _mm_prefetch(addr, _MM_HINT_T1);
    if (++p->line == p->la + p->lb) p->line = 0, p->row++;
  }
}

/* C[m0:m1, n0:n1] (row stride ldc) = A[0:K, m0:m1]^T B[0:K, n0:n1], with this thread's packing buffers */
static void block(const float *A, int64_t lda, const float *B, int64_t ldb, const bn_relu *bn, float *C, int64_t ldc,
                  int64_t K, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float *Ap, float *Bp) {
  if (K == 0) {
    for (int64_t i = m0; i < m1; i++) memset(C + i * ldc + n0, 0, (size_t)(n1 - n0) * sizeof(float));
    return;
  }
  for (int64_t jc = n0; jc < n1; jc += NC) {
    int64_t nc = min64(n1 - jc, NC);
    int64_t la = ((m1 - m0) * 4 + 63) / 64, lb = (nc * 4 + 63) / 64;
    int64_t tiles = ((m1 - m0 + MR - 1) / MR) * ((nc + NR - 1) / NR);
    for (int64_t pc = 0; pc < K; pc += KC) {
      int64_t kc = min64(K - pc, KC);
      int64_t next = min64(K - pc - kc, KC); /* the next block's rows, fetched while this one computes */
      prefetch_t pf = {(const char *)(A + m0), (const char *)(B + jc), lda * 4, ldb * 4, la, lb,
                       pc + kc, 0, pc + kc + next};
      int per_tile = PREFETCH ? (int)((next * (la + lb) + tiles - 1) / tiles) : 0;
      pack_b(B + pc * ldb, ldb, kc, jc, nc, n1, bn, Bp);
      for (int64_t ic = m0; ic < m1; ic += MC) {
        int64_t mc = min64(m1 - ic, MC);
        pack_a(A + pc * lda, lda, kc, ic, mc, m1, Ap);
        for (int64_t j = 0; j < nc; j += NR) {
          int nr = (int)min64(n1 - (jc + j), NR);
          for (int64_t i = 0; i < mc; i += MR) {
            int mr = (int)min64(m1 - (ic + i), MR);
            tile(kc, Ap + i * kc, Bp + j * kc, C + (ic + i) * ldc + jc + j, ldc, mr, nr, pc == 0);
            prefetch_some(&pf, per_tile);
          }
        }
      }
    }
  }
}

/* C = A^T B as above, B read through a batch norm + ReLU (bn_mean, bn_a, bn_b, per column of B) where bn_mean is not
   NULL; returns 0, or 1 when the packing buffers cannot be had (C is then incomplete) */
int gemm_at_b(const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t K, int64_t M, int64_t N,
              const float *bn_mean, const float *bn_a, const float *bn_b) {
  if (M == 0 || N == 0) return 0;
  bn_relu bn = {bn_mean, bn_a, bn_b};
  int nt = omp_get_max_threads();
  int split_k = nt > 1 && nt <= KSPLIT_MAX_THREADS && K >= KSPLIT_RATIO * (M > N ? M : N) && K >= (int64_t)nt * KC;
  float *parts = NULL; /* threads 1.. nt-1's partial products when K is split; without the memory, no split */
  if (split_k && !(parts = malloc((size_t)(nt - 1) * M * N * sizeof(float)))) split_k = 0;
  int fail = 0;
#pragma omp parallel num_threads(nt) reduction(| : fail)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    float *Ap = aligned_alloc(64, (size_t)KC * MC * sizeof(float));
    float *Bp = aligned_alloc(64, (size_t)KC * NC * sizeof(float));
    if (!Ap || !Bp) {
      fail = 1;
    } else if (split_k) {
      int64_t k0 = K * t / T, k1 = K * (t + 1) / T;
      float *out = t == 0 ? C : parts + (size_t)(t - 1) * M * N;
      block(A + k0 * lda, lda, B + k0 * ldb, ldb, &bn, out, N, k1 - k0, 0, M, 0, N, Ap, Bp);
    } else if (M >= N) { /* the rows of C, in whole tiles */
      int64_t tiles = (M + MR - 1) / MR, m0 = min64(tiles * t / T * MR, M), m1 = min64(tiles * (t + 1) / T * MR, M);
      if (m0 < m1) block(A, lda, B, ldb, &bn, C, N, K, m0, m1, 0, N, Ap, Bp);
    } else {
      int64_t tiles = (N + NR - 1) / NR, n0 = min64(tiles * t / T * NR, N), n1 = min64(tiles * (t + 1) / T * NR, N);
      if (n0 < n1) block(A, lda, B, ldb, &bn, C, N, K, 0, M, n0, n1, Ap, Bp);
    }
    free(Ap);
    free(Bp);
    if (split_k) {
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t i = 0; i < M * N; i++)
        for (int u = 1; u < T; u++) C[i] += parts[(size_t)(u - 1) * M * N + i];
    }
  }
  free(parts);
  return fail;
}

/* The mr x nr tile at c (row stride ldc) = (first ? 0 : itself) + the rows of A at a (row stride lda) [0:kc] times a
   packed panel b [kc][NR]; rows past mr re-read row 0 (their sums are dropped). Inlined where it is called: given a
   second caller (an experiment with one-pass gradients), GCC kept this function's accumulators in memory, as
   store_tile describes, and the training step ran 30% slower. */
static inline __attribute__((always_inline)) void tile_rows(int64_t kc, const float *a, int64_t lda, const float *b,
                                                             float *c, int64_t ldc, int mr, int nr, int first) {
  const float *a0 = a, *a1 = a + (mr > 1) * lda, *a2 = a + (mr > 2) * 2 * lda, *a3 = a + (mr > 3) * 3 * lda,
              *a4 = a + (mr > 4) * 4 * lda, *a5 = a + (mr > 5) * 5 * lda;
  __m256 acc[MR][2];
  for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
#define ROW(r, p)                                \
  x = _mm256_broadcast_ss(p + k);                \
  acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]); \
  acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
  for (int64_t k = 0; k < kc; k++, b += NR) {
    __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), x;
    ROW(0, a0) ROW(1, a1) ROW(2, a2) ROW(3, a3) ROW(4, a4) ROW(5, a5)
  }
#undef ROW
  store_tile(acc, c, ldc, mr, nr, first);
}

/* dst[k][c] = src[c][k] for an 8 x 8 block (row strides lds, ldd) */
static inline void transpose8(const float *src, int64_t lds, float *dst, int64_t ldd) {
  __m256 r[8], t[8], u[8];
  for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; i++) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
  }
}

#define KC_ROWS 512 /* K per packed weight panel in gemm_a_w (a 6-row tile's A: 12 KB, in L1) */
#define MC_ROWS 96  /* pixels per block in gemm_a_w: its rows of A (<= 192 KB) stay in L2 across the weight's panels */

/* Adds the finished mr x nr tile at c (row stride ldc)'s column sums of (c - k) and (c - k)^2 to s1, s2 */
static void tile_sums(const float *c, int64_t ldc, int mr, int nr, const float *k, double *s1, double *s2) {
  if (nr < NR) {
    for (int j = 0; j < nr; j++)
      for (int r = 0; r < mr; r++) {
        double d = (double)c[r * ldc + j] - (double)k[j];
        s1[j] += d;
        s2[j] += d * d;
      }
    return;
  }
  for (int h = 0; h < NR; h += 8) {
    __m256 kk = _mm256_loadu_ps(k + h), a = _mm256_setzero_ps(), q = _mm256_setzero_ps();
    for (int r = 0; r < mr; r++) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(c + r * ldc + h), kk);
      a = _mm256_add_ps(a, d);
      q = _mm256_fmadd_ps(d, d, q);
    }
    __m256d a0 = _mm256_cvtps_pd(_mm256_castps256_ps128(a)), a1 = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
    __m256d q0 = _mm256_cvtps_pd(_mm256_castps256_ps128(q)), q1 = _mm256_cvtps_pd(_mm256_extractf128_ps(q, 1));
    _mm256_storeu_pd(s1 + h, _mm256_add_pd(_mm256_loadu_pd(s1 + h), a0));
    _mm256_storeu_pd(s1 + h + 4, _mm256_add_pd(_mm256_loadu_pd(s1 + h + 4), a1));
    _mm256_storeu_pd(s2 + h, _mm256_add_pd(_mm256_loadu_pd(s2 + h), q0));
    _mm256_storeu_pd(s2 + h + 4, _mm256_add_pd(_mm256_loadu_pd(s2 + h + 4), q1));
  }
}

/* C[M, N] (row stride N) = A[M, K] (row stride lda) times B, where B[k][n] is W[n * ldw + k] when trans_w (the
   forward: W = [C_out][C_in], K = C_in, N = C_out) or W[k * ldw + n] (the input gradient: W as stored, K = C_out,
   N = C_in). With sums (float64 [2][N]): also C's column sums of (C - shift) and (C - shift)^2, the batch norm's
   statistics (csrc/bn_relu.c's bn_relu_stats), with shift [N] (written here) C's first row, against cancellation
   (K = 0: C, the shift and the sums are zeros).
   With bn_mean: A is read through a batch norm + ReLU (bn_mean, bn_a, bn_b, per column of A), a map's that is then
   never stored. Returns 0, or 1 when the scratch memory cannot be had (C is then untouched). */
int gemm_a_w(const float *A, int64_t lda, const float *W, int64_t ldw, int trans_w, float *C, int64_t M, int64_t K,
             int64_t N, float *shift, double *sums, const float *bn_mean, const float *bn_a, const float *bn_b) {
  if (M == 0 || N == 0) return 0;
  bn_relu bn = {bn_mean, bn_a, bn_b};
  int64_t np = (N + NR - 1) / NR * NR; /* N padded to whole panels */
  int nt = omp_get_max_threads();
  float *Bp = aligned_alloc(64, ((size_t)(K > 0 ? K : 1) * np * sizeof(float) + 63) / 64 * 64);
  double *parts = sums ? calloc((size_t)nt * 2 * np, sizeof(double)) : NULL; /* each thread's column sums */
  /* with bn: each thread's block of A through it, [MC_ROWS][KC_ROWS]; then A's first row, for the shift */
  size_t a_block = (size_t)MC_ROWS * KC_ROWS;
  float *Ap = bn_mean ? malloc((nt * a_block + (size_t)K + 1) * sizeof(float)) : NULL;
  if (!Bp || (sums && !parts) || (bn_mean && !Ap)) {
    free(Bp);
    free(parts);
    free(Ap);
    return 1;
  }
  if (K == 0) memset(C, 0, (size_t)M * N * sizeof(float));
#pragma omp parallel num_threads(nt)
  {
    /* the weight, packed: block p0 (K from p0, kc long), panel n0: Bp[p0 * np + n0 * kc + k * NR + c] */
#pragma omp for collapse(2) schedule(static)
    for (int64_t p0 = 0; p0 < K; p0 += KC_ROWS)
      for (int64_t n0 = 0; n0 < np; n0 += NR) {
        int64_t kc = min64(K - p0, KC_ROWS);
        float *p = Bp + p0 * np + n0 * kc;
        if (n0 + NR <= N && !trans_w) {
          for (int64_t k = 0; k < kc; k++) {
            _mm256_storeu_ps(p + k * NR, _mm256_loadu_ps(W + (p0 + k) * ldw + n0));
            _mm256_storeu_ps(p + k * NR + 8, _mm256_loadu_ps(W + (p0 + k) * ldw + n0 + 8));
          }
        } else if (n0 + NR <= N && kc % 8 == 0) {
          for (int64_t k = 0; k < kc; k += 8)
            for (int c = 0; c < NR; c += 8) transpose8(W + (n0 + c) * ldw + p0 + k, ldw, p + k * NR + c, NR);
        } else {
          for (int64_t k = 0; k < kc; k++)
            for (int c = 0; c < NR; c++) {
              int64_t n = n0 + c;
              p[k * NR + c] = n >= N ? 0.f : trans_w ? W[n * ldw + p0 + k] : W[(p0 + k) * ldw + n];
            }
        }
      }
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    if (sums && t == 0) { /* the shift: C's first row, as the tiles will compute it */
      const float *a0 = A;
      if (bn_mean) {
        float *row = Ap + nt * a_block;
        for (int64_t k = 0; k < K; k++) row[k] = bn_relu1(A[k], &bn, k);
        a0 = row;
      }
      for (int64_t n0 = 0; n0 < N; n0 += NR) {
        if (K == 0) memset(shift + n0, 0, (size_t)min64(N - n0, NR) * sizeof(float));
        for (int64_t p0 = 0; p0 < K; p0 += KC_ROWS)
          tile_rows(min64(K - p0, KC_ROWS), a0 + p0, lda, Bp + p0 * np + n0 * min64(K - p0, KC_ROWS), shift + n0, 0,
                    1, (int)min64(N - n0, NR), p0 == 0);
      }
    }
#pragma omp barrier
    int64_t tiles = (M + MR - 1) / MR;
    int64_t m0 = min64(tiles * t / T * MR, M), m1 = min64(tiles * (t + 1) / T * MR, M);
    double *s1 = parts ? parts + (size_t)t * 2 * np : NULL, *s2 = parts ? s1 + np : NULL;
    for (int64_t ic = m0; ic < m1; ic += MC_ROWS) {
      int64_t mc = min64(m1 - ic, MC_ROWS);
      for (int64_t p0 = 0; p0 < K; p0 += KC_ROWS) {
        int64_t kc = min64(K - p0, KC_ROWS);
        int last = p0 + kc == K;
        /* the next block's rows of A (this K range), fetched while this one computes */
        int64_t next = PREFETCH ? min64(m1 - ic - mc, MC_ROWS) : 0;
        int64_t la = (kc * 4 + 63) / 64, tiles = ((N + NR - 1) / NR) * ((mc + MR - 1) / MR);
        prefetch_t pf = {(const char *)(A + p0), NULL, lda * 4, 0, la, 0, ic + mc, 0, ic + mc + next};
        int per_tile = (int)((next * la + tiles - 1) / tiles);
        const float *a = A + ic * lda + p0;
        int64_t ld = lda;
        if (bn_mean) { /* this block of A through the batch norm + ReLU, once for all the weight's panels */
          float *p = Ap + t * a_block;
          for (int64_t r = 0; r < mc; r++) {
            int64_t k = 0;
            for (; k + 8 <= kc; k += 8) _mm256_storeu_ps(p + r * kc + k, bn_relu8(_mm256_loadu_ps(a + r * lda + k), &bn, p0 + k));
            for (; k < kc; k++) p[r * kc + k] = bn_relu1(a[r * lda + k], &bn, p0 + k);
          }
          a = p, ld = kc;
        }
        for (int64_t n0 = 0; n0 < N; n0 += NR) {
          int nr = (int)min64(N - n0, NR);
          for (int64_t i = 0; i < mc; i += MR) {
            int mr = (int)min64(mc - i, MR);
            float *c = C + (ic + i) * N + n0;
            tile_rows(kc, a + i * ld, ld, Bp + p0 * np + n0 * kc, c, N, mr, nr, p0 == 0);
            if (s1 && last) tile_sums(c, N, mr, nr, shift + n0, s1 + n0, s2 + n0);
            prefetch_some(&pf, per_tile);
          }
        }
      }
    }
  }
  if (sums)
    for (int64_t n = 0; n < N; n++) {
      double a = 0, q = 0;
      for (int t = 0; t < nt; t++) a += parts[(size_t)t * 2 * np + n], q += parts[(size_t)t * 2 * np + np + n];
      sums[n] = a, sums[N + n] = q;
    }
  free(Bp);
  free(parts);
  free(Ap);
  return 0;
}
