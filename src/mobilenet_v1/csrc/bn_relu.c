/* Batch norm with batch statistics, fused with ReLU, for training on x86 CPUs (AVX2 + FMA).

   Maps are float32 or bfloat16 (bf16 != 0; computed in float32), channels-last, viewed as [M, C] rows
   (M = N*H*W, C % 8 == 0). PyTorch runs
   batch_norm + relu_ as separate passes over memory (forward: statistics, normalise, ReLU; backward: ReLU
   mask, two batch-norm passes); these do two passes each way. The backward pass re-derives the ReLU mask
   from x and the forward scale/shift instead of reading the output, and maps larger than the caches are
   written with streaming stores. Built and loaded by mobilenet_v1/kernels/build.py; threads are OpenMP's, the
   same libgomp instance PyTorch uses. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "these kernels need AVX2 and FMA"
#endif

#define BLOCK_ROWS 64 /* rows summed in float before they join the per-thread double totals */

/* 8 values at element i of a float32 or bfloat16 array, as float32 */
static inline __m256 load8(const void *p, int64_t i, int bf16) {
  if (!bf16) return _mm256_loadu_ps((const float *)p + i);
  __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* store 8 float32 values at element i, as float32 or as bfloat16 (round to nearest even, NaN kept) */
static inline void store8(void *p, int64_t i, __m256 v, int bf16, int stream) {
  if (!bf16) {
    if (stream)
      _mm256_stream_ps((float *)p + i, v);
    else
      _mm256_storeu_ps((float *)p + i, v);
    return;
  }
  __m256i b = _mm256_castps_si256(v);
  __m256i odd = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF))), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)); /* all <= 0xFFFF */
  if (stream)
    _mm_stream_si128((__m128i *)((uint16_t *)p + i), h);
  else
    _mm_storeu_si128((__m128i *)((uint16_t *)p + i), h);
}

/* The normalised value before ReLU, (x - mean)*a + b, from d = x - mean: forward and backward compute it with the
   same instruction, so the backward's ReLU mask is exactly the forward's. */
static inline __m256 pre_relu(__m256 d, const float *a, const float *b, int64_t c) {
  return _mm256_fmadd_ps(d, _mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c));
}

/* g where pre_relu > 0, else 0 */
static inline __m256 relu_masked(__m256 pre, __m256 g) {
  return _mm256_and_ps(_mm256_cmp_ps(pre, _mm256_setzero_ps(), _CMP_GT_OQ), g);
}

/* dL/dx of the batch norm + ReLU from d = x - mean and g = dL/d(output): m*g*p + d*q + r (one definition, so that
   bn_relu_grad_apply and the depthwise kernels' bn_relu_grad_row give the same values) */
static inline __m256 grad_value(__m256 d, __m256 g, const float *a, const float *b, const float *p, const float *q,
                                const float *r, int64_t c) {
  __m256 gm = relu_masked(pre_relu(d, a, b, c), g);
  return _mm256_fmadd_ps(gm, _mm256_loadu_ps(p + c), _mm256_fmadd_ps(d, _mm256_loadu_ps(q + c), _mm256_loadu_ps(r + c)));
}

/* Per-channel sums over all rows, in double, of x - k (k: a per-channel shift, against cancellation).
   mode 0 (statistics): s1 += x - k, s2 += (x - k)^2. mode 1 (gradient, k = the batch mean): with the ReLU mask
   m = ((x - k)*a + b > 0), s1 += m*g, s2 += m*g*(x - k). */
static int channel_sums(const void *x, const void *g, const float *k, const float *a, const float *b, int64_t M,
                        int64_t C, double *s1, double *s2, int mode, int bf16) {
  int nt = omp_get_max_threads();
  double *part = (double *)calloc((size_t)nt * 2 * C, sizeof(double));
  float *blocks = (float *)aligned_alloc(32, sizeof(float) * 2 * C * nt); /* C % 8 == 0: a multiple of 32 bytes */
  if (!part || !blocks) {
    free(part);
    free(blocks);
    return 1;
  }
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    double *p1 = part + (size_t)t * 2 * C, *p2 = p1 + C;
    float *a1 = blocks + (size_t)t * 2 * C, *a2 = a1 + C;
    int64_t nblocks = (M + BLOCK_ROWS - 1) / BLOCK_ROWS;
    for (int64_t blk = nblocks * t / T; blk < nblocks * (t + 1) / T; blk++) {
      memset(a1, 0, sizeof(float) * 2 * C);
      int64_t end = (blk + 1) * BLOCK_ROWS < M ? (blk + 1) * BLOCK_ROWS : M;
      for (int64_t r = blk * BLOCK_ROWS; r < end; r++) {
        for (int64_t c = 0; c < C; c += 8) {
          __m256 d = _mm256_sub_ps(load8(x, r * C + c, bf16), _mm256_loadu_ps(k + c)), u, v;
          if (mode == 0) {
            u = d;
            v = _mm256_mul_ps(d, d);
          } else {
            u = relu_masked(pre_relu(d, a, b, c), load8(g, r * C + c, bf16));
            v = _mm256_mul_ps(u, d);
          }
          _mm256_store_ps(a1 + c, _mm256_add_ps(_mm256_load_ps(a1 + c), u));
          _mm256_store_ps(a2 + c, _mm256_add_ps(_mm256_load_ps(a2 + c), v));
        }
      }
      for (int64_t c = 0; c < C; c++) {
        p1[c] += a1[c];
        p2[c] += a2[c];
      }
    }
  }
  for (int64_t c = 0; c < C; c++) s1[c] = s2[c] = 0.0;
  for (int t = 0; t < nt; t++) /* fixed order: results do not depend on timing */
    for (int64_t c = 0; c < C; c++) {
      s1[c] += part[(size_t)t * 2 * C + c];
      s2[c] += part[(size_t)t * 2 * C + C + c];
    }
  free(part);
  free(blocks);
  return 0;
}

/* One row of n pixels for the depthwise kernels (depthwise.c), which read a block's batch norm + ReLU in place of
   its output map: out = max((x - mean)*a + b, 0), float32, the values bn_relu_apply writes. */
void bn_relu_row(const float *x, float *out, int64_t n, int64_t C, const float *mean, const float *a, const float *b) {
  for (int64_t i = 0; i < n * C; i += C)
    for (int64_t c = 0; c < C; c += 8) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i + c), _mm256_loadu_ps(mean + c));
      _mm256_storeu_ps(out + i + c, _mm256_max_ps(_mm256_setzero_ps(), pre_relu(d, a, b, c)));
    }
}

/* ... and the gradient sums of one row, in float: s1[c] += m*g, s2[c] += m*g*(x - mean) (see channel_sums) */
void bn_relu_row_grad_sums(const float *g, const float *x, int64_t n, int64_t C, const float *mean, const float *a,
                           const float *b, float *s1, float *s2) {
  for (int64_t i = 0; i < n * C; i += C)
    for (int64_t c = 0; c < C; c += 8) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i + c), _mm256_loadu_ps(mean + c));
      __m256 u = relu_masked(pre_relu(d, a, b, c), _mm256_loadu_ps(g + i + c));
      _mm256_storeu_ps(s1 + c, _mm256_add_ps(_mm256_loadu_ps(s1 + c), u));
      _mm256_storeu_ps(s2 + c, _mm256_fmadd_ps(u, d, _mm256_loadu_ps(s2 + c)));
    }
}

/* ... the statistics of one row, in float: s1[c] += x - k, s2[c] += (x - k)^2 (see channel_sums) */
void bn_stats_row(const float *x, int64_t n, int64_t C, const float *k, float *s1, float *s2) {
  for (int64_t i = 0; i < n * C; i += C)
    for (int64_t c = 0; c < C; c += 8) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i + c), _mm256_loadu_ps(k + c));
      _mm256_storeu_ps(s1 + c, _mm256_add_ps(_mm256_loadu_ps(s1 + c), d));
      _mm256_storeu_ps(s2 + c, _mm256_add_ps(_mm256_loadu_ps(s2 + c), _mm256_mul_ps(d, d)));
    }
}

/* ... and one row of dL/dy of a batch norm + ReLU of y from g = dL/d(output): out = m*g*p + (y - mean)*q + r, the
   values bn_relu_grad_apply writes */
void bn_relu_grad_row(const float *g, const float *y, float *out, int64_t n, int64_t C, const float *mean,
                      const float *a, const float *b, const float *p, const float *q, const float *r) {
  for (int64_t i = 0; i < n * C; i += C)
    for (int64_t c = 0; c < C; c += 8) {
      __m256 d = _mm256_sub_ps(_mm256_loadu_ps(y + i + c), _mm256_loadu_ps(mean + c));
      _mm256_storeu_ps(out + i + c, grad_value(d, _mm256_loadu_ps(g + i + c), a, b, p, q, r, c));
    }
}

/* The exported functions return 0, or 1 when memory for their scratch buffers could not be had. */

/* torch.lerp's float formula: start + w*(end - start), or end - (end - start)*(1 - w) for w >= 0.5 */
static float lerp(float start, float end, float w) {
  return w < 0.5f ? start + w * (end - start) : end - (end - start) * (1.0f - w);
}

/* Batch statistics from the sums s1, s2 of x - k and (x - k)^2 over m values per channel (bn_relu_stats), as
   F.batch_norm takes them in training: mean, invstd = 1/sqrt(var + eps) (biased var, double), the running
   estimates moved by `momentum` towards mean and the unbiased var (in place, float32), and the float32 mean32 and
   scale a = weight*invstd of the kernels. Per channel: a loop here, not a dozen tensor operations. */
int bn_finish_stats(const double *s1, const double *s2, const float *k, int64_t C, double m, const float *weight,
                    float *running_mean, float *running_var, double momentum, double eps, double *mean,
                    double *invstd, float *mean32, float *a) {
  double unbias = m / (m - 1 > 1 ? m - 1 : 1);
  for (int64_t c = 0; c < C; c++) {
    double d = s1[c] / m, var = s2[c] / m - d * d;
    if (var < 0) var = 0;
    mean[c] = (double)k[c] + d;
    invstd[c] = 1.0 / sqrt(var + eps);
    running_mean[c] = lerp(running_mean[c], (float)mean[c], (float)momentum);
    running_var[c] = lerp(running_var[c], (float)(var * unbias), (float)momentum);
    mean32[c] = (float)mean[c];
    a[c] = (float)((double)weight[c] * invstd[c]);
  }
  return 0;
}

/* The backward's per-channel coefficients, from the gradient sums sg = sum of m*g, sgx = sum of m*g*(x - mean32)
   (bn_relu_grad_sums): dL/dx = p*m*g + q*(x - mean32) + r (bn_relu_grad_apply), dL/dweight = sum of g*xhat
   (the float32 mean's rounding taken out), dL/dbias = sg. With xhat = (x - mean)*invstd,
   dL/dx = weight*invstd*(g - sum(g)/m - xhat*sum(g*xhat)/m). */
int bn_grad_coefficients(const double *sg, const double *sgx, const double *mean, const float *mean32,
                         const double *invstd, const float *weight, int64_t C, double m, float *p, float *q, float *r,
                         float *grad_weight, float *grad_bias) {
  for (int64_t c = 0; c < C; c++) {
    double gw = invstd[c] * (sgx[c] + ((double)mean32[c] - mean[c]) * sg[c]);
    double pc = (double)weight[c] * invstd[c];
    p[c] = (float)pc;
    q[c] = (float)(-pc * invstd[c] * gw / m);
    r[c] = (float)(-pc * sg[c] / m);
    grad_weight[c] = (float)gw;
    grad_bias[c] = (float)sg[c];
  }
  return 0;
}

/* sum[c] = sum of (x - k[c]), sumsq[c] = sum of (x - k[c])^2; k: a shift, the first row in float32 */
int bn_relu_stats(const void *x, int64_t M, int64_t C, const float *k, double *sum, double *sumsq, int bf16) {
  return channel_sums(x, NULL, k, NULL, NULL, M, C, sum, sumsq, 0, bf16);
}

/* y = max((x - mean)*a + b, 0) */
int bn_relu_apply(const void *x, void *y, int64_t M, int64_t C, const float *mean, const float *a, const float *b,
                  int stream, int bf16) {
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
  for (int64_t r = 0; r < M; r++)
    for (int64_t c = 0; c < C; c += 8) {
      __m256 d = _mm256_sub_ps(load8(x, r * C + c, bf16), _mm256_loadu_ps(mean + c));
      store8(y, r * C + c, _mm256_max_ps(_mm256_setzero_ps(), pre_relu(d, a, b, c)), bf16, stream); /* NaN stays NaN, as in relu */
    }
    _mm_sfence(); /* each thread orders its own streaming stores */
  }
  return 0;
}

/* with the forward's mask m = ((x - mean)*a + b > 0): sg[c] = sum of m*g, sgx[c] = sum of m*g*(x - mean) */
int bn_relu_grad_sums(const void *g, const void *x, int64_t M, int64_t C, const float *mean, const float *a,
                      const float *b, double *sg, double *sgx, int bf16) {
  return channel_sums(x, g, mean, a, b, M, C, sg, sgx, 1, bf16);
}

/* gx = m*g*p + (x - mean)*q + r */
int bn_relu_grad_apply(const void *g, const void *x, void *gx, int64_t M, int64_t C, const float *mean,
                       const float *a, const float *b, const float *p, const float *q, const float *r, int stream,
                       int bf16) {
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
  for (int64_t row = 0; row < M; row++)
    for (int64_t c = 0; c < C; c += 8) {
      __m256 d = _mm256_sub_ps(load8(x, row * C + c, bf16), _mm256_loadu_ps(mean + c));
      store8(gx, row * C + c, grad_value(d, load8(g, row * C + c, bf16), a, b, p, q, r, c), bf16, stream);
    }
    _mm_sfence(); /* each thread orders its own streaming stores */
  }
  return 0;
}
