// What the workers (one event loop each, `workers = N`) share: the session
// id counter, the process-wide session count that max_sessions limits, the
// access log, and the registry of outbound connections that recognises a
// relay loop whichever worker accepts the looped connection. Everything here
// is safe to use from any thread; the rest of a worker's state is its own.
#pragma once

#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace isoproxy {

class Server;

// access_log = "off" | "stderr" | "journal" | FILE, written by every worker:
// a line is written whole under the mutex, so lines never interleave, and
// SIGUSR1 swaps the file under the same mutex.
class AccessLog {
 public:
  AccessLog() = default;
  ~AccessLog();
  AccessLog(const AccessLog&) = delete;
  AccessLog& operator=(const AccessLog&) = delete;

  // Switches to `want` if it differs; the error text if it cannot (the log
  // then stays as it was).
  std::optional<std::string> configure(const std::string& want);
  // SIGUSR1, after logrotate renamed the file.
  void reopen();
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }
  // One session's JSON record (compact, one line).
  void write(const std::string& text);
  std::uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  void journal(const nlohmann::json& snapshot, const std::string& text_line);
  static int open_journal_socket();  // a connected fd, or -errno
  static constexpr const char* kJournalSocket = "/run/systemd/journal/socket";

  std::mutex mutex_;
  std::FILE* file_ = nullptr;  // stderr or an opened file; nullptr when off
  std::string path_;           // "off", "stderr", "journal" or the file
  int journal_fd_ = -1;
  bool failing_ = false;    // the last line was not written (whole)
  bool torn_ = false;       // the file ends in part of a line
  std::uint64_t streak_ = 0;  // lines lost since failing_ began
  std::atomic<bool> enabled_{false};
  std::atomic<std::uint64_t> dropped_{0};  // lines not written whole (file) or not taken (journal)
};

// One end of a TCP connection in 20 bytes: an IPv4 address (also as a
// v4-mapped IPv6 one, the same endpoint) or an IPv6 address, and the port.
struct Endpoint {
  std::array<std::uint8_t, 16> addr{};  // IPv4 in the first 4 octets
  std::uint16_t port = 0;
  std::uint8_t family = 0;  // 4, 6, or 0 for none
  static Endpoint of(const sockaddr* sa);
  bool operator==(const Endpoint&) const = default;
};
// A connection as "source>destination".
struct EndpointPair {
  Endpoint source, destination;
  bool operator==(const EndpointPair&) const = default;
};
struct EndpointHash {
  std::size_t operator()(const Endpoint& e) const;
  std::size_t operator()(const EndpointPair& p) const;
};

// Outbound connections by source and destination, with what a loop check
// needs of the session that owns each (DESIGN.md §5: ids, not pointers).
// Binary keys: every live session has an entry, so its size is per-session
// memory (issue 7).
class OutboundRegistry {
 public:
  struct Owner {
    std::uint64_t session = 0;
    std::uint64_t parent = 0;  // the session whose upstream connection this one's client is
    std::shared_ptr<const std::string> listener;  // the owner's listener name (shares its runtime)
    unsigned worker = 0;
  };
  void opened(const EndpointPair& key, Owner owner);
  void closed(const EndpointPair& key);
  std::optional<std::uint64_t> owner(const EndpointPair& key) const;
  // Whether an outbound connection has this source endpoint.
  bool has_source(const Endpoint& source) const;
  // The chain of sessions from `first` up through their parents (at most `max` + 1).
  std::vector<Owner> chain(std::uint64_t first, std::size_t max) const;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<EndpointPair, std::uint64_t, EndpointHash> by_key_;
  std::unordered_map<std::uint64_t, Owner> by_session_;
  std::unordered_map<Endpoint, std::uint32_t, EndpointHash> sources_;  // by_key_'s sources, counted
};

struct Shared {
  std::atomic<std::uint64_t> next_session_id{1};
  std::atomic<std::uint64_t> next_close_seq{1};  // orders closed sessions across workers
  std::atomic<std::uint32_t> active_sessions{0};  // every worker's, against global.max_sessions
  AccessLog access_log;
  OutboundRegistry outbound;
  // Runs `fn` on worker `index`'s loop (set by the Supervisor).
  std::function<void(unsigned index, std::function<void(Server&)> fn)> post;

  // Takes a slot under `limit`; false if every slot is taken.
  bool reserve_session(std::uint32_t limit) {
    std::uint32_t n = active_sessions.load(std::memory_order_relaxed);
    while (n < limit) {
      if (active_sessions.compare_exchange_weak(n, n + 1, std::memory_order_relaxed)) return true;
    }
    return false;
  }
  void release_session() { active_sessions.fetch_sub(1, std::memory_order_relaxed); }

  // The called-TSAP labels of /metrics, one set for every worker: the first
  // `limit` values seen by any worker, so that each worker counts the same
  // ones and a sum over workers never drops a labelled series. True if
  // `label` is (now) one of them.
  // A reload that lowers the limit keeps the values already admitted (their
  // counters go on; a series never vanishes or goes back), and admits no
  // new ones until fewer than the limit are left.
  bool admit_tsap_label(const std::string& label, std::size_t limit) { return tsap_labels_.admit(label, limit); }
  // The upstream addresses /stats and /metrics count sessions by, bounded
  // the same way: in transparent mode every destination a client dials is
  // one, and the map must not grow with them.
  static constexpr std::size_t kMaxUpstreamLabels = 1000;
  bool admit_upstream_label(const std::string& label) { return upstream_labels_.admit(label, kMaxUpstreamLabels); }

  // Sessions of one listener (by name) across every worker, against its
  // max_sessions. The counter lives as long as the process, so a reload
  // that keeps the listener keeps its count.
  std::atomic<std::uint32_t>& listener_sessions(const std::string& name) {
    std::lock_guard lock(listener_sessions_mutex_);
    auto& slot = listener_sessions_[name];
    if (!slot) slot = std::make_unique<std::atomic<std::uint32_t>>(0);
    return *slot;
  }
  // Takes one of `n`'s slots under `limit` (0: no limit); false at the limit.
  static bool reserve(std::atomic<std::uint32_t>& n, std::uint32_t limit) {
    if (limit == 0) {
      n.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    std::uint32_t v = n.load(std::memory_order_relaxed);
    while (v < limit) {
      if (n.compare_exchange_weak(v, v + 1, std::memory_order_relaxed)) return true;
    }
    return false;
  }

 private:
  std::mutex listener_sessions_mutex_;
  std::unordered_map<std::string, std::unique_ptr<std::atomic<std::uint32_t>>> listener_sessions_;

 private:
  class LabelSet {
   public:
    bool admit(const std::string& label, std::size_t limit) {
      std::lock_guard lock(mutex_);
      if (labels_.count(label) != 0) return true;
      if (labels_.size() >= limit) return false;
      labels_.insert(label);
      return true;
    }

   private:
    std::mutex mutex_;
    std::unordered_set<std::string> labels_;
  };
  LabelSet tsap_labels_;
  LabelSet upstream_labels_;
};

}  // namespace isoproxy
