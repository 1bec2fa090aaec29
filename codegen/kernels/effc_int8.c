/* effc's int8 convolution and matrix-product kernels for Arm Cortex-M, written for effc's AOT programs.
 * (Helium, the M-profile vector extension of the M55/M85, has a kernel of its own at the end.)
 *
 * On cores with the Armv7E-M DSP extension (M4, M7, M33, M55) the sums run on SMLAD: two
 * 16x16-bit products added to a 32-bit accumulator per instruction. The input is widened
 * once to int16 (x - x_zp) and reused by every output channel; four int8 weights are
 * loaded as one word and unpacked into two int16 pairs by SXTB16 (the packing order of the
 * weights, fixed at compile time, makes the pairs line up with the columns). A regular
 * convolution works on two output channels by two output pixels at a time (four
 * accumulators, in the manner of CMSIS-NN's s8 kernels); a depthwise one copies one
 * channel at a time into a padded int16 plane, so that it can write its output over its
 * input. Without the DSP extension the same code runs on plain C equivalents.
 *
 * Results equal effc's reference interpreter bit for bit (`fixed_point` rounding). */
#include "effc_int8.h"

#include <math.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define EFFC_SMLAD(a, b, acc) ((int32_t)__smlad((a), (b), (acc)))
#define EFFC_SXTB16(v) __sxtb16(v)
#define EFFC_SXTB16_ROR8(v) __sxtb16(((v) >> 8) | ((v) << 24)) /* SXTB16 ..., ROR #8 */
#else
static inline int32_t effc_lo16(uint32_t v) { return (int16_t)(v & 0xFFFFu); }
static inline int32_t effc_hi16(uint32_t v) { return (int16_t)(v >> 16); }
static inline int32_t EFFC_SMLAD(uint32_t a, uint32_t b, int32_t acc) {
  return (int32_t)((uint32_t)acc + (uint32_t)(effc_lo16(a) * effc_lo16(b)) + (uint32_t)(effc_hi16(a) * effc_hi16(b)));
}
static inline uint32_t EFFC_SXTB16(uint32_t v) {
  return ((uint32_t)(int32_t)(int8_t)(v & 0xFFu) & 0xFFFFu) | ((uint32_t)(int32_t)(int8_t)((v >> 16) & 0xFFu) << 16);
}
static inline uint32_t EFFC_SXTB16_ROR8(uint32_t v) { return EFFC_SXTB16((v >> 8) | (v << 24)); }
#endif

#define EFFC_DW_MAX_WORDS 32u /* depthwise taps per channel, in int16 pairs */

static inline uint32_t effc_load32(const void* p) {
  uint32_t v;
  memcpy(&v, p, sizeof(v)); /* one LDR (unaligned where the core allows it) */
  return v;
}

/* (acc * q + 2^(r - 1)) >> r, plus y_zp, clamped. For r >= 33 (multipliers under 1/4, the
 * usual case) only the high word of the product is needed: with P = H * 2^32 + L,
 * (P + 2^(r - 1)) >> r = (H + 2^(r - 33)) >> (r - 32) exactly (L < 2^32), one SMULL. */
static inline int32_t effc_requant(const effc_conv_s8_params* p, int32_t acc, int32_t q, int32_t r) {
  int32_t v;
  if (r >= 33) {
    const int32_t hi = (int32_t)(((int64_t)acc * q) >> 32);
    v = (hi + (1 << (r - 33))) >> (r - 32);
  } else {
    const int64_t w = ((int64_t)acc * q + ((int64_t)1 << (r - 1))) >> r;
    v = w > (1 << 30) ? (1 << 30) : w < -(1 << 30) ? -(1 << 30) : (int32_t)w; /* beyond any 8-bit range */
  }
  v += p->y_zp;
  return v < p->y_min ? p->y_min : v > p->y_max ? p->y_max : v;
}

/* v is in the output's range (clamped): its low byte is the int8 or uint8 value alike. */
static inline void effc_store(void* y, uint32_t i, int32_t v) { ((uint8_t*)y)[i] = (uint8_t)(uint32_t)v; }

static inline int32_t effc_load8(const void* x, uint32_t i, int unsigned_) {
  return unsigned_ ? (int32_t)((const uint8_t*)x)[i] : (int32_t)((const int8_t*)x)[i];
}

/* Output i from its sum: requantized, clamped, and with a residual, added to it. */
static inline void effc_finish(const effc_conv_s8_params* p, const void* r, void* y, uint32_t i, int32_t acc,
                               int32_t q, int32_t s) {
  int32_t v = effc_requant(p, acc, q, s);
  if (r != NULL) {
    const float a = (float)(v - p->y_zp) * p->a_scale;
    const float b = (float)(effc_load8(r, i, p->r_unsigned) - p->r_zp) * p->r_scale;
    const float c = rintf((a + b) / p->c_scale) + (float)p->c_zp;
    v = c < (float)p->c_min ? p->c_min : c > (float)p->c_max ? p->c_max : (int32_t)c;
  }
  effc_store(y, i, v);
}

/* The sums of two weight rows (w0, w1: k4 int8 each, every four bytes in SXTB16's order)
 * with two int16 columns (x0, x1), added to a[0] (w0.x0), a[1] (w0.x1), a[2] (w1.x0) and
 * a[3] (w1.x1): each word is loaded once for two products. */
static inline __attribute__((always_inline)) void effc_dot_2x2(const int8_t* w0, const int8_t* w1,
                                                               const int16_t* x0, const int16_t* x1, uint32_t k4,
                                                               int32_t a[4]) {
  int32_t a00 = a[0], a01 = a[1], a10 = a[2], a11 = a[3];
  uint32_t k;
  for (k = 0; k < k4; k += 4) {
    const uint32_t wa = effc_load32(w0 + k), wb = effc_load32(w1 + k);
    const uint32_t wa0 = EFFC_SXTB16(wa), wa1 = EFFC_SXTB16_ROR8(wa);
    const uint32_t wb0 = EFFC_SXTB16(wb), wb1 = EFFC_SXTB16_ROR8(wb);
    const uint32_t x00 = effc_load32(x0 + k), x01 = effc_load32(x0 + k + 2);
    const uint32_t x10 = effc_load32(x1 + k), x11 = effc_load32(x1 + k + 2);
    a00 = EFFC_SMLAD(wa1, x01, EFFC_SMLAD(wa0, x00, a00));
    a01 = EFFC_SMLAD(wa1, x11, EFFC_SMLAD(wa0, x10, a01));
    a10 = EFFC_SMLAD(wb1, x01, EFFC_SMLAD(wb0, x00, a10));
    a11 = EFFC_SMLAD(wb1, x11, EFFC_SMLAD(wb0, x10, a11));
  }
  a[0] = a00, a[1] = a01, a[2] = a10, a[3] = a11;
}

/* One weight row with two columns, added to a[0] (w0.x0) and a[1] (w0.x1). */
static inline __attribute__((always_inline)) void effc_dot_1x2(const int8_t* w0, const int16_t* x0,
                                                               const int16_t* x1, uint32_t k4, int32_t a[2]) {
  int32_t a00 = a[0], a01 = a[1];
  uint32_t k;
  for (k = 0; k < k4; k += 4) {
    const uint32_t wa = effc_load32(w0 + k);
    const uint32_t wa0 = EFFC_SXTB16(wa), wa1 = EFFC_SXTB16_ROR8(wa);
    a00 = EFFC_SMLAD(wa1, effc_load32(x0 + k + 2), EFFC_SMLAD(wa0, effc_load32(x0 + k), a00));
    a01 = EFFC_SMLAD(wa1, effc_load32(x1 + k + 2), EFFC_SMLAD(wa0, effc_load32(x1 + k), a01));
  }
  a[0] = a00, a[1] = a01;
}

/* ------------------------------------------------------------------ regular convolution */

uint32_t effc_conv_s8_scratch(const effc_conv_s8_params* p) { return 2u * p->k4 * (uint32_t)sizeof(int16_t); }

/* The k4 int16 values (x - x_zp, 0 for padding and for the tail) output pixel `pix` reads. */
static void effc_im2col(const effc_conv_s8_params* p, const void* x, uint32_t pix, int16_t* col) {
  const uint32_t hw = (uint32_t)p->in_h * p->in_w;
  const int32_t oy = (int32_t)(pix / p->out_w), ox = (int32_t)(pix % p->out_w);
  const int32_t zp = p->x_zp;
  const int u = p->x_unsigned;
  int16_t* c = col;
  uint32_t ci;
  if (p->k_h == 1 && p->k_w == 1 && p->pad_t == 0 && p->pad_l == 0) {
    const uint32_t at = (uint32_t)(oy * p->stride_h) * p->in_w + (uint32_t)(ox * p->stride_w);
    if (u) {
      const uint8_t* s = (const uint8_t*)x + at;
      for (ci = 0; ci < p->in_c; ++ci, s += hw) *c++ = (int16_t)(*s - zp);
    } else {
      const int8_t* s = (const int8_t*)x + at;
      for (ci = 0; ci < p->in_c; ++ci, s += hw) *c++ = (int16_t)(*s - zp);
    }
  } else {
    const int32_t y0 = oy * p->stride_h - p->pad_t, x0 = ox * p->stride_w - p->pad_l;
    for (ci = 0; ci < p->in_c; ++ci) {
      uint32_t ky, kx;
      for (ky = 0; ky < p->k_h; ++ky) {
        const int32_t iy = y0 + (int32_t)ky * p->dil_h;
        if (iy < 0 || iy >= (int32_t)p->in_h) {
          for (kx = 0; kx < p->k_w; ++kx) *c++ = 0;
          continue;
        }
        const uint32_t row = ci * hw + (uint32_t)iy * p->in_w;
        if (u) {
          const uint8_t* s = (const uint8_t*)x + row;
          for (kx = 0; kx < p->k_w; ++kx) {
            const int32_t ix = x0 + (int32_t)kx * p->dil_w;
            *c++ = (ix < 0 || ix >= (int32_t)p->in_w) ? 0 : (int16_t)(s[ix] - zp);
          }
        } else {
          const int8_t* s = (const int8_t*)x + row;
          for (kx = 0; kx < p->k_w; ++kx) {
            const int32_t ix = x0 + (int32_t)kx * p->dil_w;
            *c++ = (ix < 0 || ix >= (int32_t)p->in_w) ? 0 : (int16_t)(s[ix] - zp);
          }
        }
      }
    }
  }
  while (c < col + p->k4) *c++ = 0;
}

/* The columns of output pixels pix and pix + 1 (col1 is left alone when pix is the last);
 * returns the second pixel's (col0 again for a last odd pixel, whose sums are not stored). */
static inline const int16_t* effc_pixel_pair(const effc_conv_s8_params* p, const void* x, uint32_t pix,
                                             uint32_t ohw, int16_t* col0, int16_t* col1) {
  effc_im2col(p, x, pix, col0);
  if (pix + 1 >= ohw) return col0;
  effc_im2col(p, x, pix + 1, col1);
  return col1;
}

/* effc_conv_s8's body, inlined twice: with and without a residual (no test per output). */
static inline __attribute__((always_inline)) void effc_conv_body(const effc_conv_s8_params* p, const void* x,
                                                                 const int8_t* w, const int32_t* bias,
                                                                 const int32_t* mult, const int8_t* shift,
                                                                 const void* residual, void* y, int16_t* scratch) {
  const uint32_t ohw = (uint32_t)p->out_h * p->out_w, k4 = p->k4, m_count = p->out_c;
  int16_t* col0 = scratch;
  int16_t* col1 = scratch + k4;
  uint32_t pix;
  for (pix = 0; pix < ohw; pix += 2) {
    const int two = pix + 1 < ohw;
    const int16_t* c1 = effc_pixel_pair(p, x, pix, ohw, col0, col1);
    uint32_t m;
    for (m = 0; m + 1 < m_count; m += 2) {
      int32_t a[4] = {bias[m], bias[m], bias[m + 1], bias[m + 1]};
      effc_dot_2x2(w + m * k4, w + (m + 1) * k4, col0, c1, k4, a);
      effc_finish(p, residual, y, m * ohw + pix, a[0], mult[m], shift[m]);
      effc_finish(p, residual, y, (m + 1) * ohw + pix, a[2], mult[m + 1], shift[m + 1]);
      if (two) {
        effc_finish(p, residual, y, m * ohw + pix + 1, a[1], mult[m], shift[m]);
        effc_finish(p, residual, y, (m + 1) * ohw + pix + 1, a[3], mult[m + 1], shift[m + 1]);
      }
    }
    if (m < m_count) { /* an odd last channel */
      int32_t a[2] = {bias[m], bias[m]};
      effc_dot_1x2(w + m * k4, col0, c1, k4, a);
      effc_finish(p, residual, y, m * ohw + pix, a[0], mult[m], shift[m]);
      if (two) effc_finish(p, residual, y, m * ohw + pix + 1, a[1], mult[m], shift[m]);
    }
  }
}

void effc_conv_s8(const effc_conv_s8_params* p, const void* x, const int8_t* w, const int32_t* bias,
                  const int32_t* mult, const int8_t* shift, const void* residual, void* y, int16_t* scratch) {
  if (residual != NULL)
    effc_conv_body(p, x, w, bias, mult, shift, residual, y, scratch);
  else
    effc_conv_body(p, x, w, bias, mult, shift, NULL, y, scratch);
}

/* ------------------------------------------------------------------ matrix product, float result */

uint32_t effc_gemm_s8_scratch(const effc_gemm_s8_params* p) { return 2u * p->k4 * (uint32_t)sizeof(int16_t); }

/* Row i of a, less a_zp, as k4 int16 values (zeros past depth). */
static void effc_gemm_row(const effc_gemm_s8_params* p, const void* a, uint32_t i, int16_t* row) {
  const uint32_t d = p->depth;
  const int32_t zp = p->a_zp;
  uint32_t k;
  if (p->a_unsigned) {
    const uint8_t* s = (const uint8_t*)a + i * d;
    for (k = 0; k < d; ++k) row[k] = (int16_t)(s[k] - zp);
  } else {
    const int8_t* s = (const int8_t*)a + i * d;
    for (k = 0; k < d; ++k) row[k] = (int16_t)(s[k] - zp);
  }
  for (; k < p->k4; ++k) row[k] = 0;
}

/* Two rows by two columns at a time, four accumulators (as effc_conv_s8 does pixels and
 * channels): each weight word and each row word is loaded once for two products. An odd
 * last row (a classifier has one) goes two columns at a time on its own. */
void effc_gemm_s8_f32(const effc_gemm_s8_params* p, const void* a, const int8_t* w, const int32_t* bias,
                      const float* scale, float* y, int16_t* scratch) {
  const uint32_t rows = p->rows, cols = p->cols, k4 = p->k4;
  int16_t* r0 = scratch;
  int16_t* r1 = scratch + k4;
  uint32_t i;
  for (i = 0; i + 1 < rows; i += 2) {
    float* y0 = y + i * cols;
    float* y1 = y0 + cols;
    uint32_t j;
    effc_gemm_row(p, a, i, r0);
    effc_gemm_row(p, a, i + 1, r1);
    for (j = 0; j + 1 < cols; j += 2) {
      int32_t acc[4] = {bias[j], bias[j], bias[j + 1], bias[j + 1]};
      effc_dot_2x2(w + j * k4, w + (j + 1) * k4, r0, r1, k4, acc);
      y0[j] = (float)acc[0] * scale[j];
      y0[j + 1] = (float)acc[2] * scale[j + 1];
      y1[j] = (float)acc[1] * scale[j];
      y1[j + 1] = (float)acc[3] * scale[j + 1];
    }
    if (j < cols) { /* an odd last column */
      int32_t acc[2] = {bias[j], bias[j]};
      effc_dot_1x2(w + j * k4, r0, r1, k4, acc);
      y0[j] = (float)acc[0] * scale[j];
      y1[j] = (float)acc[1] * scale[j];
    }
  }
  if (i < rows) { /* an odd last row (a classifier's one row): two columns at a time */
    float* y0 = y + i * cols;
    uint32_t j;
    effc_gemm_row(p, a, i, r0);
    for (j = 0; j + 1 < cols; j += 2) {
      const int8_t* w0 = w + j * k4;
      const int8_t* w1 = w0 + k4;
      int32_t a00 = bias[j], a10 = bias[j + 1];
      uint32_t k;
      for (k = 0; k < k4; k += 4) {
        const uint32_t wa = effc_load32(w0 + k), wb = effc_load32(w1 + k);
        const uint32_t x00 = effc_load32(r0 + k), x01 = effc_load32(r0 + k + 2);
        a00 = EFFC_SMLAD(EFFC_SXTB16_ROR8(wa), x01, EFFC_SMLAD(EFFC_SXTB16(wa), x00, a00));
        a10 = EFFC_SMLAD(EFFC_SXTB16_ROR8(wb), x01, EFFC_SMLAD(EFFC_SXTB16(wb), x00, a10));
      }
      y0[j] = (float)a00 * scale[j];
      y0[j + 1] = (float)a10 * scale[j + 1];
    }
    if (j < cols) {
      const int8_t* w0 = w + j * k4;
      int32_t a00 = bias[j];
      uint32_t k;
      for (k = 0; k < k4; k += 4) {
        const uint32_t wa = effc_load32(w0 + k);
        a00 = EFFC_SMLAD(EFFC_SXTB16_ROR8(wa), effc_load32(r0 + k + 2),
                         EFFC_SMLAD(EFFC_SXTB16(wa), effc_load32(r0 + k), a00));
      }
      y0[j] = (float)a00 * scale[j];
    }
  }
}

/* ------------------------------------------------------------------ sparse weights */

/* A one-group convolution whose weights are mostly zeros, stored compressed: per output
 * channel a bitmask of its nonzero weights and only their values. The loop walks the set
 * bits (count trailing zeros: RBIT + CLZ) and multiplies two output pixels per weight, so
 * its work follows the nonzeros; a dense SMLAD step does four products in about as many
 * instructions as one sparse product takes, so the sparse loop is faster only when most
 * weights are zero. The flash it saves: 7/8 byte per zero weight, less a word per row. */
void effc_conv_s8_sparse(const effc_conv_s8_params* p, const void* x, const uint8_t* w, const int32_t* bias,
                         const int32_t* mult, const int8_t* shift, const void* residual, void* y, int16_t* scratch) {
  const uint32_t ohw = (uint32_t)p->out_h * p->out_w, m_count = p->out_c;
  const uint32_t words = ((uint32_t)p->in_c * p->k_h * p->k_w + 31u) / 32u;
  int16_t* col0 = scratch;
  int16_t* col1 = scratch + p->k4;
  uint32_t pix;
  for (pix = 0; pix < ohw; pix += 2) {
    const int two = pix + 1 < ohw;
    const int16_t* c1 = effc_pixel_pair(p, x, pix, ohw, col0, col1);
    uint32_t m;
    for (m = 0; m < m_count; ++m) {
      const uint8_t* row = w + effc_load32(w + 4u * m);
      const int8_t* v = (const int8_t*)(row + 4u * words);
      int32_t a0 = bias[m], a1 = bias[m];
      uint32_t i;
      for (i = 0; i < words; ++i) {
        uint32_t bits = effc_load32(row + 4u * i);
        const int16_t* x0 = col0 + 32u * i;
        const int16_t* x1 = c1 + 32u * i;
        while (bits) {
          const uint32_t j = (uint32_t)__builtin_ctz(bits);
          const int32_t wv = *v++;
          bits &= bits - 1u;
          a0 += wv * x0[j];
          a1 += wv * x1[j];
        }
      }
      effc_finish(p, residual, y, m * ohw + pix, a0, mult[m], shift[m]);
      if (two) effc_finish(p, residual, y, m * ohw + pix + 1, a1, mult[m], shift[m]);
    }
  }
}

/* ------------------------------------------------------------------ depthwise convolution */

/* The rows and columns of the padded plane the windows reach. */
static uint32_t effc_plane_h(const effc_conv_s8_params* p) {
  return (uint32_t)(p->out_h - 1) * p->stride_h + (uint32_t)(p->k_h - 1) * p->dil_h + 1u;
}
static uint32_t effc_plane_w(const effc_conv_s8_params* p) {
  return (uint32_t)(p->out_w - 1) * p->stride_w + (uint32_t)(p->k_w - 1) * p->dil_w + 1u;
}

uint32_t effc_dwconv_s8_scratch(const effc_conv_s8_params* p) {
  /* the plane, plus one pair a window's last (zero-weight) tap may read past it */
  return (effc_plane_h(p) * effc_plane_w(p) + 2u) * (uint32_t)sizeof(int16_t);
}

void effc_dwconv_s8(const effc_conv_s8_params* p, const void* x, const int8_t* w, const int32_t* bias,
                    const int32_t* mult, const int8_t* shift, void* y, int16_t* scratch) {
  const uint32_t ph = effc_plane_h(p), pw = effc_plane_w(p);
  const uint32_t hw = (uint32_t)p->in_h * p->in_w, ohw = (uint32_t)p->out_h * p->out_w;
  const uint32_t pairs = p->k4 / 2u, row_step = (uint32_t)p->dil_h * pw;
  const int32_t zp = p->x_zp;
  const int u = p->x_unsigned;
  uint32_t taps[EFFC_DW_MAX_WORDS];
  uint32_t c;
  scratch[ph * pw] = 0;
  scratch[ph * pw + 1] = 0;
  for (c = 0; c < p->out_c; ++c) {
    uint32_t r, q, oy, ox, i;
    int16_t* d = scratch;
    for (r = 0; r < ph; ++r) { /* channel c of x, widened and padded */
      const int32_t iy = (int32_t)r - p->pad_t;
      if (iy < 0 || iy >= (int32_t)p->in_h) {
        for (q = 0; q < pw; ++q) *d++ = 0;
        continue;
      }
      const uint32_t row = c * hw + (uint32_t)iy * p->in_w;
      const uint32_t left = (uint32_t)p->pad_l < pw ? (uint32_t)p->pad_l : pw;
      const uint32_t inside = pw - left < p->in_w ? pw - left : p->in_w;
      for (q = 0; q < left; ++q) *d++ = 0;
      if (u) {
        const uint8_t* s = (const uint8_t*)x + row;
        for (q = 0; q < inside; ++q) *d++ = (int16_t)(s[q] - zp);
      } else {
        const int8_t* s = (const int8_t*)x + row;
        for (q = 0; q < inside; ++q) *d++ = (int16_t)(s[q] - zp);
      }
      for (q = left + inside; q < pw; ++q) *d++ = 0;
    }
    for (i = 0; i < p->k_h * pairs; ++i) { /* its taps as int16 pairs */
      const int8_t* t = w + (c * p->k_h * pairs + i) * 2u;
      taps[i] = ((uint32_t)(int32_t)t[0] & 0xFFFFu) | ((uint32_t)(int32_t)t[1] << 16);
    }
    const int32_t b = bias[c], mq = mult[c], ms = shift[c];
    if (p->k_h == 3 && p->k_w == 3 && p->dil_h == 1 && p->dil_w == 1) { /* taps in registers */
      const uint32_t t0 = taps[0], t1 = taps[1], t2 = taps[2], t3 = taps[3], t4 = taps[4], t5 = taps[5];
      uint32_t at = c * ohw;
      for (oy = 0; oy < p->out_h; ++oy) {
        const int16_t* r0 = scratch + oy * p->stride_h * pw;
        for (ox = 0; ox < p->out_w; ++ox, r0 += p->stride_w) {
          const int16_t* r1 = r0 + pw;
          const int16_t* r2 = r1 + pw;
          int32_t acc = EFFC_SMLAD(t1, effc_load32(r0 + 2), EFFC_SMLAD(t0, effc_load32(r0), b));
          acc = EFFC_SMLAD(t3, effc_load32(r1 + 2), EFFC_SMLAD(t2, effc_load32(r1), acc));
          acc = EFFC_SMLAD(t5, effc_load32(r2 + 2), EFFC_SMLAD(t4, effc_load32(r2), acc));
          effc_finish(p, NULL, y, at++, acc, mq, ms);
        }
      }
      continue;
    }
    for (oy = 0; oy < p->out_h; ++oy) {
      const int16_t* base = scratch + oy * p->stride_h * pw;
      for (ox = 0; ox < p->out_w; ++ox, base += p->stride_w) {
        int32_t acc = b;
        const int16_t* row = base;
        const uint32_t* t = taps;
        uint32_t ky, j;
        if (p->dil_w == 1) {
          for (ky = 0; ky < p->k_h; ++ky, row += row_step)
            for (j = 0; j < pairs; ++j) acc = EFFC_SMLAD(*t++, effc_load32(row + 2u * j), acc);
        } else {
          for (ky = 0; ky < p->k_h; ++ky, row += row_step)
            for (j = 0; j < pairs; ++j, ++t) {
              const uint32_t a = (uint16_t)row[2u * j * p->dil_w];
              const uint32_t bb = 2u * j + 1u < p->k_w ? (uint16_t)row[(2u * j + 1u) * p->dil_w] : 0u;
              acc = EFFC_SMLAD(*t, a | (bb << 16), acc);
            }
        }
        effc_finish(p, NULL, y, c * ohw + oy * p->out_w + ox, acc, mq, ms);
      }
    }
  }
}

/* ------------------------------------------------------------------ Helium (MVE), M55 */

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#include <arm_mve.h>

uint32_t effc_conv_s8_mve_scratch(const effc_conv_s8_params* p) { return 2u * p->k4; }

/* The k4 int8 values output pixel `pix` reads: x as signed bytes (uint8 shifted by -128),
 * padding as the (shifted) zero point, 0 past the reduction (its weights are 0). */
static void effc_im2col8(const effc_conv_s8_params* p, const void* x, uint32_t pix, int8_t* col) {
  const uint32_t hw = (uint32_t)p->in_h * p->in_w;
  const int32_t oy = (int32_t)(pix / p->out_w), ox = (int32_t)(pix % p->out_w);
  const int32_t sh = p->x_unsigned ? -128 : 0;
  const int8_t pad = (int8_t)(p->x_zp + sh);
  const uint8_t* src = (const uint8_t*)x;
  int8_t* c = col;
  uint32_t ci, ky, kx;
  if (p->k_h == 1 && p->k_w == 1 && p->pad_t == 0 && p->pad_l == 0) {
    const uint8_t* s = src + (uint32_t)(oy * p->stride_h) * p->in_w + (uint32_t)(ox * p->stride_w);
    for (ci = 0; ci < p->in_c; ++ci, s += hw) *c++ = (int8_t)(uint8_t)(*s + (uint32_t)sh);
  } else {
    const int32_t y0 = oy * p->stride_h - p->pad_t, x0 = ox * p->stride_w - p->pad_l;
    for (ci = 0; ci < p->in_c; ++ci)
      for (ky = 0; ky < p->k_h; ++ky) {
        const int32_t iy = y0 + (int32_t)ky * p->dil_h;
        const uint8_t* row = src + ci * hw + (uint32_t)iy * p->in_w;
        for (kx = 0; kx < p->k_w; ++kx) {
          const int32_t ix = x0 + (int32_t)kx * p->dil_w;
          *c++ = (iy < 0 || iy >= (int32_t)p->in_h || ix < 0 || ix >= (int32_t)p->in_w)
                     ? pad : (int8_t)(uint8_t)(row[ix] + (uint32_t)sh);
        }
      }
  }
  while (c < col + p->k4) *c++ = 0;
}

static inline __attribute__((always_inline)) void effc_conv_mve_body(const effc_conv_s8_params* p, const void* x,
                                                                     const int8_t* w, const int32_t* bias,
                                                                     const int32_t* mult, const int8_t* shift,
                                                                     const void* residual, void* y, int8_t* scratch) {
  const uint32_t ohw = (uint32_t)p->out_h * p->out_w, k4 = p->k4, m_count = p->out_c;
  int8_t* col0 = scratch;
  int8_t* col1 = scratch + k4;
  uint32_t pix;
  for (pix = 0; pix < ohw; pix += 2) {
    const int two = pix + 1 < ohw;
    uint32_t m;
    effc_im2col8(p, x, pix, col0);
    if (two) effc_im2col8(p, x, pix + 1, col1);
    const int8_t* c1 = two ? col1 : col0;
    for (m = 0; m < m_count; m += 2) {
      const int pair = m + 1 < m_count;
      const int8_t* w0 = w + m * k4;
      const int8_t* w1 = pair ? w0 + k4 : w0;
      int32_t a00 = bias[m], a01 = bias[m], a10 = 0, a11 = 0;
      uint32_t k;
      for (k = 0; k < k4; k += 16) { /* 64 multiply-adds in four VMLADAVA */
        const int8x16_t wa = vldrbq_s8(w0 + k), wb = vldrbq_s8(w1 + k);
        const int8x16_t xa = vldrbq_s8(col0 + k), xb = vldrbq_s8(c1 + k);
        a00 = vmladavaq_s8(a00, wa, xa);
        a01 = vmladavaq_s8(a01, wa, xb);
        a10 = vmladavaq_s8(a10, wb, xa);
        a11 = vmladavaq_s8(a11, wb, xb);
      }
      effc_finish(p, residual, y, m * ohw + pix, a00, mult[m], shift[m]);
      if (two) effc_finish(p, residual, y, m * ohw + pix + 1, a01, mult[m], shift[m]);
      if (pair) {
        effc_finish(p, residual, y, (m + 1) * ohw + pix, a10 + bias[m + 1], mult[m + 1], shift[m + 1]);
        if (two) effc_finish(p, residual, y, (m + 1) * ohw + pix + 1, a11 + bias[m + 1], mult[m + 1], shift[m + 1]);
      }
    }
  }
}

void effc_conv_s8_mve(const effc_conv_s8_params* p, const void* x, const int8_t* w, const int32_t* bias,
                      const int32_t* mult, const int8_t* shift, const void* residual, void* y, int8_t* scratch) {
  if (residual != NULL)
    effc_conv_mve_body(p, x, w, bias, mult, shift, residual, y, scratch);
  else
    effc_conv_mve_body(p, x, w, bias, mult, shift, NULL, y, scratch);
}
#endif /* __ARM_FEATURE_MVE */
