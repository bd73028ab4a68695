// bench_transport.cc — TCP transport throughput between two endpoints next to
// a plain TCP socket stream measured in the same run (the bound), over the
// same address. Prints GB/s for each and the ratio.
//
//   epd_bench_transport [--host 127.0.0.1] [--total-mib 4096] [--chunk-kib 1024] [--reps 3]
//   epd_bench_transport --netns 1 ...   (root: two namespaces joined by a veth
//                                        pair, made and deleted by the program)
//
// Transport: node 1 write()s `chunk` bytes at a time into node 2's registered
// region (cycling through it); the clock stops when node 2's on_write has seen
// every byte. Also send() of the same chunks (message path). Plain: one
// blocking socket, send() of the same chunks, the receiver recv()s into a
// buffer of the region's size; the clock stops when all bytes are read.
#include <arpa/inet.h>
#include <fcntl.h>
#include <sched.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "transport.h"

using namespace epd::transport;
using epd::Result;
using epd::Status;
using std::chrono::duration;

namespace {

struct Opts {
  std::string host = "127.0.0.1";  // receiver's address (and the sender's without --netns)
  std::string sender_host = "127.0.0.1";
  std::string ns_send, ns_recv;  // network namespaces (--netns), else empty
  size_t total = size_t(4096) << 20;
  size_t chunk = size_t(1) << 20;
  int reps = 3;
};

struct Counter {
  std::mutex mu;
  std::condition_variable cv;
  size_t bytes = 0;
  void add(size_t n) {
    std::lock_guard<std::mutex> l(mu);
    bytes += n;
    cv.notify_all();
  }
  bool wait_for(size_t target, std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, timeout, [&] { return bytes >= target; });
  }
};

// Runs f on a thread inside network namespace `ns` (sockets it creates live there).
template <typename F>
void in_ns(const std::string& ns, F&& f) {
  if (ns.empty()) return f();
  std::thread th([&] {
    int fd = open(("/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
      std::perror("setns");
      std::exit(1);
    }
    close(fd);
    f();
  });
  th.join();
}

int sh(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()); }

double plain_tcp(const Opts& o) {
  int ls = -1;
  in_ns(o.ns_recv, [&] { ls = socket(AF_INET, SOCK_STREAM, 0); });
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, o.host.c_str(), &a.sin_addr);
  if (bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(ls, 1) != 0) {
    std::perror("plain: bind/listen");
    std::exit(1);
  }
  socklen_t len = sizeof(a);
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  std::vector<uint8_t> src(o.chunk, 0x5a), dst(size_t(64) << 20);
  std::atomic<bool> ok{true};
  auto t0 = epd::transport::Clock::now();
  std::thread rx([&] {
    int fd = accept(ls, nullptr, nullptr);
    size_t got = 0;
    for (size_t guard = 0; got < o.total && guard < (size_t(1) << 40); ++guard) {
      ssize_t n = recv(fd, dst.data() + (got % dst.size()), std::min(dst.size() - got % dst.size(), o.total - got), 0);
      if (n <= 0) {
        ok = false;
        break;
      }
      got += size_t(n);
    }
    close(fd);
  });
  int fd = -1;
  in_ns(o.ns_send, [&] {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      std::perror("plain: connect");
      std::exit(1);
    }
  });
  t0 = epd::transport::Clock::now();
  for (size_t sent = 0; sent < o.total;) {
    ssize_t n = send(fd, src.data(), std::min(o.chunk, o.total - sent), MSG_NOSIGNAL);
    if (n <= 0) {
      ok = false;
      break;
    }
    sent += size_t(n);
  }
  rx.join();
  const double s = duration<double>(epd::transport::Clock::now() - t0).count();
  close(fd);
  close(ls);
  if (!ok) {
    std::fprintf(stderr, "plain: stream failed\n");
    std::exit(1);
  }
  return double(o.total) / s / 1e9;
}

// mode 0: write() into the peer's region; mode 1: send() messages.
double transport_tcp(const Opts& o, int mode) {
  Counter got;
  std::vector<uint8_t> region(size_t(64) << 20), src(o.chunk, 0xa5);
  TransportConfig c1, c2;
  c1.listen_address = o.sender_host + ":0";
  c2.listen_address = o.host + ":0";
  for (TransportConfig* c : {&c1, &c2}) {
    c->cluster_secret = "bench-secret-0123456789";
    c->max_message_bytes = std::max(o.chunk, size_t(1) << 20);
    c->log = [](LogSeverity, const std::string&) {};
  }
  c1.node_id = 1;
  c2.node_id = 2;
  TransportCallbacks cb2;
  cb2.on_write = [&](NodeId, uint32_t, size_t n) { got.add(n); };
  cb2.on_message = [&](NodeId, uint32_t, const void*, size_t n) { got.add(n); };
  Result<std::unique_ptr<Transport>> t1 = Status(), t2 = Status();
  in_ns(o.ns_send, [&] { t1 = create_tcp_transport(c1, {}); });
  in_ns(o.ns_recv, [&] { t2 = create_tcp_transport(c2, cb2); });
  if (!t1 || !t2) {
    std::fprintf(stderr, "create: %s %s\n", t1.status().to_string().c_str(), t2.status().to_string().c_str());
    std::exit(1);
  }
  Status r = (*t2)->register_region(1, region.data(), region.size());
  (*t1)->set_peer_address(2, (*t2)->listen_address());
  (*t2)->set_peer_address(1, (*t1)->listen_address());
  Status s2;
  std::thread w([&] { s2 = (*t2)->connect(1, deadline_after(std::chrono::seconds(10))); });
  Status s1;
  in_ns(o.ns_send, [&] { s1 = (*t1)->connect(2, deadline_after(std::chrono::seconds(10))); });
  w.join();
  if (!r || !s1 || !s2) {
    std::fprintf(stderr, "connect: %s / %s\n", s1.to_string().c_str(), s2.to_string().c_str());
    std::exit(1);
  }
  const auto t0 = epd::transport::Clock::now();
  uint64_t off = 0;
  for (size_t sent = 0; sent < o.total;) {
    const size_t n = std::min(o.chunk, o.total - sent);
    if (off + n > region.size()) off = 0;
    Status s = mode == 0 ? (*t1)->write(2, 1, off, src.data(), n, 0, deadline_after(std::chrono::seconds(10)))
                         : (*t1)->send(2, 0, src.data(), n, deadline_after(std::chrono::seconds(10)));
    if (!s) {
      std::fprintf(stderr, "transport: %s\n", s.to_string().c_str());
      std::exit(1);
    }
    off += n;
    sent += n;
  }
  if (!got.wait_for(o.total, std::chrono::seconds(120))) {
    std::fprintf(stderr, "transport: receiver saw %zu of %zu bytes\n", got.bytes, o.total);
    std::exit(1);
  }
  return double(o.total) / duration<double>(epd::transport::Clock::now() - t0).count() / 1e9;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  bool netns = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--host") o.host = o.sender_host = v;
    else if (k == "--total-mib") o.total = std::stoull(v) << 20;
    else if (k == "--chunk-kib") o.chunk = std::stoull(v) << 10;
    else if (k == "--reps") o.reps = std::max(1, std::stoi(v));
    else if (k == "--netns") netns = v == "1";
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  const std::string tag = std::to_string(getpid() % 100000);
  if (netns) {
    o.ns_send = "epdb" + tag + "s";
    o.ns_recv = "epdb" + tag + "r";
    o.sender_host = "10.231.9.1";
    o.host = "10.231.9.2";
    const std::string va = "vb" + tag + "s", vb = "vb" + tag + "r";
    if (sh("ip netns add " + o.ns_send) || sh("ip netns add " + o.ns_recv) ||
        sh("ip link add " + va + " netns " + o.ns_send + " type veth peer name " + vb + " netns " + o.ns_recv) ||
        sh("ip -n " + o.ns_send + " addr add 10.231.9.1/24 dev " + va) ||
        sh("ip -n " + o.ns_recv + " addr add 10.231.9.2/24 dev " + vb) ||
        sh("ip -n " + o.ns_send + " link set " + va + " up") || sh("ip -n " + o.ns_recv + " link set " + vb + " up")) {
      std::fprintf(stderr, "could not set up the namespaces (root needed)\n");
      sh("ip netns del " + o.ns_send);
      sh("ip netns del " + o.ns_recv);
      return 1;
    }
  }
  std::vector<double> plain, wr, msg;
  for (int r = 0; r < o.reps; ++r) {  // interleaved, so drift hits all three alike
    plain.push_back(plain_tcp(o));
    wr.push_back(transport_tcp(o, 0));
    msg.push_back(transport_tcp(o, 1));
  }
  if (netns) {
    sh("ip netns del " + o.ns_send);
    sh("ip netns del " + o.ns_recv);
  }
  std::printf("%s -> %s%s, %zu MiB per run, %zu KiB chunks, median of %d runs\n", o.sender_host.c_str(),
              o.host.c_str(), netns ? " (veth between two network namespaces)" : "", o.total >> 20, o.chunk >> 10,
              o.reps);
  std::printf("plain TCP socket stream      : %6.2f GB/s\n", median(plain));
  std::printf("epd tcp transport, write()   : %6.2f GB/s  (ratio %.2f)\n", median(wr), median(wr) / median(plain));
  std::printf("epd tcp transport, send()    : %6.2f GB/s  (ratio %.2f)\n", median(msg), median(msg) / median(plain));
  return 0;
}
