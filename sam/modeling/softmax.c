// The encoders' attention weights in one pass over each row of scores: a bias added (the ViT's decomposed
// relative positions, or TinyViT's table), softmax, and the result written over the scores in their own
// dtype (float32 or bfloat16).
// torch does this as five passes (cast to float32, two adds, softmax, cast back); here each row goes
// through a float32 buffer the size of one row, which stays in the processor's first-level cache.
// Built and loaded by sam/modeling/native.py; the threads are OpenMP's, the same runtime as torch's.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float from_bf16(uint16_t b) {
  uint32_t u = (uint32_t)b << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t to_bf16(float f) {  // round to nearest even, as torch
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

// exp(x) for x <= 0 as 2^n * 2^f: 2^f on [0, 1) by a polynomial fitted to 8e-8 relative error, so that
// the loop vectorizes without a call per value.
static inline float exp_nonpositive(float x) {
  x = x < -87.f ? -87.f : x;
  const float t = x * 1.44269504f, n = floorf(t), f = t - n;
  float p = 1.8762329e-3f;
  p = p * f + 8.9925840e-3f;
  p = p * f + 5.5823604e-2f;
  p = p * f + 2.4015453e-1f;
  p = p * f + 6.9315297e-1f;
  p = p * f + 9.9999993e-1f;
  const int32_t e = ((int32_t)n + 127) << 23;
  float s;
  memcpy(&s, &e, 4);
  return p * s;
}

// The row in buf (n values, float32) -> softmax of it, written to row r of scores in their dtype.
static inline void softmax_row(float* buf, int64_t n, void* scores, int bf16, int64_t r) {
  float max = -INFINITY, sum = 0.f;
  for (int64_t k = 0; k < n; k++) max = buf[k] > max ? buf[k] : max;
  for (int64_t k = 0; k < n; k++) {
    buf[k] = exp_nonpositive(buf[k] - max);
    sum += buf[k];
  }
  const float inv = 1.f / sum;
  if (bf16) {
    uint16_t* o = (uint16_t*)scores + r * n;
    for (int64_t k = 0; k < n; k++) o[k] = to_bf16(buf[k] * inv);
  } else {
    float* o = (float*)scores + r * n;
    for (int64_t k = 0; k < n; k++) o[k] = buf[k] * inv;
  }
}

// Row r of scores (n values, float32 or bfloat16) plus bias, into buf as float32.
static inline void load_row(const void* scores, int bf16, int64_t r, int64_t n, const float* bias, float* buf) {
  if (bf16) {
    const uint16_t* x = (const uint16_t*)scores + r * n;
    for (int64_t k = 0; k < n; k++) buf[k] = from_bf16(x[k]) + bias[k];
  } else {
    const float* x = (const float*)scores + r * n;
    for (int64_t k = 0; k < n; k++) buf[k] = x[k] + bias[k];
  }
}

// scores: rows x (h * w), float32 (bf16 == 0) or bfloat16 (bf16 == 1), replaced by
// softmax(scores[r, (i, j)] + rel_h[r, i] + rel_w[r, j]) over each row; rel_h: rows x h, rel_w: rows x w.
void rel_pos_softmax(void* scores, int bf16, const float* rel_h, const float* rel_w, int64_t rows, int64_t h,
                     int64_t w, int threads) {
  const int64_t n = h * w;
#pragma omp parallel num_threads(threads)
  {
    float* buf = malloc(n * sizeof(float));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      const float *rh = rel_h + r * h, *rw = rel_w + r * w;
      for (int64_t i = 0; i < h; i++) {
        float* y = buf + i * w;
        if (bf16) {
          const uint16_t* x = (const uint16_t*)scores + r * n + i * w;
          for (int64_t j = 0; j < w; j++) y[j] = from_bf16(x[j]) + rh[i] + rw[j];
        } else {
          const float* x = (const float*)scores + r * n + i * w;
          for (int64_t j = 0; j < w; j++) y[j] = x[j] + rh[i] + rw[j];
        }
      }
      softmax_row(buf, n, scores, bf16, r);
    }
    free(buf);
  }
}

// scores: rows x n as above, replaced by softmax(scores[r] + bias[r % bias_rows]); bias: bias_rows x n.
void table_softmax(void* scores, int bf16, const float* bias, int64_t rows, int64_t n, int64_t bias_rows,
                   int threads) {
#pragma omp parallel num_threads(threads)
  {
    float* buf = malloc(n * sizeof(float));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; r++) {
      load_row(scores, bf16, r, n, bias + (r % bias_rows) * n, buf);
      softmax_row(buf, n, scores, bf16, r);
    }
    free(buf);
  }
}
