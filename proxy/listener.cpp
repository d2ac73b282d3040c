#include "listener.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include <netinet/in.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "server.h"
#include "upstream.h"

namespace isoproxy {

Listener::Listener(Server& server, std::shared_ptr<const ListenerRuntime> rt)
    : server_(server),
      rt_(std::move(rt)),
      counters_(&server_.listener_counters(rt_->cfg.name)),
      shared_active_(&server_.shared().listener_sessions(rt_->cfg.name)) {}

Listener::~Listener() {
  for (auto& s : sockets_) {
    if (s->standby >= 0) ::close(s->standby);
  }
}

namespace {

// One socket of a listener, bound and listening: what uv_tcp_bind does, plus
// SO_REUSEPORT (libuv 1.44 has no flag for it).
int open_socket(const conf::SocketAddress& addr, const sockaddr* at, bool transparent, bool reuseport,
                std::string_view& step) {
  step = "socket";
  const int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  auto fail = [&](std::string_view what) {
    const int err = errno;
    step = what;
    ::close(fd);
    return -err;
  };
  const int on = 1;
  if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0) return fail("SO_REUSEADDR");
  if (reuseport && ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) return fail("SO_REUSEPORT");
  if (transparent) {
    if (int r = set_transparent(fd, addr.family()); r != 0) {
      ::close(fd);
      step = "IP_TRANSPARENT";
      return r;
    }
  }
  // [::] takes IPv6 only, so that 0.0.0.0 can be bound beside it.
  if (addr.family() == AF_INET6 && ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) != 0) return fail("IPV6_V6ONLY");
  const socklen_t len = addr.family() == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  if (::bind(fd, at, len) != 0) return fail("bind");
  if (::listen(fd, 511) != 0) return fail("listen");
  return fd;
}

}  // namespace

Result<std::vector<std::vector<int>>> bind_listener(const conf::ListenerConfig& cfg, unsigned workers,
                                                    std::vector<std::string>* bound) {
  std::vector<std::vector<int>> fds(workers);
  auto close_all = [&] {
    for (auto& w : fds) {
      for (int fd : w) ::close(fd);
    }
  };
  for (const auto& addr : cfg.listen) {
    sockaddr_storage at{};
    std::memcpy(&at, addr.sa(), addr.family() == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
    for (unsigned w = 0; w < workers; ++w) {
      std::string_view step;
      const int r = open_socket(addr, reinterpret_cast<const sockaddr*>(&at), cfg.transparent, workers > 1, step);
      if (r < 0) {
        close_all();
        const int e = uv_translate_sys_error(-r);
        std::string hint;
        if (e == UV_EADDRINUSE) hint = " (another process holds the port)";
        if (e == UV_EACCES) hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)";
        if (e == UV_EPERM && cfg.transparent) hint = " (transparent listeners need CAP_NET_ADMIN)";
        if (e == UV_EADDRNOTAVAIL) hint = " (not an address of this host)";
        return unexpected(Error{"listen", "listener " + cfg.name + ": cannot listen on " + addr.text + ": " +
                                              std::string(step) + ": " + uv_strerror(e) + hint});
      }
      fds[w].push_back(r);
      if (w == 0) {
        // Port 0: the others share the port the first was given.
        socklen_t len = sizeof at;
        ::getsockname(r, reinterpret_cast<sockaddr*>(&at), &len);
        if (bound) bound->push_back(address_text(reinterpret_cast<const sockaddr*>(&at)));
      }
    }
  }
  return fds;
}

void Listener::adopt(const std::vector<int>& fds) {
  for (std::size_t i = 0; i < fds.size() && i < rt_->cfg.listen.size(); ++i) {
    auto s = std::make_unique<Socket>();
    s->owner = this;
    s->addr = rt_->cfg.listen[i];
    uv_tcp_t* h = &s->tcp;
    uv_tcp_init(server_.loop(), h);
    h->data = s.get();
    s->initialised = true;
    ++open_sockets_;
    Socket* raw = s.get();
    sockets_.push_back(std::move(s));
    // Bound and listening already; libuv takes the fd and watches it.
    if (int r = listen_on(*raw, fds[i]); r != 0) {
      // Not expected of a listening socket; the others of the listener still serve.
      spdlog::error("listener {}: cannot accept on {}: {}", rt_->cfg.name, raw->addr.text, uv_strerror(r));
      continue;
    }
    bound_.push_back(sock_name(raw->tcp));
    // A spare reference to the socket, for pause(): without one, an accept
    // that keeps failing is only logged.
    if (uv_os_fd_t fd = -1; uv_fileno(reinterpret_cast<const uv_handle_t*>(&raw->tcp), &fd) == 0) {
      raw->standby = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (raw->standby < 0) {
        spdlog::warn("listener {}: {}: no spare descriptor ({}): accepting cannot pause at the descriptor limit",
                     rt_->cfg.name, raw->addr.text, std::strerror(errno));
      }
    }
  }
}

int Listener::listen_on(Socket& s, int fd) {
  int r = uv_tcp_open(&s.tcp, fd);
  if (r != 0) {
    ::close(fd);  // the handle did not take it
    return r;
  }
  r = uv_listen(reinterpret_cast<uv_stream_t*>(&s.tcp), 511, [](uv_stream_t* st, int status) noexcept {
    auto* sock = static_cast<Socket*>(st->data);
    sock->owner->on_connection(*sock, status);
  });
  if (r == 0) apply_socket_options(s);
  return r;
}

void Listener::arm_resume() {
  if (resume_timer_ == nullptr) {
    resume_timer_ = new uv_timer_t;
    uv_timer_init(server_.loop(), resume_timer_);
    resume_timer_->data = this;
    ++open_sockets_;  // closed by stop(), like a socket
  }
  if (!uv_is_active(reinterpret_cast<uv_handle_t*>(resume_timer_))) {
    uv_timer_start(resume_timer_, [](uv_timer_t* t) noexcept { static_cast<Listener*>(t->data)->resume(); }, pause_ms_, 0);
  }
}

namespace {

std::atomic<std::uint64_t> g_descriptor_limit{0};
log::SharedThrottle g_descriptor_warns;

}  // namespace

void set_descriptor_limit(std::uint64_t soft_limit) { g_descriptor_limit.store(soft_limit, std::memory_order_relaxed); }

void note_accepted_descriptor(int fd, const std::string& listener) {
  const std::uint64_t limit = g_descriptor_limit.load(std::memory_order_relaxed);
  if (limit == 0 || fd < 0) return;
  // Room for the session's upstream socket and a splice pipe, and then some.
  const std::uint64_t margin = std::max<std::uint64_t>(8, limit / 64);
  if (static_cast<std::uint64_t>(fd) + margin < limit) return;
  std::uint64_t unlogged = 0;
  if (!g_descriptor_warns.due(unlogged)) return;
  spdlog::warn("listener {}: descriptors nearly exhausted: this connection got descriptor {} of the process's limit "
               "of {}; past the limit, new connections are closed as they are accepted, with no session and no "
               "log line: raise LimitNOFILE or ulimit -n, or lower max_sessions{}",
               listener, fd, limit, unlogged ? " (" + std::to_string(unlogged) + " more connections near it)" : "");
}

namespace {

// What an accept error says about the descriptor limits, for the log.
std::string fd_limit_hint(int status) {
  if (status == UV_ENFILE) return " (the system's descriptor limit, fs.file-max)";
  if (status != UV_EMFILE) return {};
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  return " (the process's descriptor limit, " + std::to_string(rl.rlim_cur) +
         ": raise LimitNOFILE or ulimit -n, or lower max_sessions)";
}

}  // namespace

void Listener::apply_socket_options(Socket& s) {
  const auto& c = rt_->cfg;
  // RFC 2126 §6.2: each frame goes out as soon as it is complete.
  uv_tcp_nodelay(&s.tcp, 1);
  uv_tcp_keepalive(&s.tcp, c.keepalive ? 1 : 0,
                   static_cast<unsigned>(std::max<long>(1, c.keepalive_interval.count() / 1000)));
}

void Listener::set_runtime(std::shared_ptr<const ListenerRuntime> rt) {
  rt_ = std::move(rt);
  for (auto& s : sockets_) {
    if (s->initialised && s->state == Socket::State::kOpen && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&s->tcp))) {
      apply_socket_options(*s);
    }
  }
}

void Listener::socket_gone(Socket& s) {
  s.state = Socket::State::kGone;
  if (s.standby >= 0) ::close(s.standby);
  s.standby = -1;
  handle_gone();
}

void Listener::handle_gone() {
  if (--open_sockets_ == 0) server_.listener_closed();
}

void Listener::stop() {
  if (stopping_) return;
  stopping_ = true;
  for (auto& s : sockets_) {
    if (!s->initialised) continue;
    if (s->state == Socket::State::kPaused) {
      socket_gone(*s);
      continue;
    }
    auto* h = reinterpret_cast<uv_handle_t*>(&s->tcp);
    if (s->state != Socket::State::kOpen || uv_is_closing(h)) continue;  // pausing: its close callback sees stopping_
    uv_close(h, [](uv_handle_t* handle) noexcept {
      auto* sock = static_cast<Socket*>(handle->data);
      sock->owner->socket_gone(*sock);
    });
  }
  if (resume_timer_ != nullptr) {
    uv_close(reinterpret_cast<uv_handle_t*>(resume_timer_), [](uv_handle_t* h) noexcept {
      auto* self = static_cast<Listener*>(h->data);
      delete reinterpret_cast<uv_timer_t*>(h);
      self->handle_gone();
    });
    resume_timer_ = nullptr;
  }
}

void Listener::pause(Socket& s, int status) {
  pause_ms_ = std::min<std::uint32_t>(1000, pause_ms_ == 0 ? 100 : 2 * pause_ms_);
  // One line a second at most, with the count of those not logged.
  const std::uint64_t now = server_.now_ms();
  if (now - last_pause_log_ms_ >= 1000 || last_pause_log_ms_ == 0) {
    spdlog::warn("listener {}: accept on {}: {}{}: not accepting there for {} ms{}", rt_->cfg.name, s.addr.text,
                 uv_strerror(status), fd_limit_hint(status), pause_ms_,
                 pauses_not_logged_ ? " (" + std::to_string(pauses_not_logged_) + " more pauses not logged)" : "");
    last_pause_log_ms_ = now;
    pauses_not_logged_ = 0;
  } else {
    ++pauses_not_logged_;
  }
  s.state = Socket::State::kPausing;
  uv_close(reinterpret_cast<uv_handle_t*>(&s.tcp), [](uv_handle_t* handle) noexcept {
    auto* sock = static_cast<Socket*>(handle->data);
    Listener* self = sock->owner;
    if (self->stopping_) {
      self->socket_gone(*sock);
      return;
    }
    sock->state = Socket::State::kPaused;
    self->arm_resume();
  });
}

void Listener::resume() {
  bool again = false;
  for (auto& sp : sockets_) {
    Socket& s = *sp;
    if (s.state != Socket::State::kPaused) continue;
    const int fd = ::fcntl(s.standby, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) {
      again = true;  // no descriptor yet either
      continue;
    }
    s.tcp = uv_tcp_t{};
    uv_tcp_init(server_.loop(), &s.tcp);
    s.tcp.data = &s;
    s.state = Socket::State::kOpen;
    if (int r = listen_on(s, fd); r != 0) pause(s, r);  // closes the handle; tried again after the next pause
  }
  if (again) {
    pause_ms_ = std::min<std::uint32_t>(1000, 2 * pause_ms_);
    arm_resume();
  }
}

void Listener::refuse(uv_stream_t* server_stream, const std::string& why) {
  // Accept and close at once: the client sees a clean FIN, not a hang in the backlog.
  auto* t = new uv_tcp_t;
  uv_tcp_init(server_.loop(), t);
  if (uv_accept(server_stream, reinterpret_cast<uv_stream_t*>(t)) == 0) {
    ++counters_->refused;
    server_.stats().refused++;
    if (std::uint64_t held = 0; refusal_warns_.due(server_.now_ms(), held)) {
      spdlog::warn("refused {} on listener {}: {}{}", peer_name(*t), rt_->cfg.name, why,
                   held ? " (" + std::to_string(held) + " more not logged)" : "");
    }
  }
  uv_close(reinterpret_cast<uv_handle_t*>(t), [](uv_handle_t* h) noexcept { delete reinterpret_cast<uv_tcp_t*>(h); });
}

void Listener::on_connection(Socket& s, int status) {
  if (status < 0) {
    // libuv calls back and accepts again at once. An error of that
    // connection alone (EPERM from a firewall, EPROTO) is gone then; one of
    // the process's resources is not: libuv drops the pending connections
    // with a spare descriptor of its own, and once another thread took
    // that one, fails and calls back for ever. Only closing the handle
    // ends that loop.
    const bool resources = status == UV_EMFILE || status == UV_ENFILE || status == UV_ENOBUFS || status == UV_ENOMEM;
    if (resources && s.standby >= 0 && s.state == Socket::State::kOpen && !stopping_) {
      pause(s, status);
      return;
    }
    const std::uint64_t now = server_.now_ms();
    if (now - last_pause_log_ms_ >= 1000 || last_pause_log_ms_ == 0) {
      spdlog::warn("listener {}: accept on {}: {}{}{}", rt_->cfg.name, s.addr.text, uv_strerror(status),
                   fd_limit_hint(status),
                   accept_errors_not_logged_ ? " (" + std::to_string(accept_errors_not_logged_) + " more not logged)" : "");
      last_pause_log_ms_ = now;
      accept_errors_not_logged_ = 0;
    } else {
      ++accept_errors_not_logged_;
    }
    return;
  }
  pause_ms_ = 0;
  auto* stream = reinterpret_cast<uv_stream_t*>(&s.tcp);
  if (server_.draining()) {
    refuse(stream, "shutting down");
    return;
  }
  // The listener's limit counts its sessions on every worker.
  if (!Shared::reserve(*shared_active_, rt_->cfg.max_sessions)) {
    refuse(stream, "listener limit of " + std::to_string(rt_->cfg.max_sessions) + " sessions reached");
    return;
  }
  if (!server_.reserve_session()) {
    shared_active_->fetch_sub(1, std::memory_order_relaxed);
    refuse(stream, "global limit of " + std::to_string(server_.config().global.max_sessions) + " sessions reached");
    return;
  }
  Session* session = server_.new_session(*this, rt_);
  session->start(stream);
}

}  // namespace isoproxy
