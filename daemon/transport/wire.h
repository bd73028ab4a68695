// wire.h — the daemon-to-daemon frame format shared by the TCP transport (as a
// byte stream) and the RDMA transport (as send/recv message contents).
//
// Every frame is a fixed 32-byte little-endian header followed by `length`
// payload bytes. decode_header() checks everything that can be checked without
// context (magic, type, reserved bits, length limits per type) so a malformed
// frame becomes EPD_ERR_PROTOCOL before any payload is read. Over TCP only
// the handshake's frames travel like this; every later frame is sealed
// (link_crypto.h) and its header decoded once opened.
// Pure functions and value types; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "status.h"

namespace epd::transport {

constexpr uint32_t kFrameMagic = 0x54445045;  // "EPDT" little-endian
constexpr uint16_t kProtocolMajor = 2;  // 2: mutual handshake, sealed frames
constexpr uint16_t kProtocolMinor = 0;
constexpr size_t kHeaderBytes = 32;
constexpr size_t kNonceBytes = 32;
constexpr size_t kMaxRegionsPerAdvert = 4096;
constexpr size_t kMaxRejectText = 1024;
// The largest payload a peer may send before it authenticated (a REJECT).
constexpr size_t kMaxPreAuthPayload = 4 + kMaxRejectText;

enum class FrameType : uint8_t {
  kHello = 1,      // payload: HelloPayload
  kAuth = 2,       // payload: 32-byte HMAC proof
  kAuthOk = 3,     // payload: region advert (the peer's registered regions)
  kReject = 4,     // payload: i32 status code + reason text; sender closes
  kRegions = 5,    // payload: region advert (update after connect)
  kMessage = 6,    // field a = tag; payload: message bytes
  kWrite = 7,      // field a = region id, imm, offset; payload: data for the region
  kHeartbeat = 8,  // no payload
  kBye = 9,        // orderly close, no payload
};

struct FrameHeader {
  uint32_t magic = kFrameMagic;
  FrameType type = FrameType::kHeartbeat;
  uint8_t flags = 0;       // must be 0 in this version
  uint16_t reserved = 0;   // must be 0
  uint32_t a = 0;          // tag (kMessage) or region id (kWrite)
  uint32_t imm = 0;        // immediate (kWrite)
  uint64_t offset = 0;     // region offset (kWrite)
  uint64_t length = 0;     // payload bytes
};

struct WireLimits {
  size_t max_message_bytes = 16u << 20;  // kMessage and control payloads
  size_t max_write_bytes = size_t(1) << 32;
};

void encode_header(const FrameHeader& h, uint8_t out[kHeaderBytes]);
// Validates magic/type/flags/length against `limits`; `peer` names the node
// (or address) in the error message.
Result<FrameHeader> decode_header(const uint8_t in[kHeaderBytes], const WireLimits& limits,
                                  const std::string& peer);
const char* frame_type_name(FrameType t);
// Before authentication only HELLO, AUTH and REJECT (at most
// kMaxPreAuthPayload bytes) may arrive; anything else is EPD_ERR_PROTOCOL
// naming the type, the length and the limit, before any payload is read.
Status check_pre_auth_header(const FrameHeader& h, const std::string& peer);

// A complete frame (header + payload) as bytes.
std::vector<uint8_t> make_frame(FrameHeader h, const void* payload, size_t bytes);

struct HelloPayload {
  uint16_t major = kProtocolMajor;
  uint16_t minor = kProtocolMinor;
  uint32_t node_id = 0;
  uint8_t nonce[kNonceBytes] = {};
};
constexpr size_t kHelloBytes = 8 + kNonceBytes;
void encode_hello(const HelloPayload& p, uint8_t out[kHelloBytes]);
Result<HelloPayload> decode_hello(const uint8_t* in, size_t bytes, const std::string& peer);

// A registered region as advertised to the peer. addr/rkey are 0 for TCP.
struct RegionInfo {
  uint32_t id = 0;
  uint32_t rkey = 0;
  uint64_t addr = 0;
  uint64_t bytes = 0;
};
std::vector<uint8_t> encode_regions(const std::vector<RegionInfo>& regions);
Result<std::vector<RegionInfo>> decode_regions(const uint8_t* in, size_t bytes,
                                               const std::string& peer);

std::vector<uint8_t> encode_reject(epd_status_t code, const std::string& reason);
// Returns the Status the peer sent (its code and reason, prefixed with `peer`).
Status decode_reject(const uint8_t* in, size_t bytes, const std::string& peer);

}  // namespace epd::transport
