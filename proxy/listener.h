// A Listener accepts on the addresses of one [[listener]] (plain, or
// IP_TRANSPARENT for TPROXY-diverted connections) and owns its Sessions'
// count against the listener's limit.
#pragma once

#include <uv.h>

#include <atomic>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "log.h"
#include "result.h"
#include "session.h"

namespace isoproxy {

class Server;

// Binds and listens on every address of `cfg`, `workers` sockets per address
// (SO_REUSEPORT when `workers` > 1, so that the kernel spreads connections
// across the workers; port 0 is resolved by the first and reused by the
// others). [worker][address]; a clear error naming the address on failure,
// with every socket opened so far closed. `bound` gets the addresses bound.
Result<std::vector<std::vector<int>>> bind_listener(const conf::ListenerConfig& cfg, unsigned workers,
                                                    std::vector<std::string>* bound);

// The process's soft descriptor limit, as fit_fd_limit() left it.
void set_descriptor_limit(std::uint64_t soft_limit);
// Called with each accepted connection's descriptor: one near the limit
// (descriptors are handed out lowest first, so N means N + 1 in use) is
// warned about, once a second at most across workers. Past the limit
// libuv accepts and closes new connections itself, and nothing would say so.
void note_accepted_descriptor(int fd, const std::string& listener);

class Listener {
 public:
  Listener(Server& server, std::shared_ptr<const ListenerRuntime> rt);
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Accepts on `fds` (bound and listening, one per address of the listener,
  // in its order; from bind_listener()), on this worker's loop.
  void adopt(const std::vector<int>& fds);
  // Stops accepting (closes the sockets). Sessions go on.
  void stop();
  // True once every socket's close callback ran.
  bool stopped() const { return open_sockets_ == 0; }

  const std::string& name() const { return rt_->cfg.name; }
  const std::shared_ptr<const ListenerRuntime>& runtime() const { return rt_; }
  // New sessions use `rt` from now on (reload); the sockets stay.
  void set_runtime(std::shared_ptr<const ListenerRuntime> rt);
  // This worker's counters of the listener's name: a reload that replaces
  // the listener (new sockets) keeps them, and the sessions the old one
  // accepted still count as its active ones until they end.
  struct Counters {
    std::uint32_t active = 0;
    std::uint64_t accepted = 0;
    std::uint64_t refused = 0;
  };
  std::uint32_t active() const { return counters_->active; }  // of the name: this object's and its predecessors'
  // Sessions this object accepted that are still open: a replaced listener
  // (and its runtime: filters, TLS contexts, trace files) is freed at 0.
  std::uint32_t own_active() const { return own_active_; }
  void session_started() {
    ++own_active_;
    ++counters_->active;
    ++counters_->accepted;
  }
  std::uint64_t accepted() const { return counters_->accepted; }
  void session_ended() {
    --own_active_;
    --counters_->active;
    shared_active_->fetch_sub(1, std::memory_order_relaxed);
  }
  std::uint64_t refused() const { return counters_->refused; }
  // The addresses actually bound (port 0 resolved).
  const std::vector<std::string>& bound() const { return bound_; }

 private:
  struct Socket {
    uv_tcp_t tcp{};
    Listener* owner = nullptr;
    conf::SocketAddress addr;
    bool initialised = false;
    // Accepting, paused (the handle closed, the socket kept open by
    // `standby`, see pause()), or on the way there.
    enum class State : std::uint8_t { kOpen, kPausing, kPaused, kGone } state = State::kOpen;
    int standby = -1;  // a duplicate of the listening socket, for resume()
  };
  void on_connection(Socket& s, int status);
  // An accept that fails for good (EMFILE: the descriptor limit) makes
  // libuv call back again at once, for ever, inside one callback: the loop
  // never gets back to epoll. The socket's handle is closed (its
  // duplicate keeps it listening: connections wait in its backlog) and
  // reopened after a pause.
  void pause(Socket& s, int status);
  void resume();
  void arm_resume();
  void socket_gone(Socket& s);
  void handle_gone();  // one of the handles stop() waits for has closed
  // uv_tcp_open + uv_listen on `fd` (taken, or closed on failure), then the
  // socket options; a libuv error code.
  int listen_on(Socket& s, int fd);
  void refuse(uv_stream_t* server_stream, const std::string& why);
  // TCP_NODELAY and keepalive on a listening socket: Linux copies them to
  // every connection it accepts, which then needs no setsockopt of its own.
  void apply_socket_options(Socket& s);

  Server& server_;
  std::shared_ptr<const ListenerRuntime> rt_;
  std::vector<std::unique_ptr<Socket>> sockets_;
  std::vector<std::string> bound_;
  int open_sockets_ = 0;
  Counters* counters_;  // this worker's, by name (Server::listener_counters)
  std::uint32_t own_active_ = 0;
  std::atomic<std::uint32_t>* shared_active_;  // every worker's, against max_sessions (Shared)
  log::Throttle refusal_warns_;  // connections refused at a limit or while draining
  uv_timer_t* resume_timer_ = nullptr;  // from the first pause on; counts in open_sockets_
  bool stopping_ = false;
  std::uint32_t pause_ms_ = 0;  // the last pause's length (backs off to 1 s)
  std::uint64_t last_pause_log_ms_ = 0;
  std::uint64_t pauses_not_logged_ = 0;
  std::uint64_t accept_errors_not_logged_ = 0;  // other accept errors, within the same once a second
};

}  // namespace isoproxy
