// isoproxy-loadgen: both ends of RFC 1006 sessions over loopback, to measure
// a relay (isoproxy, HAProxy, socat...) placed between them. Used by
// bench/run.sh; see bench/README.md for the workloads and what each figure
// means.
//
// One process, one epoll thread, plays:
//   - the responder (upstream side): listens on --server, answers every CR with
//     a CC (TPKT reserved byte 0x11, as the vendor MTA of KB Q151626 does, so a
//     repairing relay has something to repair) and then, by the CR's called
//     TSAP, sinks ("BENCH-SINK": frames are counted, not kept) or echoes
//     ("BENCH-ECHO") every DT;
//   - the clients: connect to the relay at --relay, send a CR, wait for the CC,
//     then do what the workload says.
// The relay under test is configured (by run.sh) to forward --relay to
// --server. Its CPU and memory are read from /proc/PID (--pid): CPU is
// utime+stime+cutime+cstime summed over the process and its descendants, so a
// relay that forks per connection (socat) is measured whole.
//
// Results are printed as one line per figure, "RESULT key=value ...", for
// run.sh to collect; everything else goes to stderr. Exit status: 0 with
// results, 1 when the workload could not produce them (the reason on stderr),
// 64 for a bad command line.
//
// The generator is not the code under test and shares nothing with it: it
// frames TPKT and builds CR/CC/DT itself (protocol.md §2-§3).
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using Bytes = std::vector<std::uint8_t>;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 64;

constexpr std::size_t kReadChunk = 256 * 1024;
constexpr std::size_t kEchoQueueMax = 4u << 20;  // an echo connection stops reading beyond this
constexpr rlim_t kWantFiles = 20000;             // issue 7: the fd limit of the idle-hold workload
constexpr const char* kSinkTsap = "BENCH-SINK";
constexpr const char* kEchoTsap = "BENCH-ECHO";
constexpr const char* kCallingTsap = "BENCH-CLIENT";

void note(const std::string& s) { std::fprintf(stderr, "isoproxy-loadgen: %s\n", s.c_str()); }

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// "key=value" pairs of one result line, in insertion order.
class Result {
 public:
  explicit Result(std::string workload) { add("workload", std::move(workload)); }
  Result& add(const std::string& k, const std::string& v) {
    line_ += (line_.empty() ? "" : " ") + k + "=" + v;
    return *this;
  }
  Result& add(const std::string& k, double v, int decimals = 3) {
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", decimals, v);
    return add(k, std::string(b));
  }
  Result& add(const std::string& k, std::uint64_t v) { return add(k, std::to_string(v)); }
  Result& add(const std::string& k, int v) { return add(k, std::to_string(v)); }
  void print() const {
    std::printf("RESULT %s\n", line_.c_str());
    std::fflush(stdout);
  }

 private:
  std::string line_;
};

// Percentile of sorted values (nearest rank).
double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return NAN;
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

std::optional<sockaddr_in> parse_addr(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  if (inet_pton(AF_INET, text.substr(0, colon).c_str(), &a.sin_addr) != 1) return std::nullopt;
  char* end = nullptr;
  const long port = std::strtol(text.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port < 1 || port > 65535) return std::nullopt;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  return a;
}

void raise_file_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return;
  rlimit want = r;
  want.rlim_cur = std::max(r.rlim_cur, kWantFiles);
  if (want.rlim_max < want.rlim_cur) want.rlim_max = want.rlim_cur;  // root (CAP_SYS_RESOURCE) may raise it
  if (setrlimit(RLIMIT_NOFILE, &want) != 0) {
    want.rlim_cur = r.rlim_max;
    want.rlim_max = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &want);
  }
}

rlim_t file_limit() {
  rlimit r{};
  getrlimit(RLIMIT_NOFILE, &r);
  return r.rlim_cur;
}

double own_cpu_s() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// CPU-seconds the whole machine spent busy (all CPUs, /proc/stat), so that a
// run can say how much of it went to processes other than the relay and the
// generator: the machine is shared, and a figure taken while something else
// ran is marked as such.
double machine_busy_s() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  std::uint64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  static const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  return static_cast<double>(user + nice + system + irq + softirq + steal) / tick;
}

// ---------------------------------------------------------------------------
// The relay's process tree, from /proc.

struct ProcSample {
  double cpu_s = 0;       // utime+stime+cutime+cstime, summed over the tree
  long rss_kib = 0;       // VmRSS summed over the tree
  long pss_kib = 0;       // Pss summed over the tree (shared pages split between sharers)
  int processes = 0;      // 0: the relay is gone
};

struct StatLine {
  pid_t pid = 0, ppid = 0;
  double cpu_s = 0;
};

std::optional<StatLine> read_stat(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!std::getline(in, s)) return std::nullopt;
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
  const auto rp = s.rfind(')');
  if (rp == std::string::npos) return std::nullopt;
  std::istringstream f(s.substr(rp + 2));
  std::vector<std::string> v;
  for (std::string t; f >> t && v.size() < 16;) v.push_back(t);
  if (v.size() < 16) return std::nullopt;
  // Fields from 3 (state): ppid is 4, utime..cstime are 14..17 (proc(5)); v[0] is field 3.
  static const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  StatLine r;
  r.pid = pid;
  r.ppid = static_cast<pid_t>(std::stol(v[1]));
  r.cpu_s = (std::stod(v[11]) + std::stod(v[12]) + std::stod(v[13]) + std::stod(v[14])) / tick;
  return r;
}

long status_kib(pid_t pid, const char* key, const char* file) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/" + file);
  const std::size_t klen = std::strlen(key);
  for (std::string line; std::getline(in, line);) {
    if (line.compare(0, klen, key) == 0) return std::strtol(line.c_str() + klen, nullptr, 10);
  }
  return 0;
}

// The root and its descendants. A relay without children costs one read;
// with children (socat's fork per connection) the whole of /proc is scanned.
std::vector<StatLine> tree_of(pid_t root, bool scan) {
  std::vector<StatLine> out;
  auto r = read_stat(root);
  if (!r) return out;
  out.push_back(*r);
  if (!scan) return out;
  std::vector<StatLine> all;
  if (DIR* d = opendir("/proc")) {
    while (dirent* e = readdir(d)) {
      char* end = nullptr;
      const long pid = std::strtol(e->d_name, &end, 10);
      if (*end != '\0' || pid <= 0 || pid == root) continue;
      if (auto s = read_stat(static_cast<pid_t>(pid))) all.push_back(*s);
    }
    closedir(d);
  }
  for (std::size_t i = 0; i < out.size(); ++i) {
    for (const auto& s : all) {
      if (s.ppid == out[i].pid) out.push_back(s);
    }
  }
  return out;
}

ProcSample sample(pid_t root, bool tree, bool memory) {
  ProcSample p;
  if (root <= 0) return p;
  for (const auto& s : tree_of(root, tree)) {
    p.cpu_s += s.cpu_s;
    ++p.processes;
    if (memory) {
      p.rss_kib += status_kib(s.pid, "VmRSS:", "status");
      p.pss_kib += status_kib(s.pid, "Pss:", "smaps_rollup");
    }
  }
  return p;
}

// A measuring window: wall time, the relay's CPU, the generator's, and
// everyone else's (the machine's busy time less those two).
class Window {
 public:
  Window(pid_t pid, bool tree) : pid_(pid), tree_(tree) { restart(); }
  void restart() {
    relay0_ = sample(pid_, tree_, false).cpu_s;
    gen0_ = own_cpu_s();
    busy0_ = machine_busy_s();
    t0_ = Clock::now();
  }
  void stop() {
    elapsed = since(t0_);
    relay_cpu = sample(pid_, tree_, false).cpu_s - relay0_;
    gen_cpu = own_cpu_s() - gen0_;
    others_cpu = std::max(0.0, machine_busy_s() - busy0_ - relay_cpu - gen_cpu);
  }
  Clock::time_point started() const { return t0_; }
  // The common fields of a result line.
  void report(Result& r) const {
    r.add("seconds", elapsed).add("relay_cpu_s", relay_cpu).add("relay_cpu_util", relay_cpu / elapsed, 2);
    r.add("gen_cpu_s", gen_cpu).add("others_cpu_util", others_cpu / elapsed, 2);
  }
  double elapsed = 0, relay_cpu = 0, gen_cpu = 0, others_cpu = 0;

 private:
  pid_t pid_;
  bool tree_;
  Clock::time_point t0_{};
  double relay0_ = 0, gen0_ = 0, busy0_ = 0;
};

// ---------------------------------------------------------------------------
// RFC 1006 frames (protocol.md): TPKT header, then the TPDU.

void put_tpkt(Bytes& b, std::uint8_t reserved, std::size_t total) {
  b.push_back(3);
  b.push_back(reserved);
  b.push_back(static_cast<std::uint8_t>(total >> 8));
  b.push_back(static_cast<std::uint8_t>(total & 0xFF));
}

void put_param(Bytes& b, std::uint8_t code, const std::string& value) {
  b.push_back(code);
  b.push_back(static_cast<std::uint8_t>(value.size()));
  b.insert(b.end(), value.begin(), value.end());
}

// CR, class 0, with calling and called TSAPs and TPDU size 8192 (code 0x0D).
Bytes make_cr(const std::string& called, std::uint16_t src_ref) {
  Bytes tpdu = {0xE0, 0x00, 0x00, static_cast<std::uint8_t>(src_ref >> 8), static_cast<std::uint8_t>(src_ref), 0x00};
  put_param(tpdu, 0xC1, kCallingTsap);
  put_param(tpdu, 0xC2, called);
  tpdu.insert(tpdu.end(), {0xC0, 0x01, 0x0D});
  Bytes f;
  put_tpkt(f, 0, 4 + 1 + tpdu.size());
  f.push_back(static_cast<std::uint8_t>(tpdu.size()));  // LI
  f.insert(f.end(), tpdu.begin(), tpdu.end());
  return f;
}

// DT with EOT, `total` octets in all (7 of header), the payload a byte pattern.
Bytes make_dt(std::size_t total, std::uint32_t seed) {
  Bytes f;
  f.reserve(total);
  put_tpkt(f, 0, total);
  f.insert(f.end(), {0x02, 0xF0, 0x80});
  for (std::size_t i = 7; i < total; ++i) f.push_back(static_cast<std::uint8_t>(seed + i));
  return f;
}

bool is_type(const std::uint8_t* f, std::size_t n, std::uint8_t code) { return n >= 7 && (f[5] & 0xF0) == code; }

// The called TSAP of a CR, or "".
std::string called_tsap(const std::uint8_t* f, std::size_t n) {
  const std::size_t li = f[4];
  if (n < 5 + li || li < 6) return "";
  for (std::size_t i = 11; i + 2 <= 5 + li;) {
    const std::uint8_t code = f[i], len = f[i + 1];
    if (i + 2 + len > 5 + li) break;
    if (code == 0xC2) return std::string(reinterpret_cast<const char*>(f + i + 2), len);
    i += 2 + len;
  }
  return "";
}

// The CC answering a CR: its parameters echoed (protocol.md §3.2), DST-REF =
// the CR's SRC-REF, and the TPKT reserved byte 0x11 (KB Q151626).
Bytes make_cc(const std::uint8_t* cr, std::size_t n) {
  Bytes f(cr, cr + n);
  f[1] = 0x11;
  f[5] = 0xD0;
  f[6] = cr[9];
  f[7] = cr[10];
  f[8] = 0x4B;
  f[9] = 0x1D;
  return f;
}

// TPKT framing, per connection and direction. Whole frames are handed over
// while `keep` is on; with it off, frames are checked (version, length) and
// counted but their bodies skipped, so a sink costs no copy.
class Framer {
 public:
  bool keep = true;
  std::uint64_t frames = 0;
  std::uint64_t skipped = 0;  // octets consumed while not keeping
  std::string error;

  // on_frame(const uint8_t*, size_t) -> bool: false stops (the connection closed).
  template <class F>
  void feed(const std::uint8_t* p, std::size_t n, F&& on_frame) {
    while (n > 0 && error.empty()) {
      if (need_ == 0) {
        if (keep && hlen_ == 0 && n >= 4) {
          // Fast path: a whole frame in the buffer is handed over in place.
          const std::size_t len = (std::size_t{p[2]} << 8) | p[3];
          if (p[0] == 3 && len >= 7 && len <= n) {
            ++frames;
            if (!on_frame(p, len)) return;
            p += len;
            n -= len;
            continue;
          }
        }
        const std::size_t take = std::min<std::size_t>(4 - hlen_, n);
        std::memcpy(hdr_.data() + hlen_, p, take);
        hlen_ += take;
        p += take;
        n -= take;
        if (!keep) skipped += take;
        if (hlen_ < 4) return;
        hlen_ = 0;
        const std::size_t len = (std::size_t{hdr_[2]} << 8) | hdr_[3];
        if (hdr_[0] != 3 || len < 7) {
          char b[96];
          std::snprintf(b, sizeof b, "not a TPKT: %02X %02X %02X %02X after %llu frames", hdr_[0], hdr_[1], hdr_[2],
                        hdr_[3], static_cast<unsigned long long>(frames));
          error = b;
          return;
        }
        need_ = len - 4;
        kept_ = keep;
        if (kept_) cur_.assign(hdr_.begin(), hdr_.end());
        continue;
      }
      const std::size_t take = std::min(need_, n);
      if (kept_) {
        cur_.insert(cur_.end(), p, p + take);
      } else {
        skipped += take;
      }
      p += take;
      n -= take;
      need_ -= take;
      if (need_ == 0) {
        ++frames;
        if (kept_ && !on_frame(cur_.data(), cur_.size())) return;
      }
    }
  }
  bool mid_frame() const { return need_ != 0 || hlen_ != 0; }

 private:
  std::array<std::uint8_t, 4> hdr_{};
  std::size_t hlen_ = 0;
  std::size_t need_ = 0;  // body octets of the current frame still to come
  bool kept_ = false;
  Bytes cur_;
};

// ---------------------------------------------------------------------------
// The event loop: level-triggered epoll, handlers by pointer.

class Loop {
 public:
  class Handler {
   public:
    virtual ~Handler() = default;
    virtual void on_event(std::uint32_t events) = 0;
  };

  Loop() : ep_(epoll_create1(EPOLL_CLOEXEC)) {
    if (ep_ < 0) {
      note(std::string("epoll_create1: ") + std::strerror(errno));
      std::exit(kExitFailed);
    }
  }
  ~Loop() { ::close(ep_); }
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  void add(int fd, Handler* h, std::uint32_t ev) { ctl(EPOLL_CTL_ADD, fd, h, ev); }
  void modify(int fd, Handler* h, std::uint32_t ev) { ctl(EPOLL_CTL_MOD, fd, h, ev); }
  void remove(int fd) { epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr); }
  // Destroyed after the current batch of events, which may still name it.
  void retire(std::unique_ptr<Handler> h) { graveyard_.push_back(std::move(h)); }

  // Runs until done() or the deadline; `tick` runs between batches, at least
  // every 10 ms. Returns done().
  bool run(const std::function<bool()>& done, Clock::time_point deadline, const std::function<void()>& tick = {}) {
    std::array<epoll_event, 256> evs{};
    while (!done()) {
      const auto now = Clock::now();
      if (now >= deadline) return false;
      const int n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), 10);
      if (n < 0 && errno != EINTR) {
        note(std::string("epoll_wait: ") + std::strerror(errno));
        return false;
      }
      for (int i = 0; i < n; ++i) static_cast<Handler*>(evs[static_cast<std::size_t>(i)].data.ptr)->on_event(evs[static_cast<std::size_t>(i)].events);
      graveyard_.clear();
      if (tick) tick();
      graveyard_.clear();
    }
    return true;
  }
  void run_for(double seconds, const std::function<void()>& tick = {}) {
    const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    run([] { return false; }, end, tick);
  }

 private:
  void ctl(int op, int fd, Handler* h, std::uint32_t ev) {
    epoll_event e{};
    e.events = ev;
    e.data.ptr = h;
    if (epoll_ctl(ep_, op, fd, &e) != 0) {
      note(std::string("epoll_ctl: ") + std::strerror(errno));
      std::exit(kExitFailed);
    }
  }
  int ep_;
  std::vector<std::unique_ptr<Handler>> graveyard_;
};

Clock::time_point deadline_in(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

class Conn;

// What one side does with its connections.
class Peer {
 public:
  virtual ~Peer() = default;
  virtual void on_connected(Conn&) {}
  // A whole frame (while the connection's framer keeps frames). Return false
  // if the connection was closed.
  virtual bool on_frame(Conn&, const std::uint8_t*, std::size_t) { return true; }
  virtual void on_eof(Conn&);
  virtual void on_writable(Conn&) {}
  virtual void on_error(Conn&, const std::string&);
  virtual void on_closed(Conn&) {}
};

// One TCP connection: non-blocking, a write queue, a framer.
class Conn final : public Loop::Handler {
 public:
  // Per-workload state, kept here so that peers need no side tables.
  std::uint64_t left = 0;       // streaming: octets still to send
  std::uint64_t sent = 0;
  Clock::time_point stamp{};    // ping-pong: when the frame in flight left
  Clock::time_point next{};     // trickle: when to send next
  bool established = false;     // the CC was seen (client) / sent (responder)
  bool echo = false;            // responder: echo DTs
  bool sink = false;            // responder: count DTs
  Framer framer;

  Conn(Loop& loop, int fd, Peer& peer, bool connecting) : loop_(loop), fd_(fd), peer_(peer), connecting_(connecting) {
    events_ = connecting ? EPOLLOUT : EPOLLIN;
    loop_.add(fd_, this, events_);
  }
  ~Conn() override {
    if (fd_ >= 0) ::close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  bool closed() const { return fd_ < 0; }
  std::size_t queued() const { return out_.size() - out_off_; }
  int fd() const { return fd_; }

  // Queues what cannot be written at once.
  void send(const std::uint8_t* p, std::size_t n) {
    if (closed()) return;
    if (queued() == 0 && !connecting_) {
      const ssize_t w = ::send(fd_, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN) {
        fail(std::string("send: ") + std::strerror(errno));
        return;
      }
      if (w > 0) {
        p += w;
        n -= static_cast<std::size_t>(w);
      }
      if (n == 0) return;
    }
    if (out_off_ > 0 && out_off_ == out_.size()) {
      out_.clear();
      out_off_ = 0;
    }
    out_.insert(out_.end(), p, p + n);
    update();
  }
  void send(const Bytes& b) { send(b.data(), b.size()); }

  // Streaming: writes what the socket takes now, without queueing. -1 on EAGAIN.
  ssize_t write_some(const std::uint8_t* p, std::size_t n) {
    const ssize_t w = ::send(fd_, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN) fail(std::string("send: ") + std::strerror(errno));
    return w;
  }
  // Streaming: on_writable is called while the socket has room.
  void want_writable(bool on) {
    want_writable_ = on;
    update();
  }
  void set_reading(bool on) {
    reading_ = on;
    update();
  }
  void shutdown_write() {
    if (closed()) return;
    if (queued() > 0) {
      shutdown_after_flush_ = true;
      return;
    }
    ::shutdown(fd_, SHUT_WR);
  }
  void close_after_flush() {
    if (queued() == 0) {
      close();
    } else {
      close_after_flush_ = true;
      reading_ = false;
      update();
    }
  }
  // Takes the connection out of the loop; its owner retires the object.
  void close() {
    if (closed()) return;
    loop_.remove(fd_);
    ::close(fd_);
    fd_ = -1;
    peer_.on_closed(*this);
  }
  void fail(const std::string& why) {
    if (closed()) return;
    peer_.on_error(*this, why);
    close();
  }

  void on_event(std::uint32_t ev) override {
    if (closed()) return;
    if (connecting_) {
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        fail(std::string("connect: ") + std::strerror(err));
        return;
      }
      connecting_ = false;
      update();
      peer_.on_connected(*this);
      if (!closed() && queued() > 0) flush();
      return;
    }
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && reading_) on_readable();
    if (closed()) return;
    if (ev & EPOLLOUT) {
      flush();
      if (!closed() && queued() == 0 && want_writable_) peer_.on_writable(*this);
    }
    if (!closed() && (ev & EPOLLERR) && !reading_) fail("socket error");
  }

 private:
  void update() {
    if (closed()) return;
    std::uint32_t want = 0;
    if (connecting_) {
      want = EPOLLOUT;
    } else {
      if (reading_) want |= EPOLLIN;
      if (queued() > 0 || want_writable_) want |= EPOLLOUT;
    }
    if (want != events_) {
      events_ = want;
      loop_.modify(fd_, this, want);
    }
  }
  void flush() {
    while (queued() > 0) {
      const ssize_t w = ::send(fd_, out_.data() + out_off_, queued(), MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN) break;
        fail(std::string("send: ") + std::strerror(errno));
        return;
      }
      out_off_ += static_cast<std::size_t>(w);
    }
    if (queued() == 0) {
      out_.clear();
      out_off_ = 0;
      if (shutdown_after_flush_) {
        shutdown_after_flush_ = false;
        ::shutdown(fd_, SHUT_WR);
      }
      if (close_after_flush_) {
        close();
        return;
      }
    }
    update();
  }
  void on_readable() {
    static std::vector<std::uint8_t> buf(kReadChunk);
    for (int i = 0; i < 4 && !closed() && reading_; ++i) {
      const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
      if (n < 0) {
        if (errno == EAGAIN) return;
        fail(errno == ECONNRESET ? std::string("reset by peer") : std::string("recv: ") + std::strerror(errno));
        return;
      }
      if (n == 0) {
        reading_ = false;
        update();
        if (framer.mid_frame()) {
          fail("closed inside a frame");
          return;
        }
        peer_.on_eof(*this);
        return;
      }
      framer.feed(buf.data(), static_cast<std::size_t>(n),
                  [this](const std::uint8_t* f, std::size_t len) { return peer_.on_frame(*this, f, len) && !closed(); });
      if (!framer.error.empty() && !closed()) {
        fail(framer.error);
        return;
      }
      if (static_cast<std::size_t>(n) < buf.size()) return;
    }
  }

  Loop& loop_;
  int fd_;
  Peer& peer_;
  bool connecting_;
  bool reading_ = true;
  bool want_writable_ = false;
  bool shutdown_after_flush_ = false;
  bool close_after_flush_ = false;
  std::uint32_t events_ = 0;
  Bytes out_;
  std::size_t out_off_ = 0;
};

void Peer::on_eof(Conn& c) { c.close_after_flush(); }
void Peer::on_error(Conn&, const std::string&) {}

// Connections a peer owns; closed ones are retired to the loop.
class ConnSet {
 public:
  explicit ConnSet(Loop& loop) : loop_(loop) {}
  Conn& adopt(std::unique_ptr<Conn> c) {
    Conn& r = *c;
    conns_.emplace(&r, std::move(c));
    return r;
  }
  void release(Conn& c) {
    auto it = conns_.find(&c);
    if (it == conns_.end()) return;
    loop_.retire(std::move(it->second));
    conns_.erase(it);
  }
  std::size_t size() const { return conns_.size(); }
  template <class F>
  void each(F&& f) {
    std::vector<Conn*> all;
    all.reserve(conns_.size());
    for (auto& [p, c] : conns_) all.push_back(p);
    for (Conn* c : all) f(*c);
  }
  void close_all() {
    each([](Conn& c) { c.close(); });
  }

 private:
  Loop& loop_;
  std::unordered_map<Conn*, std::unique_ptr<Conn>> conns_;
};

int tcp_socket() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// ---------------------------------------------------------------------------
// The responder: the upstream end of every relayed session.

class Responder final : public Peer {
 public:
  std::uint64_t errors = 0;
  std::string last_error;

  Responder(Loop& loop, const sockaddr_in& addr) : loop_(loop), conns_(loop), acceptor_(*this) {
    fd_ = tcp_socket();
    const int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 4096) != 0) {
      char b[64];
      inet_ntop(AF_INET, &addr.sin_addr, b, sizeof b);
      note(std::string("responder: cannot listen on ") + b + ":" + std::to_string(ntohs(addr.sin_port)) + ": " +
           std::strerror(errno));
      std::exit(kExitFailed);
    }
    loop_.add(fd_, &acceptor_, EPOLLIN);
  }
  ~Responder() override {
    conns_.close_all();
    if (fd_ >= 0) ::close(fd_);
  }
  Responder(const Responder&) = delete;
  Responder& operator=(const Responder&) = delete;

  std::size_t open() const { return conns_.size(); }
  std::uint64_t accepted() const { return accepted_; }

  bool on_frame(Conn& c, const std::uint8_t* f, std::size_t n) override {
    if (!c.established) {
      if (!is_type(f, n, 0xE0)) {
        c.fail("responder: first frame is not a CR");
        return false;
      }
      c.send(make_cc(f, n));
      c.established = true;
      const std::string called = called_tsap(f, n);
      c.sink = called == kSinkTsap;
      c.echo = called == kEchoTsap;
      if (c.sink) c.framer.keep = false;  // from here on, count only
      return true;
    }
    if (c.echo) {
      c.send(f, n);
      if (c.queued() > kEchoQueueMax) c.set_reading(false);  // resumes in on_writable
      if (c.queued() > 0) c.want_writable(true);
    }
    return true;
  }
  void on_writable(Conn& c) override {
    c.want_writable(false);
    c.set_reading(true);
  }
  void on_error(Conn&, const std::string& why) override {
    ++errors;
    last_error = why;
  }
  void on_closed(Conn& c) override { conns_.release(c); }

 private:
  class Acceptor final : public Loop::Handler {
   public:
    explicit Acceptor(Responder& r) : r_(r) {}
    void on_event(std::uint32_t) override { r_.accept_all(); }

   private:
    Responder& r_;
  };
  void accept_all() {
    for (int i = 0; i < 256; ++i) {
      const int fd = ::accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno != EAGAIN && errno != EINTR) {
          ++errors;
          last_error = std::string("accept: ") + std::strerror(errno);
        }
        return;
      }
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      ++accepted_;
      conns_.adopt(std::make_unique<Conn>(loop_, fd, *this, false));
    }
  }

 public:
  // DT octets received so far on sink connections (counted by their
  // framers, which skip the bodies), closed ones included.
  std::uint64_t tally() {
    std::uint64_t total = closed_sink_bytes_;
    conns_.each([&](Conn& c) {
      if (c.sink) total += c.framer.skipped;
    });
    return total;
  }
  void on_eof(Conn& c) override {
    if (c.sink) closed_sink_bytes_ += c.framer.skipped;
    c.close_after_flush();
  }

 private:
  Loop& loop_;
  ConnSet conns_;
  Acceptor acceptor_;
  int fd_ = -1;
  std::uint64_t accepted_ = 0;
  std::uint64_t closed_sink_bytes_ = 0;
};

// ---------------------------------------------------------------------------
// Clients.

struct Common {
  std::string relay = "127.0.0.1:10102";
  std::string server = "127.0.0.1:11102";
  pid_t pid = 0;       // the relay's process, measured from /proc
  bool tree = false;   // the relay forks: scan its descendants too
  double seconds = 30; // bound on the workload's measuring phase
};

struct Setup {
  sockaddr_in relay{};
  sockaddr_in server{};
};

// Opens a connection to the relay, owned by `set`; nullptr (counted by the
// caller) when the socket cannot even be made.
Conn* dial(Loop& loop, ConnSet& set, Peer& peer, const sockaddr_in& to, std::string& error) {
  const int fd = tcp_socket();
  if (fd < 0) {
    error = std::string("socket: ") + std::strerror(errno);
    return nullptr;
  }
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) != 0 && errno != EINPROGRESS) {
    error = std::string("connect: ") + std::strerror(errno);
    ::close(fd);
    return nullptr;
  }
  return &set.adopt(std::make_unique<Conn>(loop, fd, peer, true));
}

// Throughput: N connections stream DT frames of `frame` octets to a sink.
class Streamer final : public Peer {
 public:
  std::uint64_t established = 0, errors = 0, sent = 0;
  std::string last_error;

  Streamer(Loop& loop, std::size_t frame) : conns_(loop) {
    for (int i = 0; i < 16; ++i) {
      Bytes f = make_dt(frame, static_cast<std::uint32_t>(i));
      pattern_.insert(pattern_.end(), f.begin(), f.end());
    }
    frame_ = frame;
  }
  ConnSet& conns() { return conns_; }
  void on_connected(Conn& c) override { c.send(make_cr(kSinkTsap, 0x0101)); }
  bool on_frame(Conn& c, const std::uint8_t* f, std::size_t n) override {
    if (!c.established && is_type(f, n, 0xD0)) {
      c.established = true;
      ++established;
      return true;
    }
    c.fail("unexpected frame from the relay");
    return false;
  }
  // Starts streaming `bytes` (a multiple of the frame size) on every connection.
  void start(std::uint64_t bytes_each) {
    conns_.each([&](Conn& c) {
      c.left = bytes_each;
      c.want_writable(true);
    });
  }
  // Stops at the next frame boundary.
  void stop() {
    conns_.each([&](Conn& c) {
      if (c.left > 0) c.left = (frame_ - c.sent % frame_) % frame_;
      if (c.left == 0) c.want_writable(false);
    });
  }
  void on_writable(Conn& c) override {
    while (c.left > 0) {
      const std::size_t off = c.sent % pattern_.size();
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(c.left, pattern_.size() - off));
      const ssize_t w = c.write_some(pattern_.data() + off, n);
      if (w <= 0) return;
      c.sent += static_cast<std::uint64_t>(w);
      c.left -= static_cast<std::uint64_t>(w);
      sent += static_cast<std::uint64_t>(w);
    }
    c.want_writable(false);
  }
  void on_error(Conn&, const std::string& why) override {
    ++errors;
    last_error = why;
  }
  void on_closed(Conn& c) override { conns_.release(c); }

 private:
  ConnSet conns_;
  Bytes pattern_;
  std::size_t frame_ = 8192;
};

// Opens `n` connections through the relay and waits for their CCs.
bool open_streams(Loop& loop, Streamer& s, const Setup& st, int n, double seconds) {
  std::string err;
  for (int i = 0; i < n; ++i) {
    if (!dial(loop, s.conns(), s, st.relay, err)) {
      note(err);
      return false;
    }
  }
  const bool ok = loop.run([&] { return s.established == static_cast<std::uint64_t>(n) || s.errors > 0; },
                           deadline_in(seconds));
  if (!ok || s.errors > 0) {
    note("the streams did not reach CC: " + (s.errors ? s.last_error : std::string("timeout")));
    return false;
  }
  return true;
}

int run_throughput(const Common& o, const Setup& st, int conns, std::uint64_t bytes, std::size_t frame) {
  Loop loop;
  Responder resp(loop, st.server);
  Streamer s(loop, frame);
  if (!open_streams(loop, s, st, conns, 10)) return kExitFailed;
  const std::uint64_t each = std::max<std::uint64_t>(1, bytes / static_cast<std::uint64_t>(conns) / frame) * frame;
  const std::uint64_t total = each * static_cast<std::uint64_t>(conns);
  Window w(o.pid, o.tree);
  s.start(each);
  std::uint64_t got = 0;
  const bool done = loop.run([&] { return (got = resp.tally()) >= total || s.errors > 0 || resp.errors > 0; },
                             deadline_in(o.seconds));
  w.stop();
  if (s.errors || resp.errors) {
    note("throughput: " + (s.errors ? s.last_error : resp.last_error));
    return kExitFailed;
  }
  if (got == 0) {
    note("throughput: nothing arrived at the responder");
    return kExitFailed;
  }
  Result r("throughput");
  r.add("conns", conns).add("frame", static_cast<std::uint64_t>(frame)).add("bytes", got);
  r.add("mbps", static_cast<double>(got) / 1e6 / w.elapsed, 1);
  r.add("cpu_s_per_gb", w.relay_cpu / (static_cast<double>(got) / 1e9));
  w.report(r);
  r.add("complete", done ? "1" : "0");
  r.print();
  s.conns().close_all();
  loop.run([&] { return resp.open() == 0; }, deadline_in(5));
  return kExitOk;
}

// Ping-pong: one connection, one frame in flight, echoed by the responder.
class Pinger final : public Peer {
 public:
  std::vector<double> rtt_us;
  std::uint64_t errors = 0, count = 0, warmup = 0;
  std::string last_error;
  bool established = false;

  Pinger(Loop& loop, std::size_t size) : conns_(loop), frame_(make_dt(size, 7)) {}
  ConnSet& conns() { return conns_; }
  void on_connected(Conn& c) override { c.send(make_cr(kEchoTsap, 0x0202)); }
  bool on_frame(Conn& c, const std::uint8_t* f, std::size_t n) override {
    const auto now = Clock::now();
    if (!c.established) {
      if (!is_type(f, n, 0xD0)) {
        c.fail("no CC");
        return false;
      }
      c.established = established = true;
      send_next(c);
      return true;
    }
    if (n != frame_.size() || std::memcmp(f + 7, frame_.data() + 7, n - 7) != 0) {
      c.fail("the echo differs from the frame sent");
      return false;
    }
    ++done_;
    if (done_ > warmup) rtt_us.push_back(std::chrono::duration<double, std::micro>(now - c.stamp).count());
    if (done_ < warmup + count) send_next(c);
    return true;
  }
  bool finished() const { return done_ >= warmup + count; }
  void on_error(Conn&, const std::string& why) override {
    ++errors;
    last_error = why;
  }
  void on_closed(Conn& c) override { conns_.release(c); }

 private:
  void send_next(Conn& c) {
    frame_[7] = static_cast<std::uint8_t>(done_);  // a different payload each time
    c.stamp = Clock::now();
    c.send(frame_);
  }
  ConnSet conns_;
  Bytes frame_;
  std::uint64_t done_ = 0;
};

int run_pingpong(const Common& o, const Setup& st, std::uint64_t count, std::uint64_t warmup, std::size_t size) {
  Loop loop;
  Responder resp(loop, st.server);
  Pinger p(loop, size);
  p.count = count;
  p.warmup = warmup;
  p.rtt_us.reserve(count);
  std::string err;
  if (!dial(loop, p.conns(), p, st.relay, err)) {
    note(err);
    return kExitFailed;
  }
  Window w(o.pid, o.tree);
  const bool done = loop.run([&] { return p.finished() || p.errors > 0 || resp.errors > 0; }, deadline_in(o.seconds));
  w.stop();
  if (p.errors || resp.errors) {
    note("pingpong: " + (p.errors ? p.last_error : resp.last_error));
    return kExitFailed;
  }
  if (p.rtt_us.size() < 100) {
    note("pingpong: only " + std::to_string(p.rtt_us.size()) + " round trips within the time allowed");
    return kExitFailed;
  }
  std::sort(p.rtt_us.begin(), p.rtt_us.end());
  const double mean = std::accumulate(p.rtt_us.begin(), p.rtt_us.end(), 0.0) / static_cast<double>(p.rtt_us.size());
  Result r("pingpong");
  r.add("size", static_cast<std::uint64_t>(size)).add("round_trips", static_cast<std::uint64_t>(p.rtt_us.size()));
  r.add("p50_us", percentile(p.rtt_us, 50), 1).add("p99_us", percentile(p.rtt_us, 99), 1);
  r.add("p999_us", percentile(p.rtt_us, 99.9), 1).add("max_us", p.rtt_us.back(), 1).add("mean_us", mean, 1);
  r.add("relay_cpu_us_per_rt", w.relay_cpu * 1e6 / static_cast<double>(p.rtt_us.size() + warmup), 2);
  w.report(r);
  r.add("complete", done ? "1" : "0");
  r.print();
  p.conns().close_all();
  loop.run([&] { return resp.open() == 0; }, deadline_in(5));
  return kExitOk;
}

// Short sessions: connect, CR, CC, FIN, wait for the relay's FIN, close.
// `hold` instead keeps each session open once its CC arrived, optionally
// sending a small echoed frame every `trickle` seconds.
class Cycler final : public Peer {
 public:
  std::uint64_t started = 0, completed = 0, errors = 0, established = 0;
  std::string last_error;
  std::map<std::string, std::uint64_t> error_kinds;
  bool hold = false;
  double trickle_s = 0;
  std::uint64_t echoes = 0;
  std::vector<double> echo_ms;  // round trips of the trickle frames, while `timing`
  bool timing = false;

  Cycler(Loop& loop, const sockaddr_in& relay) : loop_(loop), conns_(loop), relay_(relay), small_(make_dt(64, 3)) {}
  ConnSet& conns() { return conns_; }
  std::size_t open() const { return conns_.size(); }

  // Opens one more session, if `limit` allows.
  void launch() {
    std::string err;
    ++started;
    if (!dial(loop_, conns_, *this, relay_, err)) count_error(err);
  }
  void on_connected(Conn& c) override {
    c.send(make_cr(hold && trickle_s > 0 ? kEchoTsap : kSinkTsap, static_cast<std::uint16_t>(started)));
  }
  bool on_frame(Conn& c, const std::uint8_t* f, std::size_t n) override {
    if (!c.established) {
      if (!is_type(f, n, 0xD0)) {
        c.fail("no CC");
        return false;
      }
      c.established = true;
      ++established;
      if (hold) {
        // Spread the trickle over its period so the relay sees a steady rate.
        c.next = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(trickle_s * static_cast<double>(established % 1000) / 1000.0));
      } else {
        c.shutdown_write();
      }
      return true;
    }
    ++echoes;
    if (timing) echo_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - c.stamp).count());
    return true;
  }
  void on_eof(Conn& c) override {
    if (c.established && !hold) {
      ++completed;
    } else {
      count_error(c.established ? "the relay closed a held session" : "the relay closed before the CC");
    }
    c.close();
  }
  // Sends the trickle frames that are due; looks at most every 5 ms.
  void tick() {
    if (!hold || trickle_s <= 0) return;
    const auto now = Clock::now();
    if (now - last_tick_ < std::chrono::milliseconds(5)) return;
    last_tick_ = now;
    const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(trickle_s));
    conns_.each([&](Conn& c) {
      if (c.established && c.next <= now) {
        c.stamp = now;
        c.send(small_);
        c.next += period;
      }
    });
  }
  void on_error(Conn&, const std::string& why) override { count_error(why); }
  void on_closed(Conn& c) override { conns_.release(c); }

 private:
  void count_error(const std::string& why) {
    ++errors;
    last_error = why;
    ++error_kinds[why];
  }
  Loop& loop_;
  ConnSet conns_;
  sockaddr_in relay_;
  Bytes small_;
  Clock::time_point last_tick_{};
};

std::string error_summary(const std::map<std::string, std::uint64_t>& kinds) {
  std::string s;
  for (const auto& [k, v] : kinds) s += (s.empty() ? "" : "; ") + k + " x" + std::to_string(v);
  return s;
}

// Waits (bounded) until a forking relay has no children left, so that their
// CPU is in the parent's cutime/cstime.
void settle(const Common& o) {
  if (!o.tree || o.pid <= 0) return;
  const auto end = deadline_in(5);
  while (Clock::now() < end && tree_of(o.pid, true).size() > 1) std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

// Runs short sessions, `concurrency` at a time, until `count` completed or the time is up.
bool cycle(Loop& loop, Cycler& c, std::uint64_t count, int concurrency, double seconds) {
  const auto end = deadline_in(seconds);
  bool out_of_time = false;
  auto refill = [&] {
    out_of_time = Clock::now() >= end;
    while (!out_of_time && c.open() < static_cast<std::size_t>(concurrency) && c.started < count) c.launch();
  };
  refill();
  loop.run([&] { return c.open() == 0 && (c.started >= count || out_of_time); }, end + std::chrono::seconds(5), refill);
  return c.started >= count;
}

int run_connrate(const Common& o, const Setup& st, std::uint64_t count, int concurrency) {
  Loop loop;
  Responder resp(loop, st.server);
  Cycler c(loop, st.relay);
  Window w(o.pid, o.tree);
  const bool all = cycle(loop, c, count, concurrency, o.seconds);
  const double elapsed = since(w.started());
  settle(o);  // a forking relay's children exit after the last session: their CPU counts
  w.stop();
  w.elapsed = elapsed;
  if (c.completed == 0) {
    note("connrate: no session completed" + (c.errors ? ": " + c.last_error : std::string()));
    return kExitFailed;
  }
  if (c.errors) note("connrate: " + std::to_string(c.errors) + " sessions failed: " + error_summary(c.error_kinds));
  Result r("connrate");
  r.add("sessions", c.completed).add("errors", c.errors).add("concurrency", concurrency);
  r.add("conns_per_s", static_cast<double>(c.completed) / elapsed, 0);
  r.add("cpu_us_per_conn", w.relay_cpu * 1e6 / static_cast<double>(c.completed + c.errors), 1);
  w.report(r);
  r.add("complete", all ? "1" : "0");
  r.print();
  return kExitOk;
}

// Opens `n` held sessions, `concurrency` handshakes at a time.
bool open_held(Loop& loop, Cycler& c, std::uint64_t n, int concurrency, double seconds) {
  const auto end = deadline_in(seconds);
  auto refill = [&] {
    c.tick();
    const std::uint64_t settled = c.established + c.errors;
    const std::uint64_t pending = c.started > settled ? c.started - settled : 0;
    for (std::uint64_t k = pending; k < static_cast<std::uint64_t>(concurrency) && c.started < n; ++k) c.launch();
  };
  refill();
  return loop.run([&] { return c.established + c.errors >= n; }, end, refill) && c.errors == 0;
}

int run_idle(const Common& o, const Setup& st, std::uint64_t n, int concurrency, double hold_s) {
  if (file_limit() < 2 * n + 100) {
    note("idle: the file limit is " + std::to_string(file_limit()) + ", too low for " + std::to_string(n) +
         " sessions (both ends live here: 2 per session)");
    return kExitFailed;
  }
  Loop loop;
  Responder resp(loop, st.server);
  Cycler c(loop, st.relay);
  c.hold = true;
  const ProcSample m0 = sample(o.pid, o.tree, true);
  const auto t0 = Clock::now();
  const bool ok = open_held(loop, c, n, concurrency, o.seconds);
  const double setup = since(t0);
  if (!ok) {
    note("idle: " + std::to_string(c.established) + " of " + std::to_string(n) + " sessions established" +
         (c.errors ? ": " + error_summary(c.error_kinds) : std::string(": timeout")));
    return kExitFailed;
  }
  loop.run_for(1.0);  // let the relay finish whatever the last handshakes started
  const ProcSample m1 = sample(o.pid, o.tree, true);
  if (c.open() != n || resp.open() != n) {
    note("idle: sessions closed while held: " + std::to_string(c.open()) + " clients, " + std::to_string(resp.open()) +
         " upstream connections open of " + std::to_string(n));
    return kExitFailed;
  }
  Result r("idle");
  r.add("sessions", n).add("setup_s", setup).add("processes", m1.processes);
  r.add("rss_before_kib", static_cast<std::uint64_t>(m0.rss_kib)).add("rss_after_kib", static_cast<std::uint64_t>(m1.rss_kib));
  r.add("rss_kib_per_session", static_cast<double>(m1.rss_kib - m0.rss_kib) / static_cast<double>(n), 2);
  r.add("pss_kib_per_session", static_cast<double>(m1.pss_kib - m0.pss_kib) / static_cast<double>(n), 2);
  r.print();
  if (hold_s > 0) {
    // For a look at the relay meanwhile (heaptrack, gdb, /proc/PID/smaps).
    note("idle: holding the sessions for " + std::to_string(hold_s) + " s");
    loop.run_for(hold_s);
  }
  c.conns().close_all();
  loop.run([&] { return resp.open() == 0; }, deadline_in(20));
  return kExitOk;
}

// ---------------------------------------------------------------------------
// Live stats (issue 5): HTTP GETs against the admin endpoint.

class HttpGetter {
 public:
  explicit HttpGetter(const sockaddr_in& addr) : addr_(addr) {}
  ~HttpGetter() { disconnect(); }
  HttpGetter(const HttpGetter&) = delete;
  HttpGetter& operator=(const HttpGetter&) = delete;

  // One GET over a kept-alive connection; the body's size, or nullopt with `error`.
  std::optional<std::size_t> get(const std::string& path, std::string& error) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (fd_ < 0 && !connect_now(error)) return std::nullopt;
      const std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n";
      if (::send(fd_, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
        disconnect();
        continue;  // the server closed the idle connection: once more on a new one
      }
      auto r = read_response(error);
      if (!r && attempt == 0 && error == "closed") {
        disconnect();
        continue;
      }
      return r;
    }
    return std::nullopt;
  }

 private:
  bool connect_now(std::string& error) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_) != 0) {
      error = std::string("admin endpoint: connect: ") + std::strerror(errno);
      disconnect();
      return false;
    }
    return true;
  }
  void disconnect() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    buf_.clear();
  }
  bool fill(std::string& error) {
    char b[65536];
    const ssize_t n = ::recv(fd_, b, sizeof b, 0);
    if (n <= 0) {
      error = n == 0 ? "closed" : std::string("admin endpoint: recv: ") + std::strerror(errno);
      return false;
    }
    buf_.append(b, static_cast<std::size_t>(n));
    return true;
  }
  std::optional<std::size_t> read_response(std::string& error) {
    std::size_t hend;
    while ((hend = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(error)) return std::nullopt;
    }
    std::string head = buf_.substr(0, hend);
    for (auto& ch : head) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (head.compare(0, 12, "http/1.1 200") != 0) {
      error = "admin endpoint: " + buf_.substr(0, buf_.find("\r\n"));
      disconnect();
      return std::nullopt;
    }
    const auto cl = head.find("content-length:");
    if (cl == std::string::npos) {
      error = "admin endpoint: no Content-Length";
      disconnect();
      return std::nullopt;
    }
    const std::size_t len = std::strtoul(head.c_str() + cl + 15, nullptr, 10);
    while (buf_.size() < hend + 4 + len) {
      if (!fill(error)) return std::nullopt;
    }
    buf_.erase(0, hend + 4 + len);
    if (head.find("connection: close") != std::string::npos) disconnect();
    return len;
  }

  sockaddr_in addr_;
  int fd_ = -1;
  std::string buf_;
};

// Runs `work` on its own thread while the loop keeps the relayed sessions
// going; returns when it is done (or the loop's deadline passed).
void while_looping(Loop& loop, Cycler& c, double seconds, const std::function<void()>& work) {
  std::atomic<bool> finished{false};
  std::thread t([&] {
    work();
    finished = true;
  });
  loop.run([&] { return finished.load(); }, deadline_in(seconds), [&] { c.tick(); });
  t.join();
}

struct LivestatsOptions {
  std::string admin = "127.0.0.1:9102";
  std::uint64_t sessions = 1000;
  std::uint64_t closed = 1000;
  double trickle_s = 1.0;
  int requests = 200;
  double stream_s = 8;
  int rounds = 2;
  std::vector<double> poll_hz = {0, 1, 10};
};

int run_livestats(const Common& o, const Setup& st, const LivestatsOptions& lo) {
  const auto admin = parse_addr(lo.admin);
  if (!admin) {
    note("--admin: not an IPv4 address:port: " + lo.admin);
    return kExitUsage;
  }
  if (file_limit() < 2 * lo.sessions + 100) {
    note("livestats: the file limit is too low for " + std::to_string(lo.sessions) + " sessions");
    return kExitFailed;
  }
  Loop loop;
  Responder resp(loop, st.server);
  // 1. Fill the relay's list of recently closed sessions.
  {
    Cycler churn(loop, st.relay);
    cycle(loop, churn, lo.closed, 16, 60);
    if (churn.completed < lo.closed) {
      note("livestats: only " + std::to_string(churn.completed) + " of " + std::to_string(lo.closed) +
           " short sessions completed: " + error_summary(churn.error_kinds));
      return kExitFailed;
    }
    loop.run_for(0.2);
  }
  // 2. Hold `sessions` open, each echoing a 64-octet DT every trickle_s.
  Cycler held(loop, st.relay);
  held.hold = true;
  held.trickle_s = lo.trickle_s;
  if (!open_held(loop, held, lo.sessions, 128, 60)) {
    note("livestats: " + std::to_string(held.established) + " of " + std::to_string(lo.sessions) +
         " sessions established: " + error_summary(held.error_kinds));
    return kExitFailed;
  }
  loop.run_for(lo.trickle_s + 0.5, [&] { held.tick(); });  // every session has sent a frame
  // 3. Latency of the admin endpoint's answers, one request at a time.
  int failures = 0;
  for (const std::string path : {"/sessions", "/sessions?closed=1", "/stats"}) {
    std::vector<double> ms;
    std::size_t body = 0;
    std::string err;
    while_looping(loop, held, 120, [&] {
      HttpGetter http(*admin);
      for (int i = 0; i < lo.requests; ++i) {
        const auto t0 = Clock::now();
        const auto n = http.get(path, err);
        if (!n) return;
        ms.push_back(since(t0) * 1e3);
        body = *n;
      }
    });
    if (ms.size() < static_cast<std::size_t>(lo.requests)) {
      note("livestats: GET " + path + ": " + (err.empty() ? "timeout" : err));
      ++failures;
      continue;
    }
    std::sort(ms.begin(), ms.end());
    Result r("livestats");
    r.add("kind", "latency").add("path", path).add("sessions_open", static_cast<std::uint64_t>(held.open()));
    r.add("requests", static_cast<std::uint64_t>(ms.size())).add("body_bytes", static_cast<std::uint64_t>(body));
    r.add("p50_ms", percentile(ms, 50), 2).add("p99_ms", percentile(ms, 99), 2).add("max_ms", ms.back(), 2);
    r.print();
  }
  // 4. One stream's throughput, with and without a poller hitting what the
  //    live page polls (/sessions?closed=1 and /stats) at each rate.
  for (int round = 1; round <= lo.rounds; ++round) {
    for (const double hz : lo.poll_hz) {
      Streamer s(loop, 8192);
      if (!open_streams(loop, s, st, 1, 10)) return kExitFailed;
      const std::uint64_t before = resp.tally();
      held.echo_ms.clear();
      held.timing = true;
      Window w(o.pid, o.tree);
      s.start(UINT64_MAX / 2);
      std::atomic<bool> stop{false};
      std::uint64_t polls = 0;
      std::vector<double> poll_ms;
      std::string err;
      std::thread poller([&] {
        if (hz <= 0) return;
        HttpGetter http(*admin);
        const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / hz));
        auto next = Clock::now();
        while (!stop) {
          const auto p = Clock::now();
          if (!http.get("/sessions?closed=1", err) || !http.get("/stats", err)) return;
          poll_ms.push_back(since(p) * 1e3);
          ++polls;
          next += period;
          while (!stop && Clock::now() < next) std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
      });
      loop.run([&] { return s.errors > 0; }, deadline_in(lo.stream_s), [&] { held.tick(); });
      const std::uint64_t got = resp.tally() - before;
      w.stop();
      held.timing = false;
      std::vector<double> echo = std::move(held.echo_ms);
      std::sort(echo.begin(), echo.end());
      stop = true;
      poller.join();
      s.stop();
      // The stream ends on a frame boundary once all of it has arrived.
      loop.run([&] { return resp.tally() - before >= s.sent || s.errors > 0; }, deadline_in(10), [&] { held.tick(); });
      s.conns().close_all();
      if (s.errors || !err.empty()) {
        note("livestats: stream at " + std::to_string(hz) + " Hz: " + (s.errors ? s.last_error : err));
        return kExitFailed;
      }
      std::sort(poll_ms.begin(), poll_ms.end());
      Result r("livestats");
      r.add("kind", "stream").add("poll_hz", hz, 0).add("round", round);
      r.add("bytes", got).add("mbps", static_cast<double>(got) / 1e6 / w.elapsed, 1);
      r.add("cpu_s_per_gb", w.relay_cpu / (static_cast<double>(got) / 1e9));
      w.report(r);
      r.add("polls", polls).add("poll_p50_ms", poll_ms.empty() ? 0.0 : percentile(poll_ms, 50), 2);
      r.add("sessions_open", static_cast<std::uint64_t>(held.open()));
      // What a held session saw meanwhile: its echoes' round trips.
      r.add("echoes", static_cast<std::uint64_t>(echo.size())).add("echo_p50_ms", percentile(echo, 50), 2);
      r.add("echo_p99_ms", percentile(echo, 99), 2).add("echo_max_ms", echo.empty() ? NAN : echo.back(), 2);
      r.print();
    }
  }
  if (held.errors || resp.errors) {
    note("livestats: held sessions failed: " + error_summary(held.error_kinds) + " " + resp.last_error);
    return kExitFailed;
  }
  held.conns().close_all();
  loop.run([&] { return resp.open() == 0; }, deadline_in(20));
  return failures ? kExitFailed : kExitOk;
}

// A responder alone, for trying a relay by hand.
int run_serve(const Setup& st, double seconds) {
  Loop loop;
  Responder resp(loop, st.server);
  note("responding on the --server address for " + std::to_string(seconds) + " s");
  loop.run_for(seconds);
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"isoproxy-loadgen: both ends of RFC 1006 sessions through a relay, for bench/run.sh"};
  app.require_subcommand(1);
  Common o;
  auto common = [&](CLI::App* sub) {
    sub->add_option("--relay", o.relay, "The relay's listening address (clients connect here)")->capture_default_str();
    sub->add_option("--server", o.server, "Where the responder listens (the relay's upstream)")->capture_default_str();
    sub->add_option("--pid", o.pid, "The relay's process id, for its CPU and memory from /proc");
    sub->add_flag("--tree", o.tree, "The relay forks per connection: measure its descendants too");
    sub->add_option("--seconds", o.seconds, "Bound on the measuring phase")->capture_default_str();
  };
  int conns = 1;
  std::uint64_t bytes = 1ull << 30;
  std::size_t frame = 8192;
  auto* tp = app.add_subcommand("throughput", "N connections stream DT frames to a sink: MB/s and relay CPU per GB");
  common(tp);
  tp->add_option("--conns", conns, "Connections")->capture_default_str()->check(CLI::Range(1, 1000));
  tp->add_option("--bytes", bytes, "Octets in all (split between the connections)")->capture_default_str();
  tp->add_option("--frame", frame, "Octets per DT frame, TPKT header included")->capture_default_str()->check(CLI::Range(8, 65535));

  std::uint64_t count = 20000, warmup = 1000;
  std::size_t size = 64;
  auto* pp = app.add_subcommand("pingpong", "One connection, one frame in flight, echoed: round-trip percentiles");
  common(pp);
  pp->add_option("--count", count, "Round trips measured")->capture_default_str();
  pp->add_option("--warmup", warmup, "Round trips not measured, first")->capture_default_str();
  pp->add_option("--size", size, "Octets per frame, TPKT header included")->capture_default_str()->check(CLI::Range(8, 65535));

  std::uint64_t sessions = 20000;
  int concurrency = 16;
  auto* cr = app.add_subcommand("connrate", "Connect, CR, CC, close, over and over: sessions/s and relay CPU per session");
  common(cr);
  cr->add_option("--count", sessions, "Sessions")->capture_default_str();
  cr->add_option("--concurrency", concurrency, "Sessions in progress at once")->capture_default_str()->check(CLI::Range(1, 4096));

  std::uint64_t idle_n = 9000;
  int idle_conc = 200;
  double idle_hold = 0;
  auto* id = app.add_subcommand("idle", "Hold N idle relayed sessions: relay memory per session");
  common(id);
  id->add_option("--sessions", idle_n, "Sessions held")->capture_default_str();
  id->add_option("--concurrency", idle_conc, "Handshakes in progress at once")->capture_default_str()->check(CLI::Range(1, 4096));
  id->add_option("--hold", idle_hold, "Keep the sessions open this long after the measurement (s), to inspect the relay")
      ->capture_default_str()->check(CLI::Range(0.0, 3600.0));

  LivestatsOptions lo;
  auto* ls = app.add_subcommand("livestats", "Admin endpoint latency with N sessions, and a stream's throughput under polling");
  common(ls);
  ls->add_option("--admin", lo.admin, "The relay's admin endpoint (IPv4 address:port)")->capture_default_str();
  ls->add_option("--sessions", lo.sessions, "Sessions held open")->capture_default_str();
  ls->add_option("--closed", lo.closed, "Short sessions first, to fill the recently-closed list")->capture_default_str();
  ls->add_option("--trickle", lo.trickle_s, "Each held session echoes a 64-octet DT this often (s; 0: idle)")->capture_default_str();
  ls->add_option("--requests", lo.requests, "GETs per path for the latency figures")->capture_default_str();
  ls->add_option("--stream-seconds", lo.stream_s, "Length of each throughput measurement")->capture_default_str();
  ls->add_option("--rounds", lo.rounds, "Times each polling rate is measured")->capture_default_str()->check(CLI::Range(1, 10));
  ls->add_option("--poll-hz", lo.poll_hz, "Polling rates (0: no poller)")->capture_default_str();

  double serve_s = 60;
  auto* sv = app.add_subcommand("serve", "Only the responder, for trying a relay by hand");
  sv->add_option("--server", o.server, "Where the responder listens")->capture_default_str();
  sv->add_option("--seconds", serve_s, "How long")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int r = app.exit(e);
    return r == 0 ? 0 : kExitUsage;
  }
  Setup st;
  const auto relay = parse_addr(o.relay), server = parse_addr(o.server);
  if (!relay || !server) {
    note("--relay and --server take an IPv4 address:port, e.g. 127.0.0.1:10102");
    return kExitUsage;
  }
  st.relay = *relay;
  st.server = *server;
  if (o.pid > 0 && !read_stat(o.pid)) {
    note("--pid " + std::to_string(o.pid) + ": no such process");
    return kExitFailed;
  }
  raise_file_limit();
  std::signal(SIGPIPE, SIG_IGN);

  if (*tp) return run_throughput(o, st, conns, bytes, frame);
  if (*pp) return run_pingpong(o, st, count, warmup, size);
  if (*cr) return run_connrate(o, st, sessions, concurrency);
  if (*id) return run_idle(o, st, idle_n, idle_conc, idle_hold);
  if (*ls) return run_livestats(o, st, lo);
  if (*sv) return run_serve(st, serve_s);
  return kExitUsage;
}
