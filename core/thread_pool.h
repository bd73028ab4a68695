// thread_pool.h — a fixed set of worker threads running parallel loops.
//
// parallel_for(n, fn) runs fn(0..n-1) across the workers and the calling
// thread and returns when all are done. One loop at a time: concurrent callers
// are serialised. Workers live as long as the pool. fn must not throw.
// Thread-safety: parallel_for may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace epd {

class ThreadPool {
 public:
  // threads == 0: one per hardware thread (the caller counts as one).
  explicit ThreadPool(unsigned threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);
  unsigned size() const { return static_cast<unsigned>(workers_.size()) + 1; }

  // A process-wide pool sized to the machine.
  static ThreadPool& shared();

 private:
  void worker_loop();
  void run_items();

  std::mutex call_mu_;  // serialises parallel_for callers
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t next_ = 0;
  int64_t finished_ = 0;
  uint64_t epoch_ = 0;
  bool stop_ = false;
};

}  // namespace epd
