// wire.cc — frame encoding and validation (see wire.h).
#include "wire.h"

#include <bit>
#include <cstring>

namespace epd::transport {

static_assert(std::endian::native == std::endian::little,
              "the wire format is little-endian and encoded with memcpy");

namespace {

template <typename T>
void put(uint8_t*& p, T v) {
  std::memcpy(p, &v, sizeof(T));
  p += sizeof(T);
}
template <typename T>
T get(const uint8_t*& p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  p += sizeof(T);
  return v;
}

}  // namespace

const char* frame_type_name(FrameType t) {
  switch (t) {
    case FrameType::kHello: return "HELLO";
    case FrameType::kAuth: return "AUTH";
    case FrameType::kAuthOk: return "AUTH_OK";
    case FrameType::kReject: return "REJECT";
    case FrameType::kRegions: return "REGIONS";
    case FrameType::kMessage: return "MESSAGE";
    case FrameType::kWrite: return "WRITE";
    case FrameType::kHeartbeat: return "HEARTBEAT";
    case FrameType::kBye: return "BYE";
  }
  return "?";
}

void encode_header(const FrameHeader& h, uint8_t out[kHeaderBytes]) {
  uint8_t* p = out;
  put<uint32_t>(p, h.magic);
  put<uint8_t>(p, static_cast<uint8_t>(h.type));
  put<uint8_t>(p, h.flags);
  put<uint16_t>(p, h.reserved);
  put<uint32_t>(p, h.a);
  put<uint32_t>(p, h.imm);
  put<uint64_t>(p, h.offset);
  put<uint64_t>(p, h.length);
}

Result<FrameHeader> decode_header(const uint8_t in[kHeaderBytes], const WireLimits& limits,
                                  const std::string& peer) {
  const uint8_t* p = in;
  FrameHeader h;
  h.magic = get<uint32_t>(p);
  uint8_t type = get<uint8_t>(p);
  h.flags = get<uint8_t>(p);
  h.reserved = get<uint16_t>(p);
  h.a = get<uint32_t>(p);
  h.imm = get<uint32_t>(p);
  h.offset = get<uint64_t>(p);
  h.length = get<uint64_t>(p);
  if (h.magic != kFrameMagic) {
    return make_status(EPD_ERR_PROTOCOL, "%s: frame magic 0x%08x is not 0x%08x (not an epd peer?)",
                       peer.c_str(), h.magic, kFrameMagic);
  }
  if (type < static_cast<uint8_t>(FrameType::kHello) || type > static_cast<uint8_t>(FrameType::kBye)) {
    return make_status(EPD_ERR_PROTOCOL, "%s: unknown frame type %u", peer.c_str(), type);
  }
  h.type = static_cast<FrameType>(type);
  if (h.flags != 0 || h.reserved != 0) {
    return make_status(EPD_ERR_PROTOCOL, "%s: %s frame has flags 0x%x reserved 0x%x (must be 0)",
                       peer.c_str(), frame_type_name(h.type), h.flags, h.reserved);
  }
  uint64_t max = 0;
  switch (h.type) {
    case FrameType::kHello: max = kHelloBytes; break;
    case FrameType::kAuth: max = 32; break;
    case FrameType::kAuthOk:
    case FrameType::kRegions: max = 4 + kMaxRegionsPerAdvert * 24; break;
    case FrameType::kReject: max = 4 + kMaxRejectText; break;
    case FrameType::kMessage: max = limits.max_message_bytes; break;
    case FrameType::kWrite: max = limits.max_write_bytes; break;
    case FrameType::kHeartbeat:
    case FrameType::kBye: max = 0; break;
  }
  if (h.length > max) {
    return make_status(EPD_ERR_PROTOCOL, "%s: %s frame length %llu exceeds the limit %llu",
                       peer.c_str(), frame_type_name(h.type),
                       static_cast<unsigned long long>(h.length), static_cast<unsigned long long>(max));
  }
  if ((h.type == FrameType::kHello && h.length != kHelloBytes) ||
      (h.type == FrameType::kAuth && h.length != 32)) {
    return make_status(EPD_ERR_PROTOCOL, "%s: %s frame length %llu, expected %zu", peer.c_str(),
                       frame_type_name(h.type), static_cast<unsigned long long>(h.length),
                       h.type == FrameType::kHello ? kHelloBytes : size_t(32));
  }
  if (h.type != FrameType::kWrite && (h.offset != 0 || h.imm != 0)) {
    return make_status(EPD_ERR_PROTOCOL, "%s: %s frame carries write fields", peer.c_str(),
                       frame_type_name(h.type));
  }
  return h;
}

Status check_pre_auth_header(const FrameHeader& h, const std::string& peer) {
  const bool allowed = h.type == FrameType::kHello || h.type == FrameType::kAuth || h.type == FrameType::kReject;
  if (!allowed || h.length > kMaxPreAuthPayload) {
    return make_status(EPD_ERR_PROTOCOL,
                       "%s sent a %s frame of %llu bytes before authenticating (allowed: HELLO, AUTH, REJECT "
                       "of at most %zu bytes)",
                       peer.c_str(), frame_type_name(h.type), static_cast<unsigned long long>(h.length),
                       kMaxPreAuthPayload);
  }
  return Status::ok();
}

std::vector<uint8_t> make_frame(FrameHeader h, const void* payload, size_t bytes) {
  h.length = bytes;
  std::vector<uint8_t> out(kHeaderBytes + bytes);
  encode_header(h, out.data());
  if (bytes > 0) std::memcpy(out.data() + kHeaderBytes, payload, bytes);
  return out;
}

void encode_hello(const HelloPayload& hp, uint8_t out[kHelloBytes]) {
  uint8_t* p = out;
  put<uint16_t>(p, hp.major);
  put<uint16_t>(p, hp.minor);
  put<uint32_t>(p, hp.node_id);
  std::memcpy(p, hp.nonce, kNonceBytes);
}

Result<HelloPayload> decode_hello(const uint8_t* in, size_t bytes, const std::string& peer) {
  if (bytes != kHelloBytes) {
    return make_status(EPD_ERR_PROTOCOL, "%s: HELLO payload is %zu bytes, expected %zu",
                       peer.c_str(), bytes, kHelloBytes);
  }
  HelloPayload hp;
  const uint8_t* p = in;
  hp.major = get<uint16_t>(p);
  hp.minor = get<uint16_t>(p);
  hp.node_id = get<uint32_t>(p);
  std::memcpy(hp.nonce, p, kNonceBytes);
  return hp;
}

std::vector<uint8_t> encode_regions(const std::vector<RegionInfo>& regions) {
  std::vector<uint8_t> out(4 + regions.size() * 24);
  uint8_t* p = out.data();
  put<uint32_t>(p, static_cast<uint32_t>(regions.size()));
  for (const RegionInfo& r : regions) {
    put<uint32_t>(p, r.id);
    put<uint32_t>(p, r.rkey);
    put<uint64_t>(p, r.addr);
    put<uint64_t>(p, r.bytes);
  }
  return out;
}

Result<std::vector<RegionInfo>> decode_regions(const uint8_t* in, size_t bytes,
                                               const std::string& peer) {
  if (bytes < 4) {
    return make_status(EPD_ERR_PROTOCOL, "%s: region advert of %zu bytes is truncated",
                       peer.c_str(), bytes);
  }
  const uint8_t* p = in;
  uint32_t n = get<uint32_t>(p);
  if (n > kMaxRegionsPerAdvert || bytes != 4 + size_t(n) * 24) {
    return make_status(EPD_ERR_PROTOCOL, "%s: region advert claims %u regions in %zu bytes",
                       peer.c_str(), n, bytes);
  }
  std::vector<RegionInfo> out(n);
  for (RegionInfo& r : out) {
    r.id = get<uint32_t>(p);
    r.rkey = get<uint32_t>(p);
    r.addr = get<uint64_t>(p);
    r.bytes = get<uint64_t>(p);
  }
  return out;
}

std::vector<uint8_t> encode_reject(epd_status_t code, const std::string& reason) {
  std::string text = reason.substr(0, kMaxRejectText);
  std::vector<uint8_t> out(4 + text.size());
  uint8_t* p = out.data();
  put<int32_t>(p, static_cast<int32_t>(code));
  std::memcpy(p, text.data(), text.size());
  return out;
}

Status decode_reject(const uint8_t* in, size_t bytes, const std::string& peer) {
  if (bytes < 4) return make_status(EPD_ERR_PROTOCOL, "%s: REJECT frame is truncated", peer.c_str());
  const uint8_t* p = in;
  int32_t code = get<int32_t>(p);
  std::string text(reinterpret_cast<const char*>(p), bytes - 4);
  for (char& c : text) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  epd_status_t st = EPD_ERR_PERMISSION;
  if (code == EPD_ERR_VERSION_MISMATCH || code == EPD_ERR_PROTOCOL || code == EPD_ERR_PERMISSION ||
      code == EPD_ERR_SHUTTING_DOWN) {
    st = static_cast<epd_status_t>(code);
  }
  return make_status(st, "%s refused the connection: %s", peer.c_str(), text.c_str());
}

}  // namespace epd::transport
