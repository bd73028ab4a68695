// main_job_args.h — "--key value" parsing for the main job's programs (the
// worker, the main job, the benchmark): a tiny header, no dependencies.
// Thread-safety: values only.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

namespace epd::job {

class Args {
 public:
  // Flags listed in `switches` take no value.
  Args(int argc, char** argv, const std::string& switches) {
    for (int i = 1; i < argc; ++i) {
      std::string k = argv[i];
      if (k.rfind("--", 0) != 0) {
        bad_ = "unexpected argument '" + k + "'";
        return;
      }
      k = k.substr(2);
      if (switches.find("," + k + ",") != std::string::npos) {
        kv_[k] = "1";
      } else if (i + 1 < argc) {
        kv_[k] = argv[++i];
      } else {
        bad_ = "--" + k + " needs a value";
        return;
      }
    }
  }
  const std::string& error() const { return bad_; }
  bool has(const std::string& k) const { return kv_.count(k) != 0; }
  std::string str(const std::string& k, const std::string& d) const {
    auto it = kv_.find(k);
    return it == kv_.end() ? d : it->second;
  }
  long long num(const std::string& k, long long d) {
    auto it = kv_.find(k);
    if (it == kv_.end()) return d;
    char* end = nullptr;
    const long long v = std::strtoll(it->second.c_str(), &end, 10);
    if (!end || *end) bad_ = "--" + k + " = '" + it->second + "' is not a number";
    return v;
  }

 private:
  std::map<std::string, std::string> kv_;
  std::string bad_;
};

}  // namespace epd::job
