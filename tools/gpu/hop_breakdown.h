// hop_breakdown.h — what the two processes of epd_hop_breakdown share
// (hop_breakdown.cc: the "daemon" process, ArmedExecutor with stamps, the
// in-process reference and the report; hop_worker.cc: the worker process,
// per-stream-operation timings and the stamped round trips): the order the
// daemon sends, the per-round-trip record the worker writes into a memfd both
// map, and the one-line figure printer.
// Thread-safety: plain data and functions; one thread per process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace epd::hop {

// Both processes end themselves (SIGALRM) after this: a hung stream ends the
// run instead of blocking it for ever. The whole tool runs in about 30 s.
constexpr unsigned kProcessDeadlineS = 240;
constexpr int kMaxWorld = 8;

// Worker stamps per operation (dispatch, combine) of a round trip, on the
// worker's stream, %globaltimer ns.
enum WorkerStamp : int32_t {
  kRingStart = 0,  // before the first rank's dispatch/combine call (copy-in, doorbell writes)
  kRung = 1,       // after the last rank's doorbell write
  kReleased = 2,   // after the last rank's completion wait released
  kWorkerStamps = 3,
};

struct Order {
  int32_t world = 0, warmup = 0, iters = 0;
  int32_t stamped = 0;  // 0: plain round trips only; 1: stream-operation timings and stamped round trips
  int32_t mps = 0;      // for the worker's lines
  uint64_t mapped_bytes[kMaxWorld] = {};
  uint64_t records_bytes = 0;  // the memfd (the last fd sent): iters TripRecords
};

struct Report {
  int32_t ok = 0;
  char message[240] = {};
};

// One measured round trip (stamped run), written by the worker.
struct TripRecord {
  uint64_t worker[2][kWorkerStamps];  // [dispatch, combine]
  double host_total_us;               // first enqueue to cudaStreamSynchronize return
  double host_enqueue_us;             // first enqueue to the last enqueue call's return
};

// The statistics of one figure.
struct Figure {
  double median = 0, p99 = 0;
  size_t n = 0;
};
Figure figure_of(std::vector<double> v);

// Prints "<where> segment=<segment> median_us=.. p99_us=.. n=.." and returns the figure.
Figure print_figure(const std::string& where, const std::string& segment, std::vector<double> us);

// The worker process's entry (hop_worker.cc); `sock` from test::client_role_fd().
int worker_main(int sock);

}  // namespace epd::hop
