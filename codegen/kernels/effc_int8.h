/* effc's int8 kernels for Arm Cortex-M, part of effc (see effc_int8.c). */
#ifndef EFFC_INT8_H
#define EFFC_INT8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One quantized 2-D convolution (NCHW, batch 1), with its requantization and clamp:
 *   y[m][oy][ox] = clamp(y_zp + requant(bias[m] + sum (x - x_zp) * w, mult[m], shift[m]),
 *                        y_min, y_max)
 * requant(acc, q, r) = (acc * q + 2^(r - 1)) >> r in 64 bits (TFLite's 31-bit multiplier and
 * shift, one rounding, half up): effc's `fixed_point` rounding. The weights are int8 with a
 * zero point of 0. Padding reads as x_zp (a real 0).
 * With a residual r (effc_conv_s8 only), that y is `a` of a QLinearAdd and the output is
 *   clamp(rint((float(a - y_zp) * a_scale + float(r - r_zp) * r_scale) / c_scale) + c_zp,
 *         c_min, c_max)
 * in float32, as its definition (and the interpreter) computes it. */
typedef struct {
  uint16_t in_c, in_h, in_w;
  uint16_t out_c, out_h, out_w;
  uint8_t k_h, k_w, stride_h, stride_w, dil_h, dil_w;
  uint8_t x_unsigned, r_unsigned; /* uint8 rather than int8 (the output's range is y_min..y_max) */
  int16_t pad_t, pad_l;
  uint16_t k4;      /* regular: in_c * k_h * k_w rounded up to 4; depthwise: k_w rounded up to 2 */
  int32_t x_zp, y_zp, y_min, y_max;
  int32_t r_zp, c_zp, c_min, c_max;
  float a_scale, r_scale, c_scale;
} effc_conv_s8_params;

/* Scratch bytes each kernel needs (int16 im2col columns or one padded input plane). */
uint32_t effc_conv_s8_scratch(const effc_conv_s8_params* p);
uint32_t effc_dwconv_s8_scratch(const effc_conv_s8_params* p);

/* A one-group convolution. w: [out_c][k4] int8, each row (in_c, k_h, k_w) in order, padded
 * with zeros to k4, every four bytes stored as (0, 2, 1, 3) (the order SXTB16 unpacks). */
void effc_conv_s8(const effc_conv_s8_params* p, const void* x, const int8_t* w, const int32_t* bias,
                  const int32_t* mult, const int8_t* shift, const void* residual, void* y, int16_t* scratch);

/* A one-group convolution on compressed sparse weights (scratch: effc_conv_s8_scratch).
 * w: uint32 offsets[out_c], each the byte offset of channel m's row from w; a row is
 * uint32 bits[ceil(in_c * k_h * k_w / 32)] (bit j of word i: weight 32 i + j, in (in_c, k_h,
 * k_w) order, is nonzero) followed by the nonzero weights as int8 in that order, padded to
 * a word. */
void effc_conv_s8_sparse(const effc_conv_s8_params* p, const void* x, const uint8_t* w, const int32_t* bias,
                         const int32_t* mult, const int8_t* shift, const void* residual, void* y, int16_t* scratch);

/* A depthwise convolution (group = in_c = out_c). w: [out_c][k_h][k4] int8, each row of k_w
 * taps padded with zeros to k4. Channel c of y is written after channel c of x was read:
 * y may start where x does (in place, TinyEngine-style) when it is no larger. */
void effc_dwconv_s8(const effc_conv_s8_params* p, const void* x, const int8_t* w, const int32_t* bias,
                    const int32_t* mult, const int8_t* shift, void* y, int16_t* scratch);

/* An integer matrix product with a float result (qgemm without an output scale: a
 * transformer's projections, onnxruntime's MatMulIntegerToFloat):
 *   y[i][j] = (float)(bias[j] + sum_k (a[i][k] - a_zp) * w[j][k]) * scale[j]
 * in float32 as effc's interpreter computes it, bit for bit. a: [rows][depth] int8 or
 * uint8; w: [cols][k4] int8 (zero point 0), each row padded with zeros to k4 (depth rounded
 * up to 4), every four bytes stored as (0, 2, 1, 3); y: [rows][cols] float32. */
typedef struct {
  uint16_t rows, cols, depth, k4;
  uint8_t a_unsigned;
  int32_t a_zp;
} effc_gemm_s8_params;

uint32_t effc_gemm_s8_scratch(const effc_gemm_s8_params* p); /* two int16 rows */
void effc_gemm_s8_f32(const effc_gemm_s8_params* p, const void* a, const int8_t* w, const int32_t* bias,
                      const float* scale, float* y, int16_t* scratch);

#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
/* A one-group convolution on Helium (M55): VMLADAVA sums 16 int8 products per instruction
 * on x as signed bytes (uint8 shifted by -128). w: [out_c][k4] int8 in natural order, k4 =
 * in_c * k_h * k_w rounded up to 16; bias: the bias less (x_zp + shift) * sum(w[m]). */
uint32_t effc_conv_s8_mve_scratch(const effc_conv_s8_params* p);
void effc_conv_s8_mve(const effc_conv_s8_params* p, const void* x, const int8_t* w, const int32_t* bias,
                      const int32_t* mult, const int8_t* shift, const void* residual, void* y, int8_t* scratch);
#endif

#ifdef __cplusplus
}
#endif

#endif /* EFFC_INT8_H */
