#include "listener.h"

#include <algorithm>
#include <cstring>

#include "log.h"
#include "server.h"
#include "upstream.h"

namespace isoproxy {

Listener::Listener(Server& server, std::shared_ptr<const ListenerRuntime> rt) : server_(server), rt_(std::move(rt)) {}

Listener::~Listener() = default;

Status<> Listener::start() {
  for (const auto& addr : rt_->cfg.listen) {
    auto s = std::make_unique<Socket>();
    s->owner = this;
    s->addr = addr;
    uv_tcp_t* h = &s->tcp;
    auto fail = [&](int r, std::string_view what) -> Status<> {
      std::string hint;
      if (r == UV_EADDRINUSE) hint = " (another process holds the port)";
      if (r == UV_EACCES) hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)";
      if (r == UV_EPERM && rt_->cfg.transparent) hint = " (transparent listeners need CAP_NET_ADMIN)";
      if (r == UV_EADDRNOTAVAIL) hint = " (not an address of this host)";
      return unexpected(Error{"listen", "listener " + rt_->cfg.name + ": cannot listen on " + addr.text + ": " +
                                            std::string(what) + ": " + uv_strerror(r) + hint});
    };
    if (int r = uv_tcp_init_ex(server_.loop(), h, static_cast<unsigned>(addr.family())); r != 0) return fail(r, "socket");
    h->data = s.get();
    s->initialised = true;
    ++open_sockets_;
    Socket* raw = s.get();
    sockets_.push_back(std::move(s));
    if (rt_->cfg.transparent) {
      uv_os_fd_t fd;
      uv_fileno(reinterpret_cast<uv_handle_t*>(h), &fd);
      if (int r = set_transparent(fd, addr.family()); r != 0) return fail(r, "IP_TRANSPARENT");
    }
    // [::] takes IPv6 only, so that 0.0.0.0 can be bound beside it.
    const unsigned flags = addr.family() == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    if (int r = uv_tcp_bind(h, addr.sa(), flags); r != 0) return fail(r, "bind");
    apply_socket_options(*raw);
    if (int r = uv_listen(reinterpret_cast<uv_stream_t*>(h), 511, [](uv_stream_t* st, int status) noexcept {
          auto* sock = static_cast<Socket*>(st->data);
          sock->owner->on_connection(*sock, status);
        });
        r != 0) {
      return fail(r, "listen");
    }
    bound_.push_back(sock_name(raw->tcp));
    spdlog::info("listening on {} (listener {}{})", bound_.back(), rt_->cfg.name, rt_->cfg.transparent ? ", transparent" : "");
  }
  return Ok{};
}

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
    if (s->initialised && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&s->tcp))) apply_socket_options(*s);
  }
}

void Listener::stop() {
  for (auto& s : sockets_) {
    auto* h = reinterpret_cast<uv_handle_t*>(&s->tcp);
    if (!s->initialised || uv_is_closing(h)) continue;
    uv_close(h, [](uv_handle_t* handle) noexcept {
      auto* sock = static_cast<Socket*>(handle->data);
      Listener* self = sock->owner;
      if (--self->open_sockets_ == 0) self->server_.listener_closed();
    });
  }
}

void Listener::refuse(uv_stream_t* server_stream, const std::string& why) {
  // Accept and close at once: the client sees a clean FIN, not a hang in the backlog.
  auto* t = new uv_tcp_t;
  uv_tcp_init(server_.loop(), t);
  if (uv_accept(server_stream, reinterpret_cast<uv_stream_t*>(t)) == 0) {
    ++refused_;
    server_.stats().refused++;
    // One line a second at most, with the count of those not logged.
    const std::uint64_t now = server_.now_ms();
    if (now - last_refusal_log_ms_ >= 1000 || last_refusal_log_ms_ == 0) {
      spdlog::warn("refused {} on listener {}: {}{}", peer_name(*t), rt_->cfg.name, why,
                   refusals_not_logged_ ? " (" + std::to_string(refusals_not_logged_) + " more not logged)" : "");
      last_refusal_log_ms_ = now;
      refusals_not_logged_ = 0;
    } else {
      ++refusals_not_logged_;
    }
  }
  uv_close(reinterpret_cast<uv_handle_t*>(t), [](uv_handle_t* h) noexcept { delete reinterpret_cast<uv_tcp_t*>(h); });
}

void Listener::on_connection(Socket& s, int status) {
  if (status < 0) {
    spdlog::warn("listener {}: accept on {}: {}", rt_->cfg.name, s.addr.text, uv_strerror(status));
    return;
  }
  auto* stream = reinterpret_cast<uv_stream_t*>(&s.tcp);
  if (server_.draining()) {
    refuse(stream, "shutting down");
    return;
  }
  if (rt_->cfg.max_sessions != 0 && active_ >= rt_->cfg.max_sessions) {
    refuse(stream, "listener limit of " + std::to_string(rt_->cfg.max_sessions) + " sessions reached");
    return;
  }
  if (server_.at_global_limit()) {
    refuse(stream, "global limit of " + std::to_string(server_.config().global.max_sessions) + " sessions reached");
    return;
  }
  Session* session = server_.new_session(*this, rt_);
  session->start(stream);
}

}  // namespace isoproxy
