// protocol.h — the epd control protocol shared by the daemon and libepd-client:
// message framing, per-type payloads, encoding and validating decoding, and
// SOCK_SEQPACKET send/receive with SCM_RIGHTS file descriptors.
//
// Every message is one SEQPACKET record: a fixed 24-byte header (magic, major,
// minor, type, flags, payload length, request id) followed by a little-endian
// payload. Decoding never trusts the peer: every length and field is checked,
// a truncated or malformed message is EPD_ERR_PROTOCOL with a message naming
// the field, and a different major version is EPD_ERR_VERSION_MISMATCH naming
// both versions. Minor versions are compatible (new fields are appended).
// Thread-safety: pure functions over caller-owned buffers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "epd/epd.h"  // EPD_CAP_*
#include "spec.h"
#include "status.h"

namespace epd::proto {

constexpr uint32_t kMagic = 0x31445045;  // "EPD1" little-endian
constexpr uint16_t kMajor = 1;
constexpr uint16_t kMinor = 3;  // 1: JoinReply carries gpu_device / gpu_mapped_bytes; 2: HelloReply join_timeout_ms;
                                // 3: JOIN carries spec.executor (after sm_budget; absent below 3: the default)
constexpr size_t kHeaderBytes = 24;
// Largest record either side sends or accepts (fits the default socket buffer).
constexpr size_t kMaxMessage = 128 * 1024;
constexpr int kMaxFds = 4;

// The wire value of each message type. Its name, direction and payload codec
// are in kMessages below (the one table; see "message table").
enum class MsgType : uint16_t {
  kHello = 1,
  kHelloReply = 2,
  kJoin = 3,
  kJoinReply = 4,
  kLeave = 5,
  kLeaveReply = 6,
  kStatus = 7,
  kStatusReply = 8,
  kError = 9,
  kShutdown = 10,
};
// The table's name of `t` ("HELLO"), or "UNKNOWN" for a value not in it.
const char* msg_type_name(MsgType t);

struct Header {
  uint32_t magic = kMagic;
  uint16_t major = kMajor;
  uint16_t minor = kMinor;
  MsgType type = MsgType::kError;
  uint16_t flags = 0;
  uint32_t length = 0;  // payload bytes after the header
  uint64_t request_id = 0;
};

// A decoded frame: the header and a view of the payload inside the caller's buffer.
struct Frame {
  Header header;
  const uint8_t* payload = nullptr;
  size_t payload_len = 0;
};

// Validates magic, version, type and length against `len` (the record size).
Result<Frame> decode_frame(const uint8_t* data, size_t len);

// ---- payloads ---------------------------------------------------------------------
struct Hello {
  uint32_t client_pid = 0;
  std::string client_name;
};

// HelloReply::capabilities bits: the public EPD_CAP_* values (epd.h is their
// one definition; these names are for the daemon's C++ code).
constexpr uint64_t kCapHostExecutor = EPD_CAP_HOST_EXECUTOR;
constexpr uint64_t kCapRankMajor = EPD_CAP_RANK_MAJOR;
constexpr uint64_t kCapExpertMajor = EPD_CAP_EXPERT_MAJOR;
constexpr uint64_t kCapFp8Dispatch = EPD_CAP_FP8_DISPATCH;
constexpr uint64_t kCapGpuExecutor = EPD_CAP_GPU_EXECUTOR;

struct HelloReply {
  int32_t status = EPD_OK;
  std::string message;
  uint32_t daemon_pid = 0;
  std::string daemon_version;
  uint64_t capabilities = 0;
  uint64_t session_id = 0;
  uint32_t shm_bytes = 0;
  // Since 1.2: the daemon's server.join_timeout_ms, what a spec's timeout_ms
  // = 0 means. Sent only to clients of minor >= 2 (an older client's decoder
  // refuses trailing bytes); 0 when absent.
  uint32_t join_timeout_ms = 0;
};

struct Join {
  GroupSpec spec;  // as the client gave it: timeout_ms 0 (the daemon's default) travels as 0
};

struct JoinReply {
  int32_t status = EPD_OK;
  std::string message;
  uint32_t member_index = 0;   // entry in the session shm
  uint64_t group_id = 0;
  uint64_t generation = 0;
  uint64_t workspace_bytes = 0; // size of the workspace memfd (all ranks)
  // GPU groups: the fd attached is this rank's cuMem workspace (POSIX fd), of
  // gpu_mapped_bytes, on CUDA device gpu_device; -1 for host groups.
  int32_t gpu_device = -1;
  uint64_t gpu_mapped_bytes = 0;
};

struct Leave {
  uint32_t member_index = 0;
};

// Reply / Error / Shutdown share this payload.
struct Reply {
  int32_t status = EPD_OK;
  std::string message;
};

enum class StatusWhat : uint32_t { kStatus = 0, kGroups = 1, kRanks = 2, kCounters = 3, kAll = 4, kSessions = 5, kTopology = 6 };
struct StatusQuery {
  StatusWhat what = StatusWhat::kAll;
  uint32_t json = 0;  // 1 = JSON, 0 = text table
};
struct StatusReply {
  int32_t status = EPD_OK;
  std::string body;
};

// Encoders return the whole record (header + payload).
std::vector<uint8_t> encode(const Hello& m, uint64_t request_id);
std::vector<uint8_t> encode(const HelloReply& m, uint64_t request_id);
std::vector<uint8_t> encode(const Join& m, uint64_t request_id);
std::vector<uint8_t> encode(const JoinReply& m, uint64_t request_id);
std::vector<uint8_t> encode(const Leave& m, uint64_t request_id);
std::vector<uint8_t> encode(MsgType type, const Reply& m, uint64_t request_id);
std::vector<uint8_t> encode(const StatusQuery& m, uint64_t request_id);
std::vector<uint8_t> encode(const StatusReply& m, uint64_t request_id);
// Overrides the version fields of an encoded record (tests and version probes).
void set_version(std::vector<uint8_t>& record, uint16_t major, uint16_t minor);

// Decoders check the frame type, every field and that no bytes are left over.
Result<Hello> decode_hello(const Frame& f);
Result<HelloReply> decode_hello_reply(const Frame& f);
Result<Join> decode_join(const Frame& f);  // spec decoded, not validated
Result<JoinReply> decode_join_reply(const Frame& f);
Result<Leave> decode_leave(const Frame& f);
Result<Reply> decode_reply(const Frame& f);  // the table's Reply rows: LEAVE_REPLY, ERROR, SHUTDOWN
Result<StatusQuery> decode_status_query(const Frame& f);
Result<StatusReply> decode_status_reply(const Frame& f);

// Decodes any record by its type (the fuzz target's entry point): the frame,
// then the payload with its row's decoder in kMessages.
Status decode_any(const uint8_t* data, size_t len);

// ---- message table ------------------------------------------------------------------
// Every message type once: wire value, name, direction and the payload decoder
// decode_any() runs. decode_frame() accepts exactly these types, msg_type_name()
// reads the names, decode_reply() accepts the rows whose decoder is the Reply
// one, and the daemon keys its request handlers on the kToDaemon rows
// (kRequestTypes). A new message is: a MsgType value, a row here, its payload
// struct with encode() / decode_*(), and (for a request) a daemon handler.
enum class Direction : uint8_t { kToDaemon, kToClient };

// A row's decoder: decodes and checks the payload, keeps only the outcome.
template <auto Decode>
Status decode_payload(const Frame& f) {
  return Decode(f).status();
}
Status decode_join_checked(const Frame& f);  // decode_join(), then the spec's validate()

struct MsgInfo {
  MsgType type;
  const char* name;
  Direction direction;
  Status (*decode)(const Frame&);
};

inline constexpr MsgInfo kMessages[] = {
    {MsgType::kHello, "HELLO", Direction::kToDaemon, decode_payload<decode_hello>},
    // HelloReply + fds [session shm, doorbell eventfd]
    {MsgType::kHelloReply, "HELLO_REPLY", Direction::kToClient, decode_payload<decode_hello_reply>},
    {MsgType::kJoin, "JOIN", Direction::kToDaemon, decode_join_checked},
    // JoinReply + fd [group workspace] on success
    {MsgType::kJoinReply, "JOIN_REPLY", Direction::kToClient, decode_payload<decode_join_reply>},
    {MsgType::kLeave, "LEAVE", Direction::kToDaemon, decode_payload<decode_leave>},
    {MsgType::kLeaveReply, "LEAVE_REPLY", Direction::kToClient, decode_payload<decode_reply>},
    {MsgType::kStatus, "STATUS", Direction::kToDaemon, decode_payload<decode_status_query>},
    {MsgType::kStatusReply, "STATUS_REPLY", Direction::kToClient, decode_payload<decode_status_reply>},
    // a request could not be decoded or served
    {MsgType::kError, "ERROR", Direction::kToClient, decode_payload<decode_reply>},
    // the daemon is stopping
    {MsgType::kShutdown, "SHUTDOWN", Direction::kToClient, decode_payload<decode_reply>},
};

// The row of wire value `type`, or nullptr when the table has none.
constexpr const MsgInfo* find_msg(uint16_t type) {
  for (const MsgInfo& m : kMessages)
    if (static_cast<uint16_t>(m.type) == type) return &m;
  return nullptr;
}
constexpr const MsgInfo* find_msg(MsgType type) { return find_msg(static_cast<uint16_t>(type)); }

// Wire values and names are unique, every row has a decoder.
constexpr bool message_table_is_valid() {
  for (size_t i = 0; i < std::size(kMessages); ++i) {
    if (kMessages[i].decode == nullptr || kMessages[i].name == nullptr) return false;
    for (size_t j = 0; j < i; ++j) {
      if (kMessages[i].type == kMessages[j].type) return false;
      if (std::string_view(kMessages[i].name) == kMessages[j].name) return false;
    }
  }
  return true;
}
static_assert(message_table_is_valid(), "kMessages: a wire value or name is repeated, or a decoder is missing");

// The client -> daemon types (the requests), in table order: what the daemon's
// handler table covers.
inline constexpr size_t kNumRequestTypes = [] {
  size_t n = 0;
  for (const MsgInfo& m : kMessages) n += m.direction == Direction::kToDaemon;
  return n;
}();
inline constexpr std::array<MsgType, kNumRequestTypes> kRequestTypes = [] {
  std::array<MsgType, kNumRequestTypes> a{};
  size_t n = 0;
  for (const MsgInfo& m : kMessages)
    if (m.direction == Direction::kToDaemon) a[n++] = m.type;
  return a;
}();

// The position of `t` in kRequestTypes (a dense index for an array of
// handlers), or kNumRequestTypes when `t` is not a request.
constexpr size_t request_index(MsgType t) {
  for (size_t i = 0; i < kNumRequestTypes; ++i)
    if (kRequestTypes[i] == t) return i;
  return kNumRequestTypes;
}

// For a static_assert on a handler table: true when the rows' `.type` fields
// name every request type exactly once and nothing else.
template <typename Rows>
constexpr bool handles_every_request(const Rows& rows) {
  std::array<int, kNumRequestTypes> seen{};
  size_t n = 0;
  for (const auto& row : rows) {
    const size_t i = request_index(row.type);
    if (i == kNumRequestTypes || seen[i]++ != 0) return false;
    ++n;
  }
  return n == kNumRequestTypes;
}

// ---- socket I/O ---------------------------------------------------------------------
// Sends one record with optional fds. Returns 0, or -errno (EAGAIN when `nonblock`
// and the socket buffer is full).
int send_record(int sock, const std::vector<uint8_t>& record, const int* fds, int nfds,
                bool nonblock);

struct Received {
  std::vector<uint8_t> data;
  std::vector<int> fds;  // owned by the caller: close them
  bool eof = false;
  bool truncated = false;  // record larger than kMaxMessage, or fds were cut off
};
// Receives one record. Returns 0 (see eof/truncated), or -errno (EAGAIN when
// `nonblock` and nothing is queued).
int recv_record(int sock, Received& out, bool nonblock);

}  // namespace epd::proto
