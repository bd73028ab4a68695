// transport.cc — config checks, address parsing, the log hook (registry.cc has
// the kinds and make_transport).
#include "transport.h"

#include "link_crypto.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace epd::transport {

void transport_log(const TransportConfig& config, LogSeverity sev, const std::string& msg) {
  if (config.log) {
    config.log(sev, msg);
    return;
  }
  const char* lvl = sev == LogSeverity::kError ? "error" : sev == LogSeverity::kWarn ? "warn" : "info";
  std::fprintf(stderr, "[epd transport %s] %s\n", lvl, msg.c_str());
}

Status split_host_port(const std::string& s, std::string* host, uint16_t* port) {
  size_t colon = s.rfind(':');
  if (s.empty() || colon == std::string::npos || colon == 0 || colon + 1 == s.size()) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "address '%s' is not host:port", s.c_str());
  }
  std::string h = s.substr(0, colon);
  if (h.front() == '[') {
    if (h.size() < 3 || h.back() != ']') {
      return make_status(EPD_ERR_INVALID_ARGUMENT, "address '%s' has an unterminated [ipv6] host",
                         s.c_str());
    }
    h = h.substr(1, h.size() - 2);
  }
  const std::string p = s.substr(colon + 1);
  char* end = nullptr;
  unsigned long v = std::strtoul(p.c_str(), &end, 10);
  if (end == p.c_str() || *end != '\0' || v > 65535) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "address '%s': port '%s' is not in [0, 65535]",
                       s.c_str(), p.c_str());
  }
  *host = h;
  *port = static_cast<uint16_t>(v);
  return Status::ok();
}

Result<std::string> interface_of_address(const std::string& listen_address) {
  std::string host;
  uint16_t port = 0;
  EPD_RETURN_IF_ERROR(split_host_port(listen_address, &host, &port));
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "cannot resolve the host of '%s': %s", listen_address.c_str(),
                       gai_strerror(rc));
  }
  sockaddr_storage want{};
  std::memcpy(&want, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  const bool v4 = want.ss_family == AF_INET;
  const auto* w4 = reinterpret_cast<const sockaddr_in*>(&want);
  const auto* w6 = reinterpret_cast<const sockaddr_in6*>(&want);
  if ((v4 && w4->sin_addr.s_addr == htonl(INADDR_ANY)) ||
      (!v4 && std::memcmp(&w6->sin6_addr, &in6addr_any, sizeof(in6_addr)) == 0)) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "'%s' listens on all interfaces: no one device carries the traffic",
                       listen_address.c_str());
  }
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) != 0) return errno_status("getifaddrs", errno);
  std::string found;
  for (ifaddrs* i = ifs; i != nullptr && found.empty(); i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != want.ss_family || i->ifa_name == nullptr) continue;
    const bool same =
        v4 ? reinterpret_cast<const sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr == w4->sin_addr.s_addr
           : std::memcmp(&reinterpret_cast<const sockaddr_in6*>(i->ifa_addr)->sin6_addr, &w6->sin6_addr,
                         sizeof(in6_addr)) == 0;
    if (same) found = i->ifa_name;
  }
  freeifaddrs(ifs);
  if (found.empty()) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "no local network interface holds the address of '%s'",
                       listen_address.c_str());
  }
  return found;
}

Status validate_config(const TransportConfig& c) {
  if (c.node_id == kUnknownNode) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "node_id %u is reserved", c.node_id);
  }
  if (c.cluster_secret.size() < 16) {
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "cluster secret is %zu bytes; at least 16 are required", c.cluster_secret.size());
  }
  if (c.listen_address.empty()) {
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "listen_address is empty (give host:port; all interfaces only when written as "
                       "0.0.0.0:port)");
  }
  std::string host;
  uint16_t port = 0;
  EPD_RETURN_IF_ERROR(split_host_port(c.listen_address, &host, &port));
  for (const auto& [node, addr] : c.peers) {
    if (node == c.node_id) {
      return make_status(EPD_ERR_INVALID_ARGUMENT, "peer list contains this node's own id %u", node);
    }
    Status s = split_host_port(addr, &host, &port);
    if (!s) return make_status(EPD_ERR_INVALID_ARGUMENT, "peer node %u: %s", node, s.message().c_str());
  }
  if (c.heartbeat_interval.count() <= 0 || c.peer_timeout <= c.heartbeat_interval) {
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "heartbeat_interval %lld ms must be > 0 and below peer_timeout %lld ms",
                       static_cast<long long>(c.heartbeat_interval.count()),
                       static_cast<long long>(c.peer_timeout.count()));
  }
  if (c.max_message_bytes == 0) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "max_message_bytes must be > 0");
  }
  if (c.handshake_timeout.count() <= 0 || c.max_pending_per_address == 0) {
    return make_status(EPD_ERR_INVALID_ARGUMENT,
                       "handshake_timeout %lld ms and max_pending_per_address %u must be > 0",
                       static_cast<long long>(c.handshake_timeout.count()), c.max_pending_per_address);
  }
  return link_crypto_init();
}

}  // namespace epd::transport
