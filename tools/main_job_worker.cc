// main_job_worker.cc — epd_worker: one EP rank of the main job (and of the
// integration and fault tests), run as its own process.
//   epd_worker --socket PATH --rank R [--world 8] [--experts 32] [--top-k 4]
//              [--hidden 256] [--max-tokens 64] [--steps 300] [--seed 1]
//              [--group main] [--generation 1] [--timeout-ms 20000] [--nodes 1]
//              [--start-step N] [--stall-at STEP] [--tolerate-peer-lost]
//              [--ring-and-wait] [--empty] [--no-verify]
#include <cstdio>

#include "main_job_args.h"
#include "main_job_lib.h"

int main(int argc, char** argv) {
  using namespace epd::job;
  Args a(argc, argv, ",tolerate-peer-lost,ring-and-wait,empty,no-verify,");
  WorkerOptions o;
  o.socket = a.str("socket", "");
  o.rank = static_cast<int32_t>(a.num("rank", 0));
  o.work.world = static_cast<int32_t>(a.num("world", 8));
  o.work.experts = static_cast<int32_t>(a.num("experts", 32));
  o.work.top_k = static_cast<int32_t>(a.num("top-k", 4));
  o.work.hidden = static_cast<int32_t>(a.num("hidden", 256));
  o.work.max_tokens = static_cast<int32_t>(a.num("max-tokens", 64));
  o.work.seed = static_cast<uint64_t>(a.num("seed", 1));
  o.work.group = a.str("group", "main");
  o.work.generation = static_cast<uint64_t>(a.num("generation", 1));
  o.work.timeout_ms = static_cast<uint32_t>(a.num("timeout-ms", 20000));
  o.work.nodes = static_cast<int32_t>(a.num("nodes", 1));
  o.steps = a.num("steps", 300);
  o.start_step = a.num("start-step", 0);
  o.stall_at = a.num("stall-at", -1);
  o.tolerate_peer_lost = a.has("tolerate-peer-lost");
  o.ring_and_wait = a.has("ring-and-wait");
  o.empty = a.has("empty");
  o.verify = !a.has("no-verify");
  if (!a.error().empty() || o.socket.empty()) {
    std::fprintf(stderr, "epd_worker: %s\n", a.error().empty() ? "--socket is required" : a.error().c_str());
    return 2;
  }
  return run_worker(o);
}
