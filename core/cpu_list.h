// cpu_list.h — CPU sets as text for logs and status ("0-3,8-11"), shared by
// the topology view and the cluster proxy threads. Header-only, no hwloc.
// Thread-safety: a pure function.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

namespace epd {

// "0-3,8-11" from {0,1,2,3,8,9,10,11} (sorted or not, duplicates allowed); "" for none.
inline std::string format_cpu_list(const std::vector<int>& cpus) {
  std::vector<int> v = cpus;
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  std::string out;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(v[i]);
    if (j > i) out += "-" + std::to_string(v[j]);
    i = j + 1;
  }
  return out;
}

}  // namespace epd
