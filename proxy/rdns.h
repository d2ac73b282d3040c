// Reverse DNS for the live stats and the logs: client and upstream names,
// looked up with uv_getnameinfo (libuv's thread pool), so the relay never
// waits for DNS. Names are cached by IP with a TTL (getnameinfo does not say
// the record's own TTL), failures for a shorter one; the cache and the
// lookups under way are bounded.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace isoproxy {

// The numeric host of an address, without the port ("192.0.2.5", "2001:db8::5").
std::string numeric_host(const sockaddr* sa);

class ReverseDns {
 public:
  struct Options {
    bool enabled = true;
    std::uint64_t ttl_ms = 300000;
    std::uint64_t failure_ttl_ms = 60000;
    std::size_t max_entries = 4096;
    std::size_t max_in_flight = 8;
  };
  struct Counters {
    std::uint64_t lookups = 0;   // started
    std::uint64_t found = 0;     // ended with a name
    std::uint64_t failed = 0;    // ended without one (no PTR, timeout, ...)
    std::uint64_t hits = 0;      // answered from the cache, or by a lookup already under way
    std::uint64_t skipped = 0;   // not started: too many under way
  };
  // A one-off lookup's result: the name, or the error text.
  using Done = std::function<void(std::optional<std::string> name, std::string error)>;

  explicit ReverseDns(uv_loop_t* loop) : loop_(loop) {}
  ~ReverseDns();
  ReverseDns(const ReverseDns&) = delete;
  ReverseDns& operator=(const ReverseDns&) = delete;

  void configure(const Options& o);
  // Starts a lookup of the address's host unless its name is cached and
  // fresh, or a lookup is under way. Never blocks.
  void want(const sockaddr* sa);
  // The cached name, if one was found and is still fresh.
  std::optional<std::string> name(const sockaddr* sa) const;
  // A lookup outside the cache, with a callback (start-up checks). The
  // callback runs on the loop; after shutdown() it is called with an error.
  void lookup(const sockaddr* sa, Done done);
  // The addresses a name resolves to (numeric hosts), to check that a PTR
  // name leads back to its address (forward-confirmed reverse DNS).
  using Resolved = std::function<void(std::vector<std::string> hosts, std::string error)>;
  void forward(const std::string& name, Resolved done);
  // Cancels lookups not yet started; those already running end by themselves
  // (bounded by the resolver's own timeout) and change nothing.
  void shutdown();
  // For a loop that ends with lookups still running in the thread pool: they
  // are left to finish alone, their requests never freed; the number left.
  // From then on the process must end with std::_Exit (see
  // lookups_abandoned): exit() would join the thread pool, and so wait for
  // the resolver after all.
  std::size_t abandon();
  static bool lookups_abandoned();

  const Counters& counters() const { return counters_; }
  std::size_t entries() const { return cache_.size(); }
  std::size_t in_flight() const { return in_flight_; }
  // Requests libuv still holds for us (lookups and forward resolutions,
  // including those cancelled whose callback has not run yet).
  std::size_t in_flight_requests() const { return requests_.size() + forwards_.size(); }

 private:
  struct Entry {
    std::optional<std::string> name;
    std::uint64_t expires_ms = 0;
    bool pending = false;
    std::list<std::string>::iterator order;  // position in order of last use, for eviction
  };
  struct Request;
  struct Forward;
  bool start(const sockaddr* sa, const std::string& key, Done done);
  void finished(Request* r, int status, const char* host);
  void evict();

  uv_loop_t* loop_;
  Options options_;
  Counters counters_;
  std::unordered_map<std::string, Entry> cache_;
  std::list<std::string> order_;  // least recently wanted first
  std::list<Request*> requests_;  // under way
  std::list<Forward*> forwards_;   // under way
  std::size_t in_flight_ = 0;
  bool shut_down_ = false;
};

}  // namespace isoproxy
