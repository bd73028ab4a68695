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

#include <cstdint>
#include <string>
#include <vector>

#include "spec.h"
#include "status.h"

namespace epd::proto {

constexpr uint32_t kMagic = 0x31445045;  // "EPD1" little-endian
constexpr uint16_t kMajor = 1;
constexpr uint16_t kMinor = 1;  // 1: JoinReply carries gpu_device / gpu_mapped_bytes
constexpr size_t kHeaderBytes = 24;
// Largest record either side sends or accepts (fits the default socket buffer).
constexpr size_t kMaxMessage = 128 * 1024;
constexpr int kMaxFds = 4;

enum class MsgType : uint16_t {
  kHello = 1,        // client -> daemon: Hello
  kHelloReply = 2,   // daemon -> client: HelloReply + fds [session shm, doorbell eventfd]
  kJoin = 3,         // client -> daemon: Join
  kJoinReply = 4,    // daemon -> client: JoinReply + fd [group workspace] on success
  kLeave = 5,        // client -> daemon: Leave
  kLeaveReply = 6,   // daemon -> client: Reply
  kStatus = 7,       // client -> daemon: StatusQuery
  kStatusReply = 8,  // daemon -> client: StatusReply
  kError = 9,        // daemon -> client: Reply (a request could not be decoded or served)
  kShutdown = 10,    // daemon -> client: Reply (the daemon is stopping)
};
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

constexpr uint64_t kCapHostExecutor = 1u << 0;
constexpr uint64_t kCapRankMajor = 1u << 1;
constexpr uint64_t kCapExpertMajor = 1u << 2;
constexpr uint64_t kCapFp8Dispatch = 1u << 3;
constexpr uint64_t kCapGpuExecutor = 1u << 4;

struct HelloReply {
  int32_t status = EPD_OK;
  std::string message;
  uint32_t daemon_pid = 0;
  std::string daemon_version;
  uint64_t capabilities = 0;
  uint64_t session_id = 0;
  uint32_t shm_bytes = 0;
};

struct Join {
  GroupSpec spec;
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
Result<Reply> decode_reply(const Frame& f);  // kLeaveReply, kError, kShutdown
Result<StatusQuery> decode_status_query(const Frame& f);
Result<StatusReply> decode_status_reply(const Frame& f);

// Decodes any record by its type (the fuzz target's entry point).
Status decode_any(const uint8_t* data, size_t len);

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
