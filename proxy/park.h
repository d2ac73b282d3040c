// Parked sessions (issue 7): a session idle for `park_after` gives up its
// libuv handles, framers and queues and keeps only its stats and its two
// sockets. The sockets of every parked session of a worker wait in one
// epoll set, which the worker's loop watches with a single uv_poll_t; the
// first event on either socket (bytes, FIN, reset) wakes the session, which
// rebuilds its I/O state on the same sockets and handles the event as usual.
#pragma once

#include <uv.h>

#include <cstddef>
#include <cstdint>
#include <functional>

namespace isoproxy {

// A session woken soon after it parked (a peer that polls) waits twice as
// long before parking again, up to this many times park_after.
inline constexpr std::uint64_t kParkBackoffMax = 64;

// The quiet a woken session waits before it parks again, in ms (0: park_after
// itself): twice `delay_ms` (the quiet it had waited) if it woke soon, at most
// kParkBackoffMax times `park_after_ms`, never less than park_after. Kept in
// 32 bits per session: capped at 49.7 days, and a park_after longer than that
// is not backed off (rather than cut short).
std::uint32_t park_backoff(bool woke_soon, std::uint64_t delay_ms, std::uint64_t park_after_ms);

class ParkSet {
 public:
  // Called on the loop for each parked session whose socket has an event.
  using Wake = std::function<void(std::uint64_t session_id)>;

  ParkSet(uv_loop_t* loop, Wake wake) : loop_(loop), wake_(std::move(wake)) {}
  ~ParkSet();
  ParkSet(const ParkSet&) = delete;
  ParkSet& operator=(const ParkSet&) = delete;

  // Watches `fd` (readable, peer FIN, error) for session `id`. False with
  // errno set when it cannot (the session then stays as it is).
  bool add(int fd, std::uint64_t id);
  // Stops watching `fd` (before it is handed back to libuv, or closed).
  void remove(int fd);
  // Closes the poll handle (the loop's shutdown); add() fails afterwards.
  void close();
  uv_handle_t* handle() { return reinterpret_cast<uv_handle_t*>(&poll_); }
  std::size_t size() const { return size_; }

 private:
  bool start();
  void on_ready();

  uv_loop_t* loop_;
  Wake wake_;
  int epfd_ = -1;
  uv_poll_t poll_{};
  bool started_ = false;  // the epoll set and its poll handle exist (made at the first park)
  bool closed_ = false;
  std::size_t size_ = 0;
};

}  // namespace isoproxy
