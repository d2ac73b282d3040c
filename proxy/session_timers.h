// Every session's single deadline (connect, handshake, TLS, idle, linger,
// flush), in one min-heap behind one libuv timer per loop. A uv_timer_t per
// session cost 152 bytes of every idle session and a handle to open and
// close per connection (issue 7's memory and connection-rate targets).
#pragma once

#include <uv.h>

#include <cstdint>
#include <vector>

namespace isoproxy {

class Session;

class SessionTimers {
 public:
  SessionTimers() = default;
  SessionTimers(const SessionTimers&) = delete;
  SessionTimers& operator=(const SessionTimers&) = delete;

  // Before any set(), on the loop's thread.
  void init(uv_loop_t* loop);
  // `s`'s deadline becomes `at_ms` (loop time; UINT64_MAX: none). When it
  // passes, s.on_timer() runs once; it sets the next deadline itself.
  void set(Session& s, std::uint64_t at_ms);
  std::size_t size() const { return heap_.size(); }
  // The libuv handle, closed by the Server with its own.
  uv_handle_t* handle() { return reinterpret_cast<uv_handle_t*>(&timer_); }

 private:
  void on_timer();
  void rearm();
  void remove(std::uint32_t slot);
  void sift_up(std::uint32_t slot);
  void sift_down(std::uint32_t slot);
  void place(std::uint32_t slot, Session* s);
  bool before(const Session* a, const Session* b) const;

  uv_timer_t timer_{};
  std::vector<Session*> heap_;
  std::vector<Session*> due_;  // on_timer()'s sessions to run, reused
  std::uint64_t armed_for_ = UINT64_MAX;  // the deadline the libuv timer is set to
};

}  // namespace isoproxy
