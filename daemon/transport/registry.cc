// registry.cc — the transport kinds (the one table make_transport() reads)
// and the fallback policy. A new kind is a row here, its factory and option
// struct in transport.h, and its sources in CMakeLists.txt.
#include <string>

#include "transport.h"

namespace epd::transport {

namespace {

const TransportKind kKinds[] = {
    {"tcp", create_tcp_transport},
    {"rdma", create_rdma_transport, "tcp", &TransportConfig::rdma_fallback_to_tcp, "rdma_fallback_to_tcp"},
};

// "'tcp' or 'rdma'", for the refusal of an unknown kind.
std::string kind_list() {
  std::string s;
  for (size_t i = 0; i < std::size(kKinds); ++i)
    s += std::string(i == 0 ? "" : i + 1 == std::size(kKinds) ? " or " : ", ") + "'" + kKinds[i].name + "'";
  return s;
}

void log_running(const TransportConfig& config, const Transport& t, const std::string& how) {
  transport_log(config, LogSeverity::kInfo,
                "node " + std::to_string(config.node_id) + ": daemon-to-daemon transport " + t.name() + how +
                    " on " + t.listen_address());
}

}  // namespace

std::span<const TransportKind> transport_kinds() { return kKinds; }

const TransportKind* find_transport_kind(std::string_view name) {
  for (const TransportKind& k : kKinds)
    if (name == k.name) return &k;
  return nullptr;
}

Result<std::unique_ptr<Transport>> make_transport(const TransportConfig& config,
                                                  TransportCallbacks callbacks) {
  const TransportKind* kind = find_transport_kind(config.kind);
  if (kind == nullptr) {
    return make_status(EPD_ERR_INVALID_ARGUMENT, "transport kind '%s' is not %s", config.kind.c_str(),
                       kind_list().c_str());
  }
  // A copy: the callbacks are needed again if this kind falls back.
  Result<std::unique_ptr<Transport>> r = kind->create(config, callbacks);
  if (r) {
    log_running(config, **r, "");
    return r;
  }
  const TransportKind* fallback = kind->fallback ? find_transport_kind(kind->fallback) : nullptr;
  if (fallback == nullptr) return r;
  if (!(config.*kind->fallback_allowed)) {
    transport_log(config, LogSeverity::kError,
                  std::string(kind->name) + " transport requested and unavailable, refusing to start (set " +
                      kind->fallback_option + " to use " + fallback->name + "): " + r.status().to_string());
    return r.status();
  }
  transport_log(config, LogSeverity::kWarn,
                std::string(kind->name) + " transport unavailable, falling back to " + fallback->name + ": " +
                    r.status().to_string());
  Result<std::unique_ptr<Transport>> t = fallback->create(config, std::move(callbacks));
  if (t) log_running(config, **t, std::string(" (fallback from ") + kind->name + ")");
  return t;
}

#ifndef EPD_HAVE_RDMA
Result<std::unique_ptr<Transport>> create_rdma_transport(const TransportConfig& config,
                                                         TransportCallbacks) {
  return make_status(EPD_ERR_UNSUPPORTED,
                     "node %u: this build has no RDMA verbs transport (libibverbs/librdmacm were not "
                     "found at configure time)",
                     config.node_id);
}
#endif

}  // namespace epd::transport
