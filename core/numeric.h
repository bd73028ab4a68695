// numeric.h — bit-exact host conversions between fp32 and the wire formats
// (bf16, fp16, fp8 e4m3 "FN": bias 7, max 448, no infinities, NaN = 0x7f/0xff).
//
// All float -> narrow conversions round to nearest, ties to even. fp8 encoding
// saturates finite overflow (and infinities) to +-448; NaN stays NaN. These are
// the reference semantics the CUDA kernels must reproduce bit for bit.
// Thread-safety: pure functions.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "epd/types.h"

namespace epd {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: man * 2^-24
    float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (man << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t float_to_fp16(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7e00u);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to infinity
  if (a < 6.103515625e-05f) {
    // subnormal range: units of 2^-24, exact product, RNE via nearbyint
    const float q = std::nearbyint(a * 16777216.0f);
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(q));  // q == 1024 is the min normal
  }
  int e;
  const float m = std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  // 11 significant bits: mantissa in units of 2^(e-11)
  float q = std::nearbyint(std::ldexp(m, 11));  // in [1024, 2048]
  int32_t qi = static_cast<int32_t>(q);
  if (qi == 2048) {
    qi = 1024;
    ++e;
  }
  const int32_t exp = e - 1 + 15;  // biased exponent of 1.x * 2^(e-1)
  return static_cast<uint16_t>(sign | (exp << 10) | (qi - 1024));
}

inline float fp8_e4m3_to_float(uint8_t v) {
  const bool neg = v & 0x80u;
  const uint32_t exp = (v >> 3) & 0xfu;
  const uint32_t man = v & 0x7u;
  float r;
  if (exp == 0xf && man == 0x7) return neg ? -NAN : NAN;
  if (exp == 0)
    r = std::ldexp(static_cast<float>(man), -9);
  else
    r = std::ldexp(static_cast<float>(8 + man), static_cast<int>(exp) - 10);
  return neg ? -r : r;
}

inline uint8_t float_to_fp8_e4m3(float f) {
  // Bit-level round to nearest even of the 23-bit mantissa to 3 bits; the
  // exponent is rebiased from 127 to 7 by subtracting 120 << 3 from the
  // (exponent, mantissa) field, so a mantissa carry bumps the exponent.
  // Branch-free (selects only) so row loops vectorise.
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 24) & 0x80u;
  const uint32_t a = u & 0x7fffffffu;
  const uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
  const uint32_t normal = (r >> 20) - (120u << 3);
  // Below 2^-6: subnormal codes in units of 2^-9. a * 512 is exact; adding
  // 2^23 rounds it to an integer, ties to even (8 is the min normal code).
  const float t = bits_float(a) * 512.0f + 8388608.0f;
  const uint32_t sub = float_bits(t) - 0x4b000000u;
  const uint32_t is_sub = 0u - static_cast<uint32_t>(a < 0x3c800000u);
  const uint32_t is_big = 0u - static_cast<uint32_t>(a >= 0x43e00000u);  // >= 448, inf: saturate
  const uint32_t is_nan = 0u - static_cast<uint32_t>(a > 0x7f800000u);
  uint32_t code = (sub & is_sub) | (normal & ~is_sub);
  code = (0x7eu & is_big) | (code & ~is_big);
  code = (0x7fu & is_nan) | (code & ~is_nan);
  return static_cast<uint8_t>(sign | code);
}

// Element i of a row in `dtype` as fp32.
inline float load_as_float(const void* row, int64_t i, epd_dtype_t dtype) {
  switch (dtype) {
    case EPD_DTYPE_BF16: return bf16_to_float(static_cast<const uint16_t*>(row)[i]);
    case EPD_DTYPE_FP16: return fp16_to_float(static_cast<const uint16_t*>(row)[i]);
    case EPD_DTYPE_FP32: return static_cast<const float*>(row)[i];
  }
  return 0.0f;
}

inline void store_from_float(void* row, int64_t i, float v, epd_dtype_t dtype) {
  switch (dtype) {
    case EPD_DTYPE_BF16: static_cast<uint16_t*>(row)[i] = float_to_bf16(v); return;
    case EPD_DTYPE_FP16: static_cast<uint16_t*>(row)[i] = float_to_fp16(v); return;
    case EPD_DTYPE_FP32: static_cast<float*>(row)[i] = v; return;
  }
}

// Quantises one row of `hidden` elements (hidden % 128 == 0) to fp8 with one
// scale per 128-element block: scale = amax / 448 (fp32 division), q = x / scale;
// an all-zero block has scale 0 and encodes zeros.
inline void quantize_row_fp8(const void* row, int32_t hidden, epd_dtype_t dtype, uint8_t* q,
                             float* scales) {
  float v[EPD_FP8_BLOCK];
  for (int32_t b = 0; b < hidden / EPD_FP8_BLOCK; ++b) {
    const int64_t base = static_cast<int64_t>(b) * EPD_FP8_BLOCK;
    if (dtype == EPD_DTYPE_BF16) {
      const uint16_t* p = static_cast<const uint16_t*>(row) + base;
      for (int32_t i = 0; i < EPD_FP8_BLOCK; ++i) v[i] = bits_float(static_cast<uint32_t>(p[i]) << 16);
    } else {
      for (int32_t i = 0; i < EPD_FP8_BLOCK; ++i) v[i] = load_as_float(row, base + i, dtype);
    }
    float amax = 0.0f;
    for (int32_t i = 0; i < EPD_FP8_BLOCK; ++i) amax = std::max(amax, std::fabs(v[i]));  // NaN ignored, as fmaxf
    const float scale = amax / 448.0f;
    scales[b] = scale;
    uint8_t* out = q + base;
    if (scale == 0.0f) {
      for (int32_t i = 0; i < EPD_FP8_BLOCK; ++i) out[i] = 0;
      continue;
    }
    for (int32_t i = 0; i < EPD_FP8_BLOCK; ++i) out[i] = float_to_fp8_e4m3(v[i] / scale);
  }
}

}  // namespace epd
