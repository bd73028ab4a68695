/* raw_calls.c — the C baseline of op_overhead.py: rounds of the four
 * epd_group_*_async calls in a plain C loop, timed on the host (compiled by
 * op_overhead.py against the libepd-client the package loaded). */
#include <stdint.h>
#include <time.h>

#include "epd/epd.h"

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Enqueues `rounds` rounds on `stream`; writes the host time they took to *ns.
 * Returns the first failing status (EPD_OK when all were enqueued). */
int epd_bench_rounds(epd_group_t* g, int32_t slot, int32_t rounds, void* stream, const void* x,
                     const int32_t* ids, const float* w, int32_t n, int64_t* ns) {
  epd_gpu_dispatch_args_t a = {sizeof a, x, ids, w, NULL, n};
  const int64_t t0 = now_ns();
  for (int32_t i = 0; i < rounds; ++i) {
    epd_status_t rc = epd_group_dispatch_async(g, slot, &a, stream);
    if (rc == EPD_OK) rc = epd_group_dispatch_wait_async(g, slot, stream);
    if (rc == EPD_OK) rc = epd_group_combine_async(g, slot, EPD_WEIGHTS_ALREADY_APPLIED, NULL, 0, stream);
    if (rc == EPD_OK) rc = epd_group_combine_wait_async(g, slot, stream);
    if (rc != EPD_OK) return rc;
  }
  *ns = now_ns() - t0;
  return EPD_OK;
}
