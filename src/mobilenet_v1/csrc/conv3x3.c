/* The weight gradient of a dense 3x3 convolution with few input channels (the stem: 3 channels, or 1 for grayscale;
   padding 1, stride 1 or 2) for training on x86 CPUs (AVX2 + FMA): channels-last float32 maps, C_out % 8 == 0.

   dL/dw is 9 * C_in * C_out sums over every output pixel. oneDNN's backward-weights convolution runs this shape at
   ~16 GFLOP/s on a 2-core AVX2 CPU; here each thread walks its output rows, and for every tap and input
   channel sums x * dL/dy over the row in C_out/8 vector registers (the row of dL/dy stays in L1), then adds the row's
   float sums to its double totals. Built and loaded by mobilenet_v1/kernels/build.py with the other kernels. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "these kernels need AVX2 and FMA"
#endif

/* p[0 .. 8*CH) += sum over i < n of x[i*step] * g[i*CO .. + 8*CH): the row's sum in 2*CH vector registers, even and
   odd pixels apart (independent chains hide the FMA latency); CH is a constant at each call, so the loops unroll and
   the sums stay in registers */
static inline __attribute__((always_inline)) void row_sums(const float *x, int64_t step, const float *g, int64_t CO,
                                                           int64_t n, double *p, const int CH) {
  __m256 a0[4], a1[4];
  for (int j = 0; j < CH; j++) a0[j] = a1[j] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 1 < n; i += 2, x += 2 * step, g += 2 * CO) {
    __m256 x0 = _mm256_broadcast_ss(x), x1 = _mm256_broadcast_ss(x + step);
    for (int j = 0; j < CH; j++) {
      a0[j] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(g + 8 * j), a0[j]);
      a1[j] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(g + CO + 8 * j), a1[j]);
    }
  }
  if (i < n) {
    __m256 x0 = _mm256_broadcast_ss(x);
    for (int j = 0; j < CH; j++) a0[j] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(g + 8 * j), a0[j]);
  }
  for (int j = 0; j < CH; j++) {
    __m256 a = _mm256_add_ps(a0[j], a1[j]);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1));
    _mm256_storeu_pd(p + 8 * j, _mm256_add_pd(_mm256_loadu_pd(p + 8 * j), lo));
    _mm256_storeu_pd(p + 8 * j + 4, _mm256_add_pd(_mm256_loadu_pd(p + 8 * j + 4), hi));
  }
}

/* gw [9][CI][CO] (double) = sum over n, oh, ow of gy[n,oh,ow,co] * x[n, oh*s+kh-1, ow*s+kw-1, ci] (zero padding);
   returns 0, or 1 when there is no memory for the per-thread totals */
int conv3x3_grad_weight(const float *gy, const float *x, double *gw, int64_t N, int64_t H, int64_t W, int64_t CI,
                        int64_t CO, int64_t OH, int64_t OW, int s) {
  int nt = omp_get_max_threads();
  int64_t K = 9 * CI * CO;
  double *part = (double *)calloc((size_t)nt * K, sizeof(double));
  if (!part) return 1;
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    int64_t rows = N * OH, first = rows * t / T, last = rows * (t + 1) / T;
    double *p = part + (size_t)t * K;
    for (int64_t row = first; row < last; row++) {
      int64_t n = row / OH, oh = row % OH;
      const float *g = gy + row * OW * CO;
      for (int kh = 0; kh < 3; kh++) {
        int64_t ih = oh * s + kh - 1;
        if (ih < 0 || ih >= H) continue;
        const float *xr = x + (n * H + ih) * W * CI;
        for (int kw = 0; kw < 3; kw++) {
          /* the columns whose input iw = ow*s + kw - 1 lies inside the row */
          int64_t lo = kw == 0 ? 1 : 0, hi = OW;
          while (hi > lo && (hi - 1) * s + kw - 1 >= W) hi--;
          for (int64_t ci = 0; ci < CI; ci++) {
            const float *xc = xr + (lo * s + kw - 1) * CI + ci;
            double *pt = p + ((kh * 3 + kw) * CI + ci) * CO;
            const float *gl = g + lo * CO;
            int64_t c0 = 0;
            for (; c0 + 32 <= CO; c0 += 32) row_sums(xc, s * CI, gl + c0, CO, hi - lo, pt + c0, 4);
            for (; c0 < CO; c0 += 8) row_sums(xc, s * CI, gl + c0, CO, hi - lo, pt + c0, 1);
          }
        }
      }
    }
  }
  for (int64_t i = 0; i < K; i++) gw[i] = 0.0;
  for (int t = 0; t < nt; t++) /* fixed order: results do not depend on timing */
    for (int64_t i = 0; i < K; i++) gw[i] += part[(size_t)t * K + i];
  free(part);
  return 0;
}
