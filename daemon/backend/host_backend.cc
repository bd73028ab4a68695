// host_backend.cc — HostBackend (host_backend.h).
#include "host_backend.h"

#include <unistd.h>

#include <cerrno>

namespace epd {

namespace {

class HostBackend final : public GroupBackend {
 public:
  const char* kind() const override { return "host"; }
  uint64_t host_workspace_bytes(const GroupLayout& layout) const override { return layout.total_bytes; }
  bool runs_host_executor() const override { return true; }
  Status start(const std::vector<uint8_t*>&) override { return Status::ok(); }
  std::string created_line() const override { return "host executor"; }
  Result<RankExport> export_rank(int32_t, const SharedRegion& ws) override {
    RankExport e;
    e.fd = dup(ws.fd());
    if (e.fd < 0) return errno_status("dup(group workspace)", errno);
    e.workspace_bytes = ws.size();
    return e;
  }
  Status accept_host_ring() const override { return Status::ok(); }
  uint64_t device_bytes() const override { return 0; }
  std::string status_text() const override { return "host"; }
};

}  // namespace

std::unique_ptr<GroupBackend> make_host_backend(const GroupSpec&, const BackendEnv&) {
  return std::make_unique<HostBackend>();
}

}  // namespace epd
