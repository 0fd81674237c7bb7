/* A whole depthwise block of a training step in one call each way (mobilenet_v1/kernels/convolution.py's DepthwiseBlock): the
   previous block's batch norm + ReLU (bn1), the 3x3 depthwise convolution, its own batch norm + ReLU (bn2) and,
   where given, the 1x1 convolution after it. Each step is one of the kernels of bn_relu.c, depthwise.c and gemm.c,
   called in the same order as they would be one by one from Python; here the per-channel work between them (batch
   statistics, gradient coefficients, the filters' layouts) and the temporary maps of the backward are in C too.
   In the step the Python around a dozen kernel calls per block cost more than its own time measures, for the
   kernels leave the interpreter's data out of cache: one call instead measured 3% off the step at 128 px.

   The per-channel state both directions share (convolution.py allocates it; channels C of the depthwise layer):
   s64 [6][C] float64: mean1, invstd1, mean2, invstd2, then bn2's statistics sums [2][C] (depthwise output);
   s32 [14][C] float32: mean1 (float32), a1, mean2 (float32), a2, bn2's statistics shift, then taps [9][C]. */
#include <stdint.h>
#include <stdlib.h>

int bn_finish_stats(const double *s1, const double *s2, const float *k, int64_t C, double m, const float *weight,
                    float *running_mean, float *running_var, double momentum, double eps, double *mean,
                    double *invstd, float *mean32, float *a);
int bn_grad_coefficients(const double *sg, const double *sgx, const double *mean, const float *mean32,
                         const double *invstd, const float *weight, int64_t C, double m, float *p, float *q, float *r,
                         float *grad_weight, float *grad_bias);
int bn_relu_apply(const void *x, void *y, int64_t M, int64_t C, const float *mean, const float *a, const float *b,
                  int stream, int bf16);
int bn_relu_grad_sums(const void *g, const void *x, int64_t M, int64_t C, const float *mean, const float *a,
                      const float *b, double *sg, double *sgx, int bf16);
int bn_relu_grad_apply(const void *g, const void *x, void *gx, int64_t M, int64_t C, const float *mean,
                       const float *a, const float *b, const float *p, const float *q, const float *r, int stream,
                       int bf16);
int dw3x3_forward(const float *x, const float *mean, const float *a, const float *b, const float *w, float *y,
                  int64_t N, int64_t H, int64_t W, int64_t C, int64_t OH, int64_t OW, int s, float *shift,
                  double *stats);
int dw3x3_backward(const float *gy, const float *x, const float *w, float *gx, double *gw, int64_t N, int64_t H,
                   int64_t W, int64_t C, int64_t OH, int64_t OW, int s, const float *mean, const float *a,
                   const float *b, double *sums, const float *gy_y, const float *g_mean, const float *g_a,
                   const float *g_b, const float *g_p, const float *g_q, const float *g_r);
int gemm_a_w(const float *A, int64_t lda, const float *W, int64_t ldw, int trans_w, float *C, int64_t M, int64_t K,
             int64_t N, float *shift, double *sums, const float *bn_mean, const float *bn_a, const float *bn_b);
int gemm_at_b(const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t K, int64_t M, int64_t N,
              const float *bn_mean, const float *bn_a, const float *bn_b);

static int64_t out_size(int64_t size, int s) { return (size - 1) / s + 1; }

/* out = pw(relu(bn2(dw(relu(bn1(x)))))), or relu(bn2(dw(relu(bn1(x))))) where pw is NULL (C_out = C).
   x: [N, H, W, C] channels-last, with its batch statistics (x_shift [C], x_sums [2][C]: bn_relu_stats' sums);
   dw [C][9] the depthwise filters; pw [C_out][C]; y [N, OH, OW, C] receives the depthwise output (kept for the
   backward); out_shift and out_sums (not NULL) receive out's statistics (pw only); stream: out is written with
   streaming stores (no pw). Both batch norms' running statistics move as F.batch_norm moves them. Returns 0, or 1
   when a kernel had no memory for its scratch. */
int dw_block_forward(const float *x, const float *x_shift, const double *x_sums, const float *dw, int64_t N,
                     int64_t H, int64_t W, int64_t C, int s, const float *bn1_w, const float *bn1_b, float *rm1,
                     float *rv1, double mom1, double eps1, const float *bn2_w, const float *bn2_b, float *rm2,
                     float *rv2, double mom2, double eps2, double *s64, float *s32, float *y, const float *pw,
                     int64_t C_out, float *out, float *out_shift, double *out_sums, int stream) {
  int64_t OH = out_size(H, s), OW = out_size(W, s), My = N * OH * OW;
  double *mean1 = s64, *invstd1 = s64 + C, *mean2 = s64 + 2 * C, *invstd2 = s64 + 3 * C, *ysums = s64 + 4 * C;
  float *mean1_32 = s32, *a1 = s32 + C, *mean2_32 = s32 + 2 * C, *a2 = s32 + 3 * C, *yshift = s32 + 4 * C;
  float *taps = s32 + 5 * C;
  bn_finish_stats(x_sums, x_sums + C, x_shift, C, (double)(N * H * W), bn1_w, rm1, rv1, mom1, eps1, mean1, invstd1,
                  mean1_32, a1);
  for (int64_t c = 0; c < C; c++)
    for (int k = 0; k < 9; k++) taps[k * C + c] = dw[c * 9 + k]; /* tap-major: a tap's channels contiguous */
  if (dw3x3_forward(x, mean1_32, a1, bn1_b, taps, y, N, H, W, C, OH, OW, s, yshift, ysums)) return 1;
  bn_finish_stats(ysums, ysums + C, yshift, C, (double)My, bn2_w, rm2, rv2, mom2, eps2, mean2, invstd2, mean2_32, a2);
  if (pw) return gemm_a_w(y, C, pw, C, 1, out, My, C, C_out, out_shift, out_sums, mean2_32, a2, bn2_b);
  return bn_relu_apply(y, out, My, C, mean2_32, a2, bn2_b, stream, 0);
}

/* The gradients of dw_block_forward from g_out = dL/dout, with the forward's x, y, s64 and s32 (whose bn1_b, bn2_b
   and pw must still hold the forward's values): gx = dL/dx [N, H, W, C]; g_dw [C][9] (NULL: not wanted); g_pw
   [C_out][C] (NULL: not wanted); each batch norm's weight and bias gradients [C]. sums_in_place: bn1's gradient
   sums from the depthwise backward's rows as it writes them (large maps) rather than a pass after it; stream: gx
   written with streaming stores. Returns 0, or 1 when there is no memory for the temporaries (gx and the gradients
   are then incomplete). */
int dw_block_backward(const float *g_out, const float *x, const float *y, int64_t N, int64_t H, int64_t W, int64_t C,
                      int s, const float *bn1_w, const float *bn1_b, const float *bn2_w, const float *bn2_b,
                      const double *s64, const float *s32, const float *pw, int64_t C_out, float *gx, float *g_dw,
                      float *g_pw, float *g_bn1_w, float *g_bn1_b, float *g_bn2_w, float *g_bn2_b, int sums_in_place,
                      int stream) {
  int64_t OH = out_size(H, s), OW = out_size(W, s), Mx = N * H * W, My = N * OH * OW;
  const double *mean1 = s64, *invstd1 = s64 + C, *mean2 = s64 + 2 * C, *invstd2 = s64 + 3 * C;
  const float *mean1_32 = s32, *a1 = s32 + C, *mean2_32 = s32 + 2 * C, *a2 = s32 + 3 * C, *taps = s32 + 5 * C;
  double *sums = malloc(sizeof(double) * (4 * C + (g_dw ? 9 * C : 0))); /* sums2, sums1, then the taps' gradient */
  float *pqr = malloc(sizeof(float) * 6 * C);                           /* p2, q2, r2, p1, q1, r1 */
  float *ga = malloc(sizeof(float) * Mx * C);                           /* dL/da, a = relu(bn1(x)) */
  float *gz = pw ? malloc(sizeof(float) * My * C) : NULL;              /* dL/dz, z = relu(bn2(y)) */
  int fail = !sums || !pqr || !ga || (pw && !gz);
  double *sums2 = sums, *sums1 = sums + 2 * C, *gw64 = g_dw ? sums + 4 * C : NULL;
  float *p2 = pqr, *q2 = pqr + C, *r2 = pqr + 2 * C, *p1 = pqr + 3 * C, *q1 = pqr + 4 * C, *r1 = pqr + 5 * C;
  if (!fail && pw) { /* the 1x1 convolution's input gradient, then its weight's (reading relu(bn2(y)) as it goes) */
    fail = gemm_a_w(g_out, C_out, pw, C, 0, gz, My, C_out, C, NULL, NULL, NULL, NULL, NULL) ||
           (g_pw && gemm_at_b(g_out, C_out, y, C, g_pw, My, C_out, C, mean2_32, a2, bn2_b));
  }
  const float *g = pw ? gz : g_out;
  if (!fail) fail = bn_relu_grad_sums(g, y, My, C, mean2_32, a2, bn2_b, sums2, sums2 + C, 0);
  if (!fail) {
    bn_grad_coefficients(sums2, sums2 + C, mean2, mean2_32, invstd2, bn2_w, C, (double)My, p2, q2, r2, g_bn2_w,
                         g_bn2_b);
    fail = dw3x3_backward(g, x, taps, ga, gw64, N, H, W, C, OH, OW, s, mean1_32, a1, bn1_b,
                          sums_in_place ? sums1 : NULL, y, mean2_32, a2, bn2_b, p2, q2, r2);
  }
  if (!fail && !sums_in_place) fail = bn_relu_grad_sums(ga, x, Mx, C, mean1_32, a1, bn1_b, sums1, sums1 + C, 0);
  if (!fail) {
    if (g_dw)
      for (int64_t c = 0; c < C; c++)
        for (int k = 0; k < 9; k++) g_dw[c * 9 + k] = (float)gw64[k * C + c];
    bn_grad_coefficients(sums1, sums1 + C, mean1, mean1_32, invstd1, bn1_w, C, (double)Mx, p1, q1, r1, g_bn1_w,
                         g_bn1_b);
    fail = bn_relu_grad_apply(ga, x, gx, Mx, C, mean1_32, a1, bn1_b, p1, q1, r1, stream, 0);
  }
  free(sums);
  free(pqr);
  free(ga);
  free(gz);
  return fail;
}
