// session_block.cc — publish() (session_block.h).
#include "session_block.h"

#include <algorithm>
#include <cstring>

#include "shm_layout.h"

namespace epd {

void publish(SharedRegion& shm, uint32_t index, int32_t slot, Op op, uint32_t seq, const Status& st) {
  shm::Membership* m = shm::membership(shm.data(), index);
  shm::SlotWords& w = m->slot[slot];
  char* msg = op == Op::kDispatch ? w.dispatch_msg : w.combine_msg;
  const std::string& text = st.message();
  const size_t n = std::min(text.size(), static_cast<size_t>(shm::kMsgBytes - 1));
  std::memcpy(msg, text.data(), n);
  msg[n] = '\0';
  uint32_t* done = op == Op::kDispatch ? &w.dispatch_done : &w.combine_done;
  shm::word(op == Op::kDispatch ? w.dispatch_status : w.combine_status).store(st.code(), std::memory_order_relaxed);
  shm::word(*done).store(seq, std::memory_order_seq_cst);
  if (shm::word(w.waiters).load(std::memory_order_seq_cst) != 0) shm::futex_wake_all(done);
}

}  // namespace epd
