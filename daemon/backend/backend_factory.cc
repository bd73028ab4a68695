// backend_factory.cc — make_backend(): the one place that decides which
// backend serves a group. The table is read top to bottom; the first row
// whose test accepts the spec makes the backend. A new backend is one row.
#include "backend.h"

#include "gpu_armed_backend.h"
#include "gpu_inline_backend.h"
#include "gpu_group.h"
#include "gpu_staged_backend.h"
#include "host_backend.h"

namespace epd {

namespace {

bool on_host(const GroupSpec& s) { return s.placement[0].gpu == EPD_GPU_HOST; }

struct BackendRow {
  bool (*accepts)(const GroupSpec&);
  std::unique_ptr<GroupBackend> (*make)(const GroupSpec&, const BackendEnv&);
};

// gpu_devices_of() (checked at join) refuses a mix of host and GPU ranks, so
// placement[0] speaks for every rank.
constexpr BackendRow kBackends[] = {
    {on_host, make_host_backend},
    // GroupSpec::validate keeps an inline group on one GPU of one node.
    {[](const GroupSpec& s) { return s.executor == EPD_EXECUTOR_INLINE; }, make_gpu_inline_backend},
    {[](const GroupSpec& s) { return spans_nodes(s); }, make_gpu_staged_backend},
    {[](const GroupSpec&) { return true; }, make_gpu_armed_backend},
};

}  // namespace

Result<std::unique_ptr<GroupBackend>> make_backend(const GroupSpec& spec, const BackendEnv& env) {
  if (spec.placement.empty())
    return make_status(EPD_ERR_INVALID_SPEC, "group '%s' has no placement", spec.name.c_str());
  for (const BackendRow& row : kBackends)
    if (row.accepts(spec)) return row.make(spec, env);
  return make_status(EPD_ERR_INTERNAL, "no backend accepts group '%s'", spec.name.c_str());
}

}  // namespace epd
