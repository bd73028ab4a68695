// numeric_test.cc — the wire-format conversions of numeric.h: known fp8 e4m3
// encodings value by value, bf16 / fp16 spot checks (ties, overflow, NaN), the
// block quantiser, and sweeps against the oracle's independent conversions.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "numeric.h"
#include "oracle.h"

namespace {

using epd_test::oracle_float_to_bf16;
using epd_test::oracle_float_to_fp16;
using epd_test::oracle_float_to_fp8;

float f_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t u_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// ---- fp8 e4m3 -------------------------------------------------------------------------

struct Fp8Case {
  float value;
  uint8_t code;
  const char* what;
};

TEST(Fp8E4m3, KnownEncodings) {
  const Fp8Case cases[] = {
      {0.0f, 0x00, "zero"},
      {-0.0f, 0x80, "negative zero keeps its sign"},
      {std::ldexp(1.0f, -9), 0x01, "min subnormal 2^-9"},
      {-std::ldexp(1.0f, -9), 0x81, "-min subnormal"},
      {7 * std::ldexp(1.0f, -9), 0x07, "max subnormal 7 * 2^-9"},
      {std::ldexp(1.0f, -6), 0x08, "min normal 2^-6"},
      {1.0f, 0x38, "1.0"},
      {-1.0f, 0xb8, "-1.0"},
      {1.125f, 0x39, "1 + 1/8"},
      {2.0f, 0x40, "2.0"},
      {240.0f, 0x77, "240"},
      {256.0f, 0x78, "256"},
      {416.0f, 0x7d, "416"},
      {448.0f, 0x7e, "max 448"},
      {-448.0f, 0xfe, "-448"},
      {449.0f, 0x7e, "just above max saturates"},
      {464.0f, 0x7e, "halfway to the (NaN) code 480 saturates"},
      {500.0f, 0x7e, ">448 saturates"},
      {1.0e30f, 0x7e, "huge saturates"},
      {INFINITY, 0x7e, "+inf saturates"},
      {-INFINITY, 0xfe, "-inf saturates"},
      {-1000.0f, 0xfe, "< -448 saturates"},
      // ties to even
      {std::ldexp(1.0f, -10), 0x00, "half of min subnormal: tie, even is 0"},
      {3 * std::ldexp(1.0f, -10), 0x02, "1.5 * 2^-9: tie between 0x01 and 0x02"},
      {15 * std::ldexp(1.0f, -10), 0x08, "7.5 * 2^-9: tie between max subnormal and min normal"},
      {1.0625f, 0x38, "tie between 1.0 (0x38) and 1.125 (0x39)"},
      {1.1875f, 0x3a, "tie between 1.125 (0x39) and 1.25 (0x3a)"},
      {std::nextafter(1.0625f, 2.0f), 0x39, "just above a tie rounds up"},
      {std::nextafter(1.1875f, 0.0f), 0x39, "just below a tie rounds down"},
      {432.0f, 0x7e, "tie between 416 (0x7d) and 448 (0x7e): even"},
      {-std::ldexp(1.0f, -11), 0x80, "tiny negative rounds to -0"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    EXPECT_EQ(epd::float_to_fp8_e4m3(c.value), c.code) << "value " << c.value;
    EXPECT_EQ(oracle_float_to_fp8(c.value), c.code) << "oracle, value " << c.value;
  }
}

TEST(Fp8E4m3, NanStaysNan) {
  EXPECT_EQ(epd::float_to_fp8_e4m3(NAN), 0x7f);
  EXPECT_EQ(epd::float_to_fp8_e4m3(-NAN), 0xff);
  EXPECT_EQ(epd::float_to_fp8_e4m3(f_of(0x7fa00001u)), 0x7f) << "signalling NaN";
  EXPECT_TRUE(std::isnan(epd::fp8_e4m3_to_float(0x7f)));
  EXPECT_TRUE(std::isnan(epd::fp8_e4m3_to_float(0xff)));
}

TEST(Fp8E4m3, DecodesEveryCodeAndRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    if ((c & 0x7f) == 0x7f) continue;
    const float v = epd::fp8_e4m3_to_float(code);
    EXPECT_EQ(u_of(v), u_of(epd_test::oracle_fp8_to_float(code))) << "code " << c;
    EXPECT_EQ(epd::float_to_fp8_e4m3(v), code) << "code " << c << " value " << v;
  }
  EXPECT_EQ(epd::fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(epd::fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));
}

TEST(Fp8E4m3, MidpointsBetweenEveryPairOfCodesMatchOracle) {
  // Every midpoint and its float neighbours: where rounding mistakes live.
  for (int c = 0; c < 0x7e; ++c) {
    const float lo = epd::fp8_e4m3_to_float(static_cast<uint8_t>(c));
    const float hi = epd::fp8_e4m3_to_float(static_cast<uint8_t>(c + 1));
    const float mid = (lo + hi) / 2;
    for (float v : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1000.0f)}) {
      for (float s : {v, -v}) EXPECT_EQ(epd::float_to_fp8_e4m3(s), oracle_float_to_fp8(s)) << "value " << s;
    }
  }
}

TEST(Fp8E4m3, RandomFloatsMatchOracle) {
  std::mt19937_64 rng(2026);
  for (int i = 0; i < 200000; ++i) {
    // exponents around the fp8 range, random mantissas and signs
    const uint32_t exp = 127 - 14 + static_cast<uint32_t>(rng() % 26);
    const uint32_t u = (static_cast<uint32_t>(rng()) & 0x807fffffu) | (exp << 23);
    const float f = f_of(u);
    ASSERT_EQ(epd::float_to_fp8_e4m3(f), oracle_float_to_fp8(f)) << "value " << f << " bits " << std::hex << u;
  }
}

// ---- bf16 -----------------------------------------------------------------------------

TEST(Bf16, SpotChecks) {
  EXPECT_EQ(epd::float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(epd::float_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(epd::float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(epd::float_to_bf16(f_of(0x3f808000u)), 0x3f80) << "tie 1 + 2^-8 goes to even 0x3f80";
  EXPECT_EQ(epd::float_to_bf16(f_of(0x3f818000u)), 0x3f82) << "tie 1 + 3 * 2^-8 goes to even 0x3f82";
  EXPECT_EQ(epd::float_to_bf16(f_of(0x3f808001u)), 0x3f81) << "above a tie rounds up";
  EXPECT_EQ(epd::float_to_bf16(f_of(0x3f807fffu)), 0x3f80) << "below a tie rounds down";
  EXPECT_EQ(epd::float_to_bf16(f_of(0x7f7fffffu)), 0x7f80) << "FLT_MAX rounds to +inf";
  EXPECT_EQ(epd::float_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(epd::float_to_bf16(-INFINITY), 0xff80);
  EXPECT_EQ(epd::float_to_bf16(f_of(0x00008000u)), 0x0000) << "subnormal tie to even 0";
  EXPECT_EQ(epd::float_to_bf16(f_of(0x00018000u)), 0x0002) << "subnormal tie to even 2";
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xffc00000u, 0x7fffffffu}) {
    const uint16_t h = epd::float_to_bf16(f_of(nan));
    EXPECT_TRUE((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0) << "NaN " << std::hex << nan << " -> " << h;
    EXPECT_EQ(h & 0x8000, (nan >> 16) & 0x8000) << "NaN sign kept";
  }
  EXPECT_EQ(epd::bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(epd::bf16_to_float(0x0001), std::ldexp(1.0f, -133));
  EXPECT_TRUE(std::isnan(epd::bf16_to_float(0x7fc1)));
}

TEST(Bf16, RandomFloatsMatchOracle) {
  std::mt19937_64 rng(16);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t u = static_cast<uint32_t>(rng());
    const float f = f_of(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(epd::float_to_bf16(f), oracle_float_to_bf16(f)) << "bits " << std::hex << u;
  }
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float v = epd::bf16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(v)) continue;
    ASSERT_EQ(u_of(v), u_of(epd_test::oracle_bf16_to_float(static_cast<uint16_t>(h)))) << "code " << h;
    ASSERT_EQ(epd::float_to_bf16(v), h) << "round trip of code " << h;
  }
}

// ---- fp16 -----------------------------------------------------------------------------

// float -> fp16 by other means than the oracle's table search: the compiler's
// _Float16 where it has one (g++ 12; clang only from 15 on x86-64), else the
// FPU's ties-to-even rounding of |f| counted in ulps of its fp16 binade (codes
// are consecutive in magnitude, so the count lands on the code). The two paths
// agree on every finite float.
#if defined(__FLT16_MAX__)
uint16_t via_float16(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
#else
uint16_t via_float16(float f) {
  const uint16_t sign = static_cast<uint16_t>((u_of(f) >> 16) & 0x8000u);
  const double a = std::fabs(static_cast<double>(f));
  const int e = std::max(std::ilogb(a), -14);  // subnormals share the lowest binade
  const double ulps = std::nearbyint(std::ldexp(a, 10 - e));
  const double code = (e + 14.0) * 1024.0 + ulps;  // 0x7c00 and past it: overflow to infinity
  return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::min(code, double{0x7c00})));
}
#endif

TEST(Fp16, SpotChecks) {
  EXPECT_EQ(epd::float_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(epd::float_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(epd::float_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(epd::float_to_fp16(65504.0f), 0x7bff) << "max finite";
  EXPECT_EQ(epd::float_to_fp16(65519.0f), 0x7bff) << "below the halfway point to 65536";
  EXPECT_EQ(epd::float_to_fp16(65520.0f), 0x7c00) << "tie rounds to even: infinity";
  EXPECT_EQ(epd::float_to_fp16(1.0e6f), 0x7c00);
  EXPECT_EQ(epd::float_to_fp16(-INFINITY), 0xfc00);
  EXPECT_EQ(epd::float_to_fp16(std::ldexp(1.0f, -24)), 0x0001) << "min subnormal";
  EXPECT_EQ(epd::float_to_fp16(std::ldexp(1.0f, -25)), 0x0000) << "tie to even 0";
  EXPECT_EQ(epd::float_to_fp16(3 * std::ldexp(1.0f, -25)), 0x0002) << "tie to even 2";
  EXPECT_EQ(epd::float_to_fp16(std::ldexp(1023.5f, -24)), 0x0400) << "max subnormal + half rounds to min normal";
  EXPECT_EQ(epd::float_to_fp16(std::ldexp(1.0f, -14)), 0x0400) << "min normal";
  EXPECT_EQ(epd::float_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00) << "tie 1 + 2^-11 to even";
  EXPECT_EQ(epd::float_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02) << "tie 1 + 3 * 2^-11 to even";
  EXPECT_EQ(epd::float_to_fp16(2047.5f), 0x6800) << "2047.5 -> 2048 (carry into the exponent)";
  const uint16_t n = epd::float_to_fp16(NAN);
  EXPECT_TRUE((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0);
  EXPECT_EQ(epd::fp16_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(epd::fp16_to_float(0x7c00), INFINITY);
  EXPECT_TRUE(std::isnan(epd::fp16_to_float(0x7e00)));
}

TEST(Fp16, OracleAgreesWithCompilerFloat16) {
  std::mt19937_64 rng(1616);
  for (int i = 0; i < 100000; ++i) {
    const uint32_t exp = 127 - 30 + static_cast<uint32_t>(rng() % 50);
    const float f = f_of((static_cast<uint32_t>(rng()) & 0x807fffffu) | (exp << 23));
    ASSERT_EQ(oracle_float_to_fp16(f), via_float16(f)) << "value " << f;
  }
}

TEST(Fp16, RandomFloatsMatchOracle) {
  std::mt19937_64 rng(1617);
  for (int i = 0; i < 200000; ++i) {
    const uint32_t exp = 127 - 30 + static_cast<uint32_t>(rng() % 50);
    const float f = f_of((static_cast<uint32_t>(rng()) & 0x807fffffu) | (exp << 23));
    ASSERT_EQ(epd::float_to_fp16(f), oracle_float_to_fp16(f)) << "value " << f;
  }
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float v = epd::fp16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(v)) continue;
    ASSERT_EQ(u_of(v), u_of(epd_test::oracle_fp16_to_float(static_cast<uint16_t>(h)))) << "code " << h;
    ASSERT_EQ(epd::float_to_fp16(v), h) << "round trip of code " << h;
    // every midpoint to the next code
    if ((h & 0x7fff) < 0x7bff) {
      const float next = epd::fp16_to_float(static_cast<uint16_t>(h + 1));
      const float mid = static_cast<float>((static_cast<double>(v) + next) / 2);
      ASSERT_EQ(epd::float_to_fp16(mid), via_float16(mid)) << "midpoint after code " << h;
    }
  }
}

// ---- block quantiser -----------------------------------------------------------------

TEST(QuantizeFp8, ScaleIsAmaxOver448PerBlock) {
  std::vector<float> row(256);
  for (int i = 0; i < 256; ++i) row[i] = static_cast<float>((i % 17) - 8) * 0.25f;
  row[37] = -7.5f;   // amax of block 0
  row[200] = 3.0f;   // amax of block 1 is 3.0 (others are at most 2.0)
  std::vector<uint8_t> q(256);
  float scales[2];
  epd::quantize_row_fp8(row.data(), 256, EPD_DTYPE_FP32, q.data(), scales);
  EXPECT_EQ(scales[0], 7.5f / 448.0f);
  EXPECT_EQ(scales[1], 3.0f / 448.0f);
  EXPECT_EQ(q[37], 0xfe) << "the amax element encodes to -448";
  EXPECT_EQ(q[200], 0x7e) << "the amax element encodes to 448";
  for (int i = 0; i < 256; ++i)
    EXPECT_EQ(q[i], oracle_float_to_fp8(row[i] / scales[i / 128])) << "element " << i;
}

TEST(QuantizeFp8, ZeroBlockHasZeroScaleAndZeroCodes) {
  std::vector<float> row(384, 0.0f);
  for (int i = 128; i < 256; ++i) row[i] = 1.0f + static_cast<float>(i);
  row[300] = -0.0f;  // block 2: all zeros (one negative zero)
  std::vector<uint8_t> q(384, 0xcc);
  float scales[3] = {-1.0f, -1.0f, -1.0f};
  epd::quantize_row_fp8(row.data(), 384, EPD_DTYPE_FP32, q.data(), scales);
  EXPECT_EQ(scales[0], 0.0f);
  EXPECT_EQ(scales[2], 0.0f);
  EXPECT_GT(scales[1], 0.0f);
  for (int i = 0; i < 128; ++i) EXPECT_EQ(q[i], 0) << i;
  for (int i = 256; i < 384; ++i) EXPECT_EQ(q[i] & 0x7f, 0) << i;
}

TEST(QuantizeFp8, RandomRowsMatchOracleForEveryDtype) {
  std::mt19937_64 rng(448);
  for (epd_dtype_t d : {EPD_DTYPE_BF16, EPD_DTYPE_FP16, EPD_DTYPE_FP32}) {
    for (int rep = 0; rep < 50; ++rep) {
      const int32_t H = 128 * static_cast<int32_t>(1 + rng() % 4);
      std::vector<uint8_t> row(static_cast<size_t>(H) * epd_test::oracle_dtype_bytes(d));
      for (int32_t i = 0; i < H; ++i) {
        const float v = std::ldexp(std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng),
                                   static_cast<int>(rng() % 20) - 12);
        epd_test::oracle_store(row.data(), i, v, d);
      }
      std::vector<uint8_t> q(static_cast<size_t>(H)), oq(static_cast<size_t>(H));
      std::vector<float> s(static_cast<size_t>(H / 128)), os(static_cast<size_t>(H / 128));
      epd::quantize_row_fp8(row.data(), H, d, q.data(), s.data());
      epd_test::oracle_quantize_row(row.data(), H, d, oq.data(), os.data());
      ASSERT_EQ(q, oq) << "dtype " << d << " rep " << rep;
      ASSERT_EQ(0, std::memcmp(s.data(), os.data(), s.size() * 4)) << "dtype " << d << " rep " << rep;
    }
  }
}

}  // namespace
