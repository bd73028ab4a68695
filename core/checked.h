// checked.h — overflow-checked unsigned size arithmetic for everything that
// computes byte counts and offsets from a group spec (layout, staging, the
// executors, the daemon's and the client's mappings).
//
// checked_add / checked_mul return false (and leave *out unspecified) when the
// exact result does not fit in uint64_t. CheckedSize carries a sticky overflow
// flag through a chain of products and sums, so a whole size formula can be
// written once and checked at its end. Thread-safety: values and pure
// functions only.
#pragma once

#include <cstdint>

namespace epd {

[[nodiscard]] inline bool checked_add(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

[[nodiscard]] inline bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

// Rounds v up to a multiple of a (a > 0); false when that exceeds uint64_t.
[[nodiscard]] inline bool checked_align_up(uint64_t v, uint64_t a, uint64_t* out) {
  uint64_t sum;
  if (!checked_add(v, a - 1, &sum)) return false;
  *out = sum / a * a;
  return true;
}

// A uint64_t that remembers whether any step producing it overflowed. Once
// overflowed it stays so; value() is then meaningless (saturated to UINT64_MAX
// so that a caller who ignores the flag asks for an impossible size, never a
// wrapped small one).
class CheckedSize {
 public:
  constexpr CheckedSize() = default;
  constexpr CheckedSize(uint64_t v) : v_(v) {}  // NOLINT: implicit on purpose

  bool overflowed() const { return overflow_; }
  uint64_t value() const { return overflow_ ? UINT64_MAX : v_; }

  friend CheckedSize operator*(CheckedSize a, CheckedSize b) {
    CheckedSize r;
    r.overflow_ = a.overflow_ || b.overflow_ || !checked_mul(a.v_, b.v_, &r.v_);
    return r;
  }
  friend CheckedSize operator+(CheckedSize a, CheckedSize b) {
    CheckedSize r;
    r.overflow_ = a.overflow_ || b.overflow_ || !checked_add(a.v_, b.v_, &r.v_);
    return r;
  }
  CheckedSize& operator*=(CheckedSize b) { return *this = *this * b; }
  CheckedSize& operator+=(CheckedSize b) { return *this = *this + b; }
  CheckedSize align_up(uint64_t a) const {
    CheckedSize r;
    r.overflow_ = overflow_ || !checked_align_up(v_, a, &r.v_);
    return r;
  }

 private:
  uint64_t v_ = 0;
  bool overflow_ = false;
};

}  // namespace epd
