// status.h — epd::Status and epd::Result<T>: the internal error type.
//
// A Status is a code from epd_status_t plus a message that names the offending
// value. It is a small value type; copy it freely. No exceptions cross module
// or thread boundaries: functions that can fail return Status or Result<T>.
// Thread-safety: values only, no shared state.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include "epd/types.h"

namespace epd {

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(epd_status_t code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return Status(); }

  bool is_ok() const { return code_ == EPD_OK; }
  explicit operator bool() const { return is_ok(); }
  epd_status_t code() const { return code_; }
  const std::string& message() const { return message_; }
  // "EPD_ERR_X: message" for logs.
  std::string to_string() const;

 private:
  epd_status_t code_ = EPD_OK;
  std::string message_;
};

// printf-style constructor for error statuses.
Status make_status(epd_status_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// errno-based status: "what: strerror(err)".
Status errno_status(const char* what, int err);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const {
    static const Status kOk;
    return is_ok() ? kOk : std::get<Status>(v_);
  }
  T& value() { return std::get<T>(v_); }
  const T& value() const { return std::get<T>(v_); }
  T* operator->() { return &value(); }
  T& operator*() { return value(); }

 private:
  std::variant<T, Status> v_;
};

#define EPD_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::epd::Status epd_status_tmp_ = (expr);    \
    if (!epd_status_tmp_.is_ok()) return epd_status_tmp_; \
  } while (0)

}  // namespace epd
