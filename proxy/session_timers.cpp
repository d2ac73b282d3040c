#include "session_timers.h"

#include "session.h"

namespace isoproxy {

void SessionTimers::init(uv_loop_t* loop) {
  uv_timer_init(loop, &timer_);
  timer_.data = this;
}

bool SessionTimers::before(const Session* a, const Session* b) const { return a->deadline_ms_ < b->deadline_ms_; }

void SessionTimers::place(std::uint32_t slot, Session* s) {
  heap_[slot] = s;
  s->timer_slot_ = slot;
}

void SessionTimers::sift_up(std::uint32_t slot) {
  Session* s = heap_[slot];
  while (slot > 0) {
    const std::uint32_t parent = (slot - 1) / 2;
    if (!before(s, heap_[parent])) break;
    place(slot, heap_[parent]);
    slot = parent;
  }
  place(slot, s);
}

void SessionTimers::sift_down(std::uint32_t slot) {
  Session* s = heap_[slot];
  const auto n = static_cast<std::uint32_t>(heap_.size());
  for (;;) {
    std::uint32_t child = 2 * slot + 1;
    if (child >= n) break;
    if (child + 1 < n && before(heap_[child + 1], heap_[child])) ++child;
    if (!before(heap_[child], s)) break;
    place(slot, heap_[child]);
    slot = child;
  }
  place(slot, s);
}

void SessionTimers::remove(std::uint32_t slot) {
  Session* gone = heap_[slot];
  gone->timer_slot_ = UINT32_MAX;
  Session* last = heap_.back();
  heap_.pop_back();
  if (last == gone) return;
  place(slot, last);
  sift_up(slot);
  sift_down(last->timer_slot_);
}

void SessionTimers::set(Session& s, std::uint64_t at_ms) {
  if (s.timer_slot_ != UINT32_MAX) {
    if (at_ms == s.deadline_ms_) return;
    if (at_ms == UINT64_MAX) {
      s.deadline_ms_ = UINT64_MAX;
      remove(s.timer_slot_);
    } else {
      const bool earlier = at_ms < s.deadline_ms_;
      s.deadline_ms_ = at_ms;
      if (earlier) sift_up(s.timer_slot_);
      else sift_down(s.timer_slot_);
    }
  } else {
    s.deadline_ms_ = at_ms;
    if (at_ms == UINT64_MAX) return;
    heap_.push_back(&s);
    sift_up(static_cast<std::uint32_t>(heap_.size() - 1));
  }
  rearm();
}

void SessionTimers::rearm() {
  const std::uint64_t next = heap_.empty() ? UINT64_MAX : heap_.front()->deadline_ms_;
  if (next == armed_for_) return;
  armed_for_ = next;
  if (next == UINT64_MAX) {
    uv_timer_stop(&timer_);
    return;
  }
  const std::uint64_t now = uv_now(timer_.loop);
  uv_timer_start(&timer_, [](uv_timer_t* t) noexcept { static_cast<SessionTimers*>(t->data)->on_timer(); },
                 next > now ? next - now : 0, 0);
}

void SessionTimers::on_timer() {
  armed_for_ = UINT64_MAX;  // the libuv timer has fired: nothing is armed now
  const std::uint64_t now = uv_now(timer_.loop);
  // The due sessions leave the heap first, then each runs: on_timer() sets
  // its next deadline (or closes the session), and may set other sessions'
  // deadlines meanwhile. Sessions are destroyed only outside loop callbacks,
  // so every one taken here is still there to run.
  due_.clear();
  while (!heap_.empty() && heap_.front()->deadline_ms_ <= now) {
    Session* s = heap_.front();
    s->deadline_ms_ = UINT64_MAX;
    remove(0);
    due_.push_back(s);
  }
  for (Session* s : due_) s->on_timer();
  due_.clear();
  rearm();
}

}  // namespace isoproxy
