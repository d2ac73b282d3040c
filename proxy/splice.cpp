#include "splice.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace isoproxy {

SpliceSupport::~SpliceSupport() {
  for (auto& p : spare_) close_fds(p);
  spare_.clear();
}

void SpliceSupport::start(std::function<void(std::uint64_t)> run) {
  run_ = std::move(run);
  uv_idle_init(loop_, &idle_);
  idle_.data = this;
  idle_initialised_ = true;
}

void SpliceSupport::close() {
  closed_ = true;
  pending_.clear();
  if (idle_initialised_ && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&idle_))) {
    uv_close(reinterpret_cast<uv_handle_t*>(&idle_), nullptr);
  }
  for (auto& p : spare_) discard(p);
  spare_.clear();
}

SpliceSupport::Pipe SpliceSupport::acquire(std::string& why) {
  if (!spare_.empty()) {
    Pipe p = spare_.back();
    spare_.pop_back();
    return p;
  }
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    why = std::string("pipe2: ") + std::strerror(errno);
    return {};
  }
  Pipe p{fds[0], fds[1], 0};
  // A larger pipe moves more per splice call; the kernel may refuse it (an
  // unprivileged user beyond fs.pipe-user-pages-soft): the default serves.
  (void)::fcntl(p.wr, F_SETPIPE_SZ, kPipeSize);
  const int size = ::fcntl(p.wr, F_GETPIPE_SZ);
  p.capacity = size > 0 ? static_cast<std::size_t>(size) : 65536;
  ++open_;
  return p;
}

void SpliceSupport::release(Pipe& p) {
  if (!p.valid()) return;
  if (closed_ || spare_.size() >= std::min(kMaxSpare, users_)) {
    discard(p);
  } else {
    spare_.push_back(p);
  }
  p = Pipe{};
}

void SpliceSupport::detach() {
  if (users_ > 0) --users_;
  while (spare_.size() > std::min(kMaxSpare, users_)) {
    discard(spare_.back());
    spare_.pop_back();
  }
}

void SpliceSupport::discard(Pipe& p) {
  if (!p.valid()) return;
  close_fds(p);
  --open_;
}

void SpliceSupport::close_fds(Pipe& p) {
  if (p.rd >= 0) ::close(p.rd);
  if (p.wr >= 0) ::close(p.wr);
  p = Pipe{};
}

void SpliceSupport::defer(std::uint64_t id) {
  if (closed_ || !idle_initialised_) return;
  pending_.push_back(id);
  if (pending_.size() == 1) {
    uv_idle_start(&idle_, [](uv_idle_t* h) noexcept {
      auto* self = static_cast<SpliceSupport*>(h->data);
      std::vector<std::uint64_t> ids;
      ids.swap(self->pending_);
      uv_idle_stop(h);
      for (std::uint64_t session : ids) self->run_(session);
    });
  }
}

}  // namespace isoproxy
