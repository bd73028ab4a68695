// thread_pool.cc — ThreadPool implementation.
#include "thread_pool.h"

#include <algorithm>

namespace epd {

ThreadPool::ThreadPool(unsigned threads) {
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::shared() {
  static ThreadPool pool;
  return pool;
}

void ThreadPool::run_items() {
  std::unique_lock<std::mutex> lk(mu_);
  while (next_ < n_) {
    const int64_t i = next_++;
    const auto* fn = fn_;
    lk.unlock();
    (*fn)(i);
    lk.lock();
    if (++finished_ == n_) done_.notify_all();
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      wake_.wait(lk, [&] { return stop_ || epoch_ != seen; });
      if (stop_) return;
      seen = epoch_;
    }
    run_items();
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (n == 1 || workers_.empty()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::lock_guard<std::mutex> call(call_mu_);
  {
    std::lock_guard<std::mutex> lk(mu_);
    fn_ = &fn;
    n_ = n;
    next_ = 0;
    finished_ = 0;
    ++epoch_;
  }
  // The caller takes items too: wake only as many workers as there are items
  // beyond its own (a worker that wakes late finds nothing left and sleeps).
  const int64_t helpers = std::min<int64_t>(n - 1, static_cast<int64_t>(workers_.size()));
  if (helpers >= static_cast<int64_t>(workers_.size())) {
    wake_.notify_all();
  } else {
    for (int64_t i = 0; i < helpers; ++i) wake_.notify_one();
  }
  run_items();
  std::unique_lock<std::mutex> lk(mu_);
  done_.wait(lk, [&] { return finished_ == n_; });
  fn_ = nullptr;
  n_ = 0;
}

}  // namespace epd
