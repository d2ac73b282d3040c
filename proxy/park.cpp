#include "park.h"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace isoproxy {

std::uint32_t park_backoff(bool woke_soon, std::uint64_t delay_ms, std::uint64_t park_after_ms) {
  if (!woke_soon || park_after_ms > UINT32_MAX) return 0;
  // delay_ms is park_after_ms or an earlier backoff: both fit 32 bits here.
  return static_cast<std::uint32_t>(std::min<std::uint64_t>({2 * delay_ms, kParkBackoffMax * park_after_ms, UINT32_MAX}));
}

// The loop has closed the poll handle by now (Server::maybe_stop or its
// destructor's walk); the epoll set goes with its owner.
ParkSet::~ParkSet() {
  if (epfd_ >= 0) ::close(epfd_);
}

bool ParkSet::start() {
  if (started_) return true;
  if (closed_) {
    errno = ESHUTDOWN;
    return false;
  }
  epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return false;
  if (const int r = uv_poll_init(loop_, &poll_, epfd_); r < 0) {
    ::close(epfd_);
    epfd_ = -1;
    errno = -r;
    return false;
  }
  started_ = true;
  poll_.data = this;
  uv_poll_start(&poll_, UV_READABLE, [](uv_poll_t* h, int, int) noexcept { static_cast<ParkSet*>(h->data)->on_ready(); });
  return true;
}

bool ParkSet::add(int fd, std::uint64_t id) {
  if (!start()) return false;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP;  // EPOLLERR and EPOLLHUP always
  ev.data.u64 = id;
  if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) return false;
  ++size_;
  return true;
}

void ParkSet::remove(int fd) {
  if (epfd_ < 0) return;
  epoll_event ev{};
  if (::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, &ev) == 0 && size_ > 0) --size_;
}

void ParkSet::close() {
  closed_ = true;
  if (started_ && !uv_is_closing(handle())) uv_close(handle(), nullptr);
}

void ParkSet::on_ready() {
  // A bounded batch per wake-up (the set is level-triggered: what is left
  // wakes the loop again), so that a burst of wakes does not starve the
  // sessions already awake.
  epoll_event events[64];
  const int n = ::epoll_wait(epfd_, events, 64, 0);
  for (int i = 0; i < n; ++i) wake_(events[i].data.u64);
}

}  // namespace isoproxy
