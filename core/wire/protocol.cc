// protocol.cc — encoding, validating decoding and SEQPACKET I/O of epd messages.
#include "protocol.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <type_traits>

namespace epd::proto {

namespace {

class Writer {
 public:
  explicit Writer(MsgType type, uint64_t request_id) : buf_(kHeaderBytes, 0) {
    type_ = type;
    request_id_ = request_id;
  }
  void u8(uint8_t v) { buf_.push_back(v); }
  void u16(uint16_t v) { raw(&v, 2); }
  void u32(uint32_t v) { raw(&v, 4); }
  void i32(int32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    raw(s.data(), s.size());
  }
  std::vector<uint8_t> finish() {
    Header h;
    h.type = type_;
    h.length = static_cast<uint32_t>(buf_.size() - kHeaderBytes);
    h.request_id = request_id_;
    uint8_t* p = buf_.data();
    std::memcpy(p + 0, &h.magic, 4);
    std::memcpy(p + 4, &h.major, 2);
    std::memcpy(p + 6, &h.minor, 2);
    const uint16_t t = static_cast<uint16_t>(h.type);
    std::memcpy(p + 8, &t, 2);
    std::memcpy(p + 10, &h.flags, 2);
    std::memcpy(p + 12, &h.length, 4);
    std::memcpy(p + 16, &h.request_id, 8);
    return std::move(buf_);
  }

 private:
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
  }
  std::vector<uint8_t> buf_;
  MsgType type_;
  uint64_t request_id_;
};

// Bounds-checked reader: the first failure sticks and names the field.
class Reader {
 public:
  Reader(const Frame& f, const char* what) : p_(f.payload), n_(f.payload_len), what_(what) {}
  bool raw(void* dst, size_t k, const char* field) {
    if (!st_.is_ok()) return false;
    if (k > n_ - off_) {
      st_ = make_status(EPD_ERR_PROTOCOL, "%s: truncated at field '%s' (needs %zu bytes at offset %zu, payload has %zu)",
                        what_, field, k, off_, n_);
      return false;
    }
    std::memcpy(dst, p_ + off_, k);
    off_ += k;
    return true;
  }
  uint8_t u8(const char* f) { uint8_t v = 0; raw(&v, 1, f); return v; }
  uint32_t u32(const char* f) { uint32_t v = 0; raw(&v, 4, f); return v; }
  int32_t i32(const char* f) { int32_t v = 0; raw(&v, 4, f); return v; }
  uint64_t u64(const char* f) { uint64_t v = 0; raw(&v, 8, f); return v; }
  std::string str(const char* f, size_t max) {
    const uint32_t len = u32(f);
    if (!st_.is_ok()) return {};
    if (len > max) {
      fail("%s: field '%s' has length %u, more than %zu", what_, f, len, max);
      return {};
    }
    std::string s(len, '\0');
    raw(s.data(), len, f);
    return s;
  }
  // Checks `v` is within [lo, hi].
  void range(const char* field, int64_t v, int64_t lo, int64_t hi) {
    if (st_.is_ok() && (v < lo || v > hi))
      fail("%s: field '%s' = %lld is outside [%lld, %lld]", what_, field, static_cast<long long>(v),
           static_cast<long long>(lo), static_cast<long long>(hi));
  }
  void fail(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
    if (!st_.is_ok()) return;
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    st_ = Status(EPD_ERR_PROTOCOL, buf);
  }
  bool at_end() const { return off_ >= n_; }
  Status finish() {
    if (st_.is_ok() && off_ != n_)
      fail("%s: %zu trailing bytes after the last field", what_, n_ - off_);
    return st_;
  }
  bool ok() const { return st_.is_ok(); }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t off_ = 0;
  const char* what_;
  Status st_;
};

Status expect_type(const Frame& f, MsgType t) {
  if (f.header.type != t)
    return make_status(EPD_ERR_PROTOCOL, "expected a %s message, got %s (type %u)", msg_type_name(t),
                       msg_type_name(f.header.type), static_cast<unsigned>(f.header.type));
  return Status::ok();
}

constexpr size_t kMaxText = 64 * 1024;

}  // namespace

const char* msg_type_name(MsgType t) {
  const MsgInfo* m = find_msg(t);
  return m ? m->name : "UNKNOWN";
}

Result<Frame> decode_frame(const uint8_t* data, size_t len) {
  if (len < kHeaderBytes)
    return make_status(EPD_ERR_PROTOCOL, "message truncated: %zu bytes, the header alone is %zu", len,
                       kHeaderBytes);
  if (len > kMaxMessage)
    return make_status(EPD_ERR_PROTOCOL, "message of %zu bytes exceeds the limit of %zu", len, kMaxMessage);
  Frame f;
  uint16_t type = 0;
  std::memcpy(&f.header.magic, data + 0, 4);
  std::memcpy(&f.header.major, data + 4, 2);
  std::memcpy(&f.header.minor, data + 6, 2);
  std::memcpy(&type, data + 8, 2);
  std::memcpy(&f.header.flags, data + 10, 2);
  std::memcpy(&f.header.length, data + 12, 4);
  std::memcpy(&f.header.request_id, data + 16, 8);
  if (f.header.magic != kMagic)
    return make_status(EPD_ERR_PROTOCOL, "bad magic 0x%08x (expected 0x%08x 'EPD1')", f.header.magic, kMagic);
  if (f.header.major != kMajor)
    return make_status(EPD_ERR_VERSION_MISMATCH,
                       "protocol version %u.%u of the peer is not compatible with version %u.%u (major "
                       "versions differ)",
                       f.header.major, f.header.minor, kMajor, kMinor);
  if (find_msg(type) == nullptr) return make_status(EPD_ERR_PROTOCOL, "unknown message type %u", type);
  f.header.type = static_cast<MsgType>(type);
  if (f.header.flags != 0)
    return make_status(EPD_ERR_PROTOCOL, "header flags = 0x%x, must be 0", f.header.flags);
  if (f.header.length != len - kHeaderBytes)
    return make_status(EPD_ERR_PROTOCOL, "%s: header length %u does not match the %zu payload bytes received",
                       msg_type_name(f.header.type), f.header.length, len - kHeaderBytes);
  f.payload = data + kHeaderBytes;
  f.payload_len = len - kHeaderBytes;
  return f;
}

void set_version(std::vector<uint8_t>& record, uint16_t major, uint16_t minor) {
  if (record.size() < kHeaderBytes) return;
  std::memcpy(record.data() + 4, &major, 2);
  std::memcpy(record.data() + 6, &minor, 2);
}

// ---- encoders --------------------------------------------------------------------------
std::vector<uint8_t> encode(const Hello& m, uint64_t id) {
  Writer w(MsgType::kHello, id);
  w.u32(m.client_pid);
  w.str(m.client_name);
  return w.finish();
}

std::vector<uint8_t> encode(const HelloReply& m, uint64_t id) {
  Writer w(MsgType::kHelloReply, id);
  w.i32(m.status);
  w.str(m.message);
  w.u32(m.daemon_pid);
  w.str(m.daemon_version);
  w.u64(m.capabilities);
  w.u64(m.session_id);
  w.u32(m.shm_bytes);
  if (m.join_timeout_ms != 0) w.u32(m.join_timeout_ms);
  return w.finish();
}

namespace {

// A spec field on the wire, by its type (spec_fields.h): enums travel as u32.
template <typename T>
void put_spec_scalar(Writer& w, T v) {
  if constexpr (std::is_enum_v<T>) {
    w.u32(static_cast<uint32_t>(v));
  } else if constexpr (std::is_same_v<T, int32_t>) {
    w.i32(v);
  } else if constexpr (std::is_same_v<T, uint32_t>) {
    w.u32(v);
  } else {
    static_assert(std::is_same_v<T, uint64_t>, "a spec field type without a wire encoding");
    w.u64(v);
  }
}

}  // namespace

// The spec: its name, every scalar of the field list in order (timeout_ms 0,
// "the daemon's default", travels as 0), then placement and expert_owner.
std::vector<uint8_t> encode(const Join& m, uint64_t id) {
  Writer w(MsgType::kJoin, id);
  const GroupSpec& s = m.spec;
  w.str(s.name);
  for_each_spec_field([&](const auto& f) {
    if constexpr (!kIsSpecHand<decltype(f)>) put_spec_scalar(w, s.*f.member);
  });
  w.u32(static_cast<uint32_t>(s.placement.size()));
  for (const auto& p : s.placement) {
    w.i32(p.node);
    w.i32(p.gpu);
  }
  // The owner table travels only when it differs from the contiguous default.
  bool contiguous = static_cast<int32_t>(s.expert_owner.size()) == s.num_experts;
  for (int32_t e = 0; contiguous && e < s.num_experts; ++e)
    contiguous = s.expert_owner[e] == GroupSpec::contiguous_owner(e, s.num_experts, s.world_size);
  w.u8(contiguous ? 0 : 1);
  if (!contiguous) {
    w.u32(static_cast<uint32_t>(s.expert_owner.size()));
    for (int32_t o : s.expert_owner) w.i32(o);
  }
  return w.finish();
}

std::vector<uint8_t> encode(const JoinReply& m, uint64_t id) {
  Writer w(MsgType::kJoinReply, id);
  w.i32(m.status);
  w.str(m.message);
  w.u32(m.member_index);
  w.u64(m.group_id);
  w.u64(m.generation);
  w.u64(m.workspace_bytes);
  w.i32(m.gpu_device);
  w.u64(m.gpu_mapped_bytes);
  return w.finish();
}

std::vector<uint8_t> encode(const Leave& m, uint64_t id) {
  Writer w(MsgType::kLeave, id);
  w.u32(m.member_index);
  return w.finish();
}

std::vector<uint8_t> encode(MsgType type, const Reply& m, uint64_t id) {
  Writer w(type, id);
  w.i32(m.status);
  w.str(m.message);
  return w.finish();
}

std::vector<uint8_t> encode(const StatusQuery& m, uint64_t id) {
  Writer w(MsgType::kStatus, id);
  w.u32(static_cast<uint32_t>(m.what));
  w.u32(m.json);
  return w.finish();
}

std::vector<uint8_t> encode(const StatusReply& m, uint64_t id) {
  Writer w(MsgType::kStatusReply, id);
  w.i32(m.status);
  w.str(m.body);
  return w.finish();
}

// ---- decoders --------------------------------------------------------------------------
namespace {

void check_status_code(Reader& r, int32_t v) { r.range("status", v, EPD_ERR_GROUP_CLOSED - 64, 0); }

// The table's rows that carry the Reply payload (LEAVE_REPLY, ERROR, SHUTDOWN).
bool has_reply_payload(MsgType t) {
  const MsgInfo* m = find_msg(t);
  return m != nullptr && m->decode == &decode_payload<decode_reply>;
}

// "LEAVE_REPLY, ERROR or SHUTDOWN", from the table.
std::string reply_type_names() {
  std::vector<const char*> names;
  for (const MsgInfo& m : kMessages)
    if (has_reply_payload(m.type)) names.push_back(m.name);
  std::string s;
  for (size_t i = 0; i < names.size(); ++i)
    s += std::string(i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return s;
}

}  // namespace

Result<Hello> decode_hello(const Frame& f) {
  EPD_RETURN_IF_ERROR(expect_type(f, MsgType::kHello));
  Reader r(f, "HELLO");
  Hello m;
  m.client_pid = r.u32("client_pid");
  m.client_name = r.str("client_name", 256);
  EPD_RETURN_IF_ERROR(r.finish());
  return m;
}

Result<HelloReply> decode_hello_reply(const Frame& f) {
  EPD_RETURN_IF_ERROR(expect_type(f, MsgType::kHelloReply));
  Reader r(f, "HELLO_REPLY");
  HelloReply m;
  m.status = r.i32("status");
  check_status_code(r, m.status);
  m.message = r.str("message", kMaxText);
  m.daemon_pid = r.u32("daemon_pid");
  m.daemon_version = r.str("daemon_version", 256);
  m.capabilities = r.u64("capabilities");
  m.session_id = r.u64("session_id");
  m.shm_bytes = r.u32("shm_bytes");
  if (!r.at_end()) m.join_timeout_ms = r.u32("join_timeout_ms");
  EPD_RETURN_IF_ERROR(r.finish());
  return m;
}

namespace {

template <typename T>
T get_spec_scalar(Reader& r, const char* field) {
  if constexpr (std::is_enum_v<T>) {
    // Only a value the enum names becomes one (any other would be undefined
    // to hold in the enum type): an unknown one fails the message, named.
    const uint32_t raw = r.u32(field);
    for (const auto& e : EnumNames<T>::kNames)
      if (static_cast<uint32_t>(e.value) == raw) return e.value;
    r.fail("JOIN: %s = %u is not a known %s", field, raw, EnumNames<T>::kCType);
    return EnumNames<T>::kNames[0].value;
  } else if constexpr (std::is_same_v<T, int32_t>) {
    return r.i32(field);
  } else if constexpr (std::is_same_v<T, uint32_t>) {
    return r.u32(field);
  } else {
    static_assert(std::is_same_v<T, uint64_t>, "a spec field type without a wire encoding");
    return r.u64(field);
  }
}

}  // namespace

Result<Join> decode_join(const Frame& f) {
  EPD_RETURN_IF_ERROR(expect_type(f, MsgType::kJoin));
  Reader r(f, "JOIN");
  Join m;
  GroupSpec& s = m.spec;
  s.name = r.str("name", EPD_NAME_MAX - 1);
  for_each_spec_field([&](const auto& field) {
    if constexpr (!kIsSpecHand<decltype(field)>) {
      using T = typename std::decay_t<decltype(field)>::Type;
      // A client of minor < 3 sends no executor: its groups run on the daemon.
      if (field.id == SpecFieldId::executor && f.header.major == 1 && f.header.minor < 3) return;
      s.*field.member = get_spec_scalar<T>(r, field.name);
      // The array sizes are bounded before the arrays are read.
      if (field.id == SpecFieldId::world_size) r.range(field.name, s.world_size, 1, EPD_MAX_WORLD_SIZE);
      if (field.id == SpecFieldId::num_experts) r.range(field.name, s.num_experts, 1, EPD_MAX_EXPERTS);
    }
  });
  const uint32_t np = r.u32("placement count");
  if (r.ok() && np != static_cast<uint32_t>(s.world_size))
    r.fail("JOIN: placement count %u differs from world_size %d", np, s.world_size);
  for (uint32_t i = 0; r.ok() && i < np; ++i) {
    epd_placement_t p{};
    p.node = r.i32("placement.node");
    p.gpu = r.i32("placement.gpu");
    s.placement.push_back(p);
  }
  const uint8_t owner_kind = r.u8("owner kind");
  r.range("owner kind", owner_kind, 0, 1);
  if (r.ok() && owner_kind == 0) {
    s.expert_owner.resize(static_cast<size_t>(s.num_experts));
    for (int32_t e = 0; e < s.num_experts; ++e)
      s.expert_owner[e] = GroupSpec::contiguous_owner(e, s.num_experts, s.world_size);
  } else if (r.ok()) {
    const uint32_t ne = r.u32("expert_owner count");
    if (r.ok() && ne != static_cast<uint32_t>(s.num_experts))
      r.fail("JOIN: expert_owner count %u differs from num_experts %d", ne, s.num_experts);
    for (uint32_t e = 0; r.ok() && e < ne; ++e) s.expert_owner.push_back(r.i32("expert_owner"));
  }
  EPD_RETURN_IF_ERROR(r.finish());
  return m;
}

Result<JoinReply> decode_join_reply(const Frame& f) {
  EPD_RETURN_IF_ERROR(expect_type(f, MsgType::kJoinReply));
  Reader r(f, "JOIN_REPLY");
  JoinReply m;
  m.status = r.i32("status");
  check_status_code(r, m.status);
  m.message = r.str("message", kMaxText);
  m.member_index = r.u32("member_index");
  m.group_id = r.u64("group_id");
  m.generation = r.u64("generation");
  m.workspace_bytes = r.u64("workspace_bytes");
  m.gpu_device = r.i32("gpu_device");
  m.gpu_mapped_bytes = r.u64("gpu_mapped_bytes");
  EPD_RETURN_IF_ERROR(r.finish());
  return m;
}

Result<Leave> decode_leave(const Frame& f) {
  EPD_RETURN_IF_ERROR(expect_type(f, MsgType::kLeave));
  Reader r(f, "LEAVE");
  Leave m;
  m.member_index = r.u32("member_index");
  EPD_RETURN_IF_ERROR(r.finish());
  return m;
}

Result<Reply> decode_reply(const Frame& f) {
  const MsgType t = f.header.type;
  if (!has_reply_payload(t))
    return make_status(EPD_ERR_PROTOCOL, "expected %s, got %s", reply_type_names().c_str(), msg_type_name(t));
  Reader r(f, msg_type_name(t));
  Reply m;
  m.status = r.i32("status");
  check_status_code(r, m.status);
  m.message = r.str("message", kMaxText);
  EPD_RETURN_IF_ERROR(r.finish());
  return m;
}

Result<StatusQuery> decode_status_query(const Frame& f) {
  EPD_RETURN_IF_ERROR(expect_type(f, MsgType::kStatus));
  Reader r(f, "STATUS");
  StatusQuery m;
  const uint32_t what = r.u32("what");
  r.range("what", what, 0, static_cast<int64_t>(StatusWhat::kTopology));
  m.what = static_cast<StatusWhat>(what);
  m.json = r.u32("json");
  r.range("json", m.json, 0, 1);
  EPD_RETURN_IF_ERROR(r.finish());
  return m;
}

Result<StatusReply> decode_status_reply(const Frame& f) {
  EPD_RETURN_IF_ERROR(expect_type(f, MsgType::kStatusReply));
  Reader r(f, "STATUS_REPLY");
  StatusReply m;
  m.status = r.i32("status");
  check_status_code(r, m.status);
  m.body = r.str("body", kMaxMessage);
  EPD_RETURN_IF_ERROR(r.finish());
  return m;
}

Status decode_join_checked(const Frame& f) {
  auto j = decode_join(f);
  if (!j) return j.status();
  return j->spec.validate();
}

Status decode_any(const uint8_t* data, size_t len) {
  auto f = decode_frame(data, len);
  if (!f) return f.status();
  return find_msg(f->header.type)->decode(*f);  // decode_frame accepts only the table's types
}

// ---- socket I/O --------------------------------------------------------------------------
int send_record(int sock, const std::vector<uint8_t>& record, const int* fds, int nfds, bool nonblock) {
  iovec iov{const_cast<uint8_t*>(record.data()), record.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  if (nfds > 0) {
    if (nfds > kMaxFds) return -EINVAL;
    std::memset(ctrl, 0, sizeof ctrl);
    msg.msg_control = ctrl;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * static_cast<size_t>(nfds));
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * static_cast<size_t>(nfds));
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * static_cast<size_t>(nfds));
  }
  for (;;) {
    const ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL | (nonblock ? MSG_DONTWAIT : 0));
    if (n >= 0) return 0;
    if (errno == EINTR) continue;
    return -errno;
  }
}

int recv_record(int sock, Received& out, bool nonblock) {
  out.data.resize(kMaxMessage + 1);
  out.fds.clear();
  out.eof = out.truncated = false;
  iovec iov{out.data.data(), out.data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int) * kMaxFds)];
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  ssize_t n;
  for (;;) {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (nonblock ? MSG_DONTWAIT : 0));
    if (n >= 0) break;
    if (errno == EINTR) continue;
    out.data.clear();
    return -errno;
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      out.fds.push_back(fd);
    }
  }
  if (n == 0) {
    out.eof = true;
    out.data.clear();
    return 0;
  }
  out.truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || static_cast<size_t>(n) > kMaxMessage;
  out.data.resize(static_cast<size_t>(n));
  return 0;
}

}  // namespace epd::proto
