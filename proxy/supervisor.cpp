#include "supervisor.h"

#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <ctime>
#include <map>

#include <unistd.h>

#include "conf/loader.h"
#include "listener.h"
#include "privdrop.h"
#include "log.h"
#include "notify.h"
#include "tls.h"
#include "upstream.h"

namespace isoproxy {

Supervisor::Supervisor(std::shared_ptr<const conf::Config> config) : config_(std::move(config)) {
  uv_loop_init(&loop_);
  const unsigned n = std::max<unsigned>(1, config_->global.workers);
  for (unsigned i = 0; i < n; ++i) servers_.push_back(std::make_unique<Server>(config_, shared_, i));
  loop_close_results_.assign(n, 0);
  shared_.post = [this](unsigned index, std::function<void(Server&)> fn) {
    if (index < servers_.size()) (void)servers_[index]->post(std::move(fn));
  };
}

Supervisor::~Supervisor() {
  log::defer(false);
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  servers_.clear();  // a Server that never ran closes its loop itself
  if (!handles_closed_) {
    uv_walk(&loop_, [](uv_handle_t* h, void*) noexcept {
      if (!uv_is_closing(h)) uv_close(h, nullptr);
    }, nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }
}

Result<std::vector<Server::Sockets>> Supervisor::prepare(const conf::Config& config, const conf::Config* current) {
  // Host checks first, so that a config this host cannot serve changes nothing.
  // source = "client" sets IP_TRANSPARENT on every upstream socket: without
  // CAP_NET_ADMIN each session would fail, not the start or the reload (a
  // transparent listener's own bind says so anyway, earlier is clearer).
  for (const auto& cap : privdrop::needed_capabilities(config)) {
    if (cap.value == CAP_NET_ADMIN && !privdrop::has_effective(CAP_NET_ADMIN)) {
      return unexpected(Error{"capability", cap.why + ", which needs CAP_NET_ADMIN, and this process does not have it "
                                            "(run --user keeps only what the start-up configuration needed: restart "
                                            "to gain it; under systemd, AmbientCapabilities=CAP_NET_ADMIN)"});
    }
  }
  if (auto errors = sources_not_local(config); !errors.empty()) return unexpected(std::move(errors.front()));
  // Listeners whose sockets are unchanged keep them; the others get new
  // ones, bound here for every worker before anything changes: if one
  // fails, the running configuration stays in force on every worker.
  std::vector<Server::Sockets> out(servers_.size());
  std::vector<std::pair<std::string, std::vector<std::string>>> announced;
  for (const auto& lc : config.listeners) {
    const bool kept = current && std::any_of(current->listeners.begin(), current->listeners.end(), [&](const auto& c) {
                        return c.name == lc.name && same_sockets(c, lc);
                      });
    if (kept) continue;
    if (current && workers() == 1) {
      // Without SO_REUSEPORT (one worker), an address that a running
      // listener holds cannot be bound a second time for its new form.
      for (const auto& addr : lc.listen) {
        if (addr.port() == 0) continue;  // a fresh port each time
        for (const auto& c : current->listeners) {
          // The same endpoint however it is written, or a wildcard of its family on its port.
          const auto held = std::find_if(c.listen.begin(), c.listen.end(),
                                         [&](const conf::SocketAddress& a) { return a.overlaps(addr); });
          if (held == c.listen.end()) continue;
          for (auto& per_worker : out) {
            for (auto& [name, list] : per_worker) {
              for (int fd : list) ::close(fd);
            }
          }
          const auto next = std::find_if(config.listeners.begin(), config.listeners.end(),
                                         [&](const conf::ListenerConfig& n) { return n.name == c.name; });
          if (next != config.listeners.end() && same_sockets(c, *next)) {
            // c stays bound as it is: the new listener overlaps it.
            return unexpected(Error{
                "listen", "listener " + lc.name + ": " + addr.text + " overlaps " + held->text + " of listener " +
                              c.name + ", which stays bound: with one worker running (a change of workers waits "
                              "for a restart), both cannot be bound; restart isoproxy, or drop one of them"});
          }
          const std::string change = next == config.listeners.end() ? "which this configuration removes or renames"
                                     : next->transparent != c.transparent ? "whose transparent setting changes"
                                                                          : "whose other addresses or their order change";
          return unexpected(Error{
              "listen", "listener " + lc.name + ": " + addr.text + " is held by the running listener " + c.name + ", " +
                            change + ": with workers = 1 a listener keeps its sockets only if its name, its listen "
                            "list and its transparent setting stay the same; make the change in two reloads (first "
                            "without " + addr.text + "), or restart isoproxy"});
        }
      }
    }
    std::vector<std::string> bound;
    auto fds = bind_listener(lc, workers(), &bound);
    if (!fds) {
      for (auto& per_worker : out) {
        for (auto& [name, list] : per_worker) {
          for (int fd : list) ::close(fd);
        }
      }
      return unexpected(fds.error());
    }
    for (unsigned w = 0; w < workers(); ++w) out[w][lc.name] = std::move((*fds)[w]);
    for (const auto& b : bound) {
      spdlog::info("listening on {} (listener {}{})", b, lc.name, lc.transparent ? ", transparent" : "");
    }
  }
  return out;
}

void Supervisor::log_config(const conf::Config& config) {
  log::set_level(config.global.log_level);
  // What the TLS settings in force present and trust, and what they do not
  // check, at every start and reload.
  for (const auto& w : config.warnings) spdlog::warn("{}", w);
  for (const auto& l : config.listeners) {
    if (l.tls && l.tls->context && l.tls->context->own_certificate()) {
      const auto& own = *l.tls->context->own_certificate();
      spdlog::info("listener {}: TLS certificate {} (issuer {}), valid until {}; client certificates {}", l.name,
                   log::quote(own.subject), log::quote(own.issuer), own.not_after, l.tls->verify_client);
    }
  }
}

void Supervisor::watch_crls() {
  if (draining_) return;
  constexpr std::int64_t kAhead = 24 * 3600;
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  std::int64_t next_look = 0;
  auto look_at = [&](std::int64_t t) {
    if (next_look == 0 || t < next_look) next_look = t;
  };
  auto watch = [&](const std::string& owner, const char* whose, const std::string& file, const tls::Context* ctx) {
    if (ctx == nullptr) return;
    const auto& crls = ctx->crls();
    for (const auto& c : crls) {
      if (c.next_update_unix == 0) continue;
      // Only the latest CRL of each CA counts: OpenSSL uses it.
      const bool superseded = std::any_of(crls.begin(), crls.end(), [&](const tls::CrlSummary& o) {
        return o.issuer == c.issuer && (o.next_update_unix == 0 || o.next_update_unix > c.next_update_unix);
      });
      // Expired when loaded: the configuration's warnings said so.
      if (superseded || c.expired) continue;
      const std::string key = owner + "\n" + whose + "\n" + c.issuer + "\n" + c.next_update;
      const std::string where = owner + ": the CRL of " + c.issuer + " (" + whose + ", " + file + ")";
      if (now >= c.next_update_unix) {
        if (crls_said_.insert(key + "\nexpired").second) {
          spdlog::warn("{} expired at {}: every certificate it covers is now refused (\"CRL has expired\"); replace "
                       "the file with a fresh one, then SIGHUP",
                       where, c.next_update);
        }
      } else if (now >= c.next_update_unix - kAhead) {
        if (crls_said_.insert(key + "\nsoon").second) {
          spdlog::warn("{} expires at {}, in less than 24 h: replace the file with a fresh one, then SIGHUP, or every "
                       "certificate it covers will be refused",
                       where, c.next_update);
        }
        look_at(c.next_update_unix);
      } else {
        look_at(c.next_update_unix - kAhead);
      }
    }
  };
  for (const auto& l : config_->listeners) {
    if (l.tls) watch("listener " + l.name, "client certificates", l.tls->crl, l.tls->context.get());
    if (l.upstream_tls) {
      watch("listener " + l.name, "upstream certificates", l.upstream_tls->crl, l.upstream_tls->context.get());
    }
  }
  for (const auto& [name, f] : config_->filters) {
    if (!f.factory) continue;
    for (const auto& u : f.factory->upstream_tls()) {
      watch("filter " + name + " " + u.who, "upstream certificates", u.tls->crl, u.tls->context.get());
    }
  }
  if (next_look == 0) {
    uv_timer_stop(&crl_timer_);
    return;
  }
  // A second late rather than early: the moment itself must have passed.
  const auto ms = static_cast<std::uint64_t>(std::max<std::int64_t>(next_look - now, 0)) * 1000 + 1000;
  uv_timer_start(&crl_timer_, [](uv_timer_t* t) noexcept { static_cast<Supervisor*>(t->data)->watch_crls(); }, ms, 0);
}

namespace {

// Two descriptors a session, its sockets (a parked one keeps them too), and
// a pipe pair while spliced bytes are in flight, which few hold at once.
constexpr rlim_t kFdsPerSession = 2;
constexpr rlim_t kFdsBesideSessions = 256;  // listeners, admin, logs, traces, resolver

}  // namespace

std::optional<std::string> fit_fd_limit(std::uint32_t max_sessions) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return std::nullopt;
  const rlim_t want = static_cast<rlim_t>(max_sessions) * kFdsPerSession + kFdsBesideSessions;
  if (rl.rlim_cur < want && rl.rlim_cur < rl.rlim_max) {
    const rlim_t before = rl.rlim_cur;
    rlimit raised = rl;
    raised.rlim_cur = std::min(want, rl.rlim_max);
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) {
      spdlog::info("descriptor limit raised from {} to {} for max_sessions = {}", before, raised.rlim_cur, max_sessions);
      rl = raised;
    }
  }
  set_descriptor_limit(rl.rlim_cur == RLIM_INFINITY ? 0 : static_cast<std::uint64_t>(rl.rlim_cur));
  if (rl.rlim_cur >= want) return std::nullopt;
  return fmt::format("the descriptor limit ({}, hard limit {}) is below the {} that max_sessions = {} needs ({} a "
                     "session, and more while spliced): past it, accepting pauses and connections wait or are dropped; "
                     "raise LimitNOFILE (systemd) or ulimit -n, or lower max_sessions",
                     rl.rlim_cur, rl.rlim_max, want, max_sessions, kFdsPerSession);
}

Status<> Supervisor::start() {
  if (auto limit = fit_fd_limit(config_->global.max_sessions)) spdlog::warn("{}", *limit);
  // Log lines go out once per loop iteration, just before a loop waits:
  // this loop's and each worker's (Server) flush what is pending.
  uv_prepare_init(&loop_, &log_flush_);
  uv_prepare_start(&log_flush_, [](uv_prepare_t*) noexcept { log::flush(); });
  log::defer(true);
  for (auto [sig, h] : {std::pair{SIGTERM, &sigterm_}, std::pair{SIGINT, &sigint_}, std::pair{SIGHUP, &sighup_},
                        std::pair{SIGUSR1, &sigusr1_}}) {
    uv_signal_init(&loop_, h);
    h->data = this;
    uv_signal_start(h, [](uv_signal_t* s, int signum) noexcept { static_cast<Supervisor*>(s->data)->on_signal(signum); }, sig);
  }
  uv_async_init(&loop_, &done_async_, [](uv_async_t* a) noexcept { static_cast<Supervisor*>(a->data)->on_worker_done(); });
  done_async_.data = this;
  uv_timer_init(&loop_, &stop_timer_);
  stop_timer_.data = this;
  uv_timer_init(&loop_, &crl_timer_);
  crl_timer_.data = this;
  // A peer that resets while we write must not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  // A file size limit (ulimit -f) makes a write fail with EFBIG, which the
  // access log and the trace handle, instead of killing the relay.
  std::signal(SIGXFSZ, SIG_IGN);
  // The admin endpoint first, so that it is up when the listeners announce themselves.
  admin_listen_started_ = config_->admin.enabled ? config_->admin.listen : std::string();
  if (config_->admin.enabled) {
    admin_http_ = std::make_unique<AdminHttpServer>(&loop_, admin_);
    auto listening = admin_http_->listen(config_->admin.listen);
    if (!listening) {
      begin_drain();
      return unexpected(Error{"admin", "admin endpoint: " + listening.error().message + " (set [admin] listen, or \"off\")"});
    }
    spdlog::info("admin endpoint on {}{}", admin_http_->bound(),
                 config_->admin.token.empty() ? " (read-only: no admin.token)" : "");
  }
  // The access log is an error at start-up (on reload: logged, kept as it
  // was), found before any listener is bound and announced.
  if (auto failed = shared_.access_log.configure(config_->global.access_log)) {
    begin_drain();
    return unexpected(Error{"access-log", *failed});
  }
  auto sockets = prepare(*config_, nullptr);
  if (!sockets) {
    begin_drain();
    return unexpected(sockets.error());
  }
  log_config(*config_);
  watch_crls();
  // No worker thread runs yet: each takes its sockets from here.
  for (unsigned w = 0; w < workers(); ++w) servers_[w]->apply(config_, std::move((*sockets)[w]), true);
  const auto n = config_->listeners.size();
  spdlog::info("isoproxy ready: {} listener{}, config {}{}", n, n == 1 ? "" : "s", config_->path,
               workers() > 1 ? " (" + std::to_string(workers()) + " workers)" : std::string());
  return Ok{};
}

int Supervisor::run() {
  if (draining_) {
    // Failed start or privileges not dropped: nothing is served. Each
    // worker's loop runs its drain here, on this thread.
    for (auto& s : servers_) s->begin_drain();
    for (std::size_t i = 0; i < servers_.size(); ++i) {
      loop_close_results_[i] = servers_[i]->run();
      on_worker_done();
    }
  } else {
    started_threads_ = true;
    for (std::size_t i = 0; i < servers_.size(); ++i) {
      // Drained, a worker waits for maybe_stop() to release it: until then
      // the admin endpoint still gets its answers.
      servers_[i]->hold_after_drain([this] {
        std::lock_guard lock(done_mutex_);
        ++workers_drained_;
        uv_async_send(&done_async_);
      });
    }
    for (std::size_t i = 0; i < servers_.size(); ++i) {
      threads_.emplace_back([this, i] {
        const int r = servers_[i]->run();
        std::lock_guard lock(done_mutex_);
        loop_close_results_[i] = r;
        ++workers_done_;
        uv_async_send(&done_async_);
      });
    }
  }
  uv_run(&loop_, UV_RUN_DEFAULT);
  for (auto& t : threads_) t.join();
  log::defer(false);  // every loop has ended: each line at once from here on
  handles_closed_ = true;
  int status = 0;
  if (const int r = uv_loop_close(&loop_); r != 0) {
    spdlog::error("event loop closed with handles still open: {}", uv_strerror(r));
    status = 1;
  }
  for (std::size_t i = 0; i < loop_close_results_.size(); ++i) {
    if (loop_close_results_[i] != 0) {
      spdlog::error("worker {}: event loop closed with handles still open: {}", i, uv_strerror(loop_close_results_[i]));
      status = 1;
    }
  }
  if (status != 0) return status;
  // The process-wide totals, so that a run's filter actions and close
  // reasons can be read from its log without the admin endpoint. Every
  // thread has ended: the workers' stats are ours to read.
  GlobalStats total;
  auto add = [](std::map<std::string, std::uint64_t>& to, const std::map<std::string, std::uint64_t>& from) {
    for (const auto& [k, v] : from) to[k] += v;
  };
  for (const auto& s : servers_) {
    const GlobalStats& g = s->stats();
    total.closed += g.closed;
    total.refused += g.refused;
    add(total.filter_actions, g.filter_actions);
    add(total.close_reasons, g.close_reasons);
    add(total.connect_failures, g.connect_failures);
  }
  auto join = [](const std::map<std::string, std::uint64_t>& m) {
    std::string out;
    for (const auto& [k, v] : m) out += (out.empty() ? "" : ",") + k + "=" + std::to_string(v);
    return out.empty() ? std::string("-") : out;
  };
  spdlog::info("stopped: {} sessions served, {} refused; filters={} close_reasons={} connect_failures={}", total.closed,
               total.refused, join(total.filter_actions), join(total.close_reasons), join(total.connect_failures));
  return 0;
}

void Supervisor::on_signal(int signum) {
  if (signum == SIGHUP) {
    // Shutting down: re-reading would bind the listeners again and the
    // process would never finish.
    if (draining_) {
      spdlog::warn("SIGHUP while shutting down: ignored");
      return;
    }
    (void)reload("SIGHUP");
    return;
  }
  if (signum == SIGUSR1) {
    shared_.access_log.reopen();
    return;
  }
  const std::uint32_t active = shared_.active_sessions.load();
  if (draining_) {
    spdlog::warn("{} again: closing {} sessions now", signum == SIGINT ? "SIGINT" : "SIGTERM", active);
    for (auto& s : servers_) (void)s->post([](Server& w) { w.close_all("shutdown"); });
    return;
  }
  spdlog::info("{}: draining {} session{} (deadline {})", signum == SIGINT ? "SIGINT" : "SIGTERM", active,
               active == 1 ? "" : "s", conf::format_duration(config_->global.drain_timeout));
  begin_drain();
}

void Supervisor::begin_drain() {
  if (draining_) return;
  draining_ = true;
  const std::uint32_t active = shared_.active_sessions.load();
  notify::stopping("draining " + std::to_string(active) + (active == 1 ? " session" : " sessions"));
  // The admin endpoint stays up while sessions drain (/sessions?state=draining,
  // isoproxy stats); maybe_stop() closes it once every worker has drained.
  if (started_threads_) {
    for (auto& s : servers_) (void)s->post([](Server& w) { w.begin_drain(); });
  }
  maybe_stop();
}

void Supervisor::on_worker_done() {
  if (!started_threads_) {
    std::lock_guard lock(done_mutex_);
    ++workers_done_;
  }
  maybe_stop();
}

void Supervisor::maybe_stop() {
  if (!draining_ || stopping_) return;
  {
    std::lock_guard lock(done_mutex_);
    // on_worker_done() comes back here. Without threads, each worker's loop
    // ran its drain to the end already (run()).
    if (started_threads_ && workers_drained_ < servers_.size()) return;
    if (!started_threads_ && workers_done_ < servers_.size()) return;
  }
  // Every session is gone: the admin endpoint closes, then the workers end.
  if (admin_http_) admin_http_->stop();
  if (admin_http_ && !admin_http_->closed()) {
    // Look again shortly: its connections are closing.
    uv_timer_start(&stop_timer_, [](uv_timer_t* t) noexcept { static_cast<Supervisor*>(t->data)->maybe_stop(); }, 10, 0);
    return;
  }
  if (started_threads_ && !workers_released_) {
    workers_released_ = true;
    for (auto& s : servers_) (void)s->post([](Server& w) { w.release(); });
  }
  {
    std::lock_guard lock(done_mutex_);
    if (workers_done_ < servers_.size()) return;
  }
  // Nothing is left to serve: close our own handles and let the loop end.
  stopping_ = true;
  for (uv_handle_t* h : {reinterpret_cast<uv_handle_t*>(&sigterm_), reinterpret_cast<uv_handle_t*>(&sigint_),
                         reinterpret_cast<uv_handle_t*>(&sighup_), reinterpret_cast<uv_handle_t*>(&sigusr1_),
                         reinterpret_cast<uv_handle_t*>(&done_async_), reinterpret_cast<uv_handle_t*>(&stop_timer_),
                         reinterpret_cast<uv_handle_t*>(&crl_timer_),
                         reinterpret_cast<uv_handle_t*>(&log_flush_)}) {
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  }
}

Supervisor::ReloadOutcome Supervisor::request_reload() {
  if (draining_) {
    // As for SIGHUP: a reload would bind the listeners again, and the
    // process would never finish. (The admin endpoint answers until the
    // last session is gone.)
    spdlog::warn("POST /reload while shutting down: refused");
    return {ReloadOutcome::Kind::kRefused, {"isoproxy is shutting down"}, {}};
  }
  return reload("POST /reload");
}

Supervisor::ReloadOutcome Supervisor::reload(std::string_view trigger) {
  using Kind = ReloadOutcome::Kind;
  spdlog::info("{}: reloading {}", trigger, config_->path);
  // RELOADING=1 now and READY=1 however the reload ends; a failure is in
  // the status (`systemctl status`), since systemd takes any READY=1 after
  // RELOADING=1 for a reload done and `systemctl reload` reports success.
  std::string failure;
  const notify::Reload reloading("reloading " + config_->path, [this, &failure] {
    const auto n = config_->listeners.size();
    return "serving " + std::to_string(n) + " listener" + (n == 1 ? "" : "s") +
           (failure.empty() ? std::string() : "; the last reload failed (" + failure + "), see the log");
  });
  auto loaded = conf::load_config_file(config_->path);
  if (!loaded) {
    for (const auto& e : loaded.error()) spdlog::error("reload: {}", e.to_string());
    spdlog::error("reload failed: {} error{}; the running configuration stays in force", loaded.error().size(),
                  loaded.error().size() == 1 ? "" : "s");
    ReloadOutcome out{Kind::kFailed, {}, {}};
    for (const auto& e : loaded.error()) out.errors.push_back(e.to_string());
    failure = loaded.error().front().to_string();
    return out;
  }
  auto cfg = std::make_shared<const conf::Config>(std::move(*loaded));
  // Said in the log and in POST /reload's answer: what the reload did not apply.
  std::vector<std::string> warnings = cfg->warnings;
  // Against the endpoint as started, not the last file loaded: a reload back
  // to the running address after one that changed it changes nothing.
  if ((cfg->admin.enabled ? cfg->admin.listen : std::string()) != admin_listen_started_) {
    warnings.push_back(fmt::format("[admin] listen = \"{}\" takes effect at the next start; the admin endpoint stays {}",
                                   cfg->admin.enabled ? cfg->admin.listen : "off",
                                   admin_http_ ? "on " + admin_http_->bound() : std::string("off")));
    spdlog::warn("reload: {}", warnings.back());
  }
  if (cfg->global.workers != workers()) {
    warnings.push_back(fmt::format("workers = {} takes effect at the next start; {} worker{} running",
                                   cfg->global.workers, workers(), workers() == 1 ? " keeps" : "s keep"));
    spdlog::warn("reload: {}", warnings.back());
  }
  auto sockets = prepare(*cfg, config_.get());
  if (!sockets) {
    spdlog::error("reload failed: {}; the running configuration stays in force", sockets.error().message);
    failure = sockets.error().message;
    return {Kind::kFailed, {sockets.error().message}, {}};
  }
  if (cfg->global.max_sessions != config_->global.max_sessions) {
    if (auto limit = fit_fd_limit(cfg->global.max_sessions)) {
      spdlog::warn("reload: {}", *limit);
      warnings.push_back(*limit);
    }
  }
  if (auto failed = shared_.access_log.configure(cfg->global.access_log)) {
    spdlog::error("reload: {}; the access log stays as it was", *failed);
    warnings.push_back(*failed + "; the access log stays as it was");
  }
  config_ = cfg;
  log_config(*config_);
  crls_said_.clear();
  watch_crls();
  // Parsed and bound once; each worker takes it on its own loop. Waited
  // for, so that "reloaded" means every worker serves the new configuration.
  std::vector<Server::Sockets> per_worker = std::move(*sockets);
  std::vector<std::shared_ptr<Server::Sockets>> parts;
  for (auto& p : per_worker) parts.push_back(std::make_shared<Server::Sockets>(std::move(p)));
  const auto answers = gather<bool>([cfg, parts](Server& s) {
    s.apply(cfg, std::move(*parts[s.index()]), false);
    return true;
  });
  std::string pending;
  for (std::size_t i = 0; i < answers.size(); ++i) {
    if (!answers[i]) pending += (pending.empty() ? "" : ", ") + std::to_string(i);
  }
  if (!pending.empty()) {
    // Not "reloaded": a deploy script must not read success while a worker
    // still serves the old configuration (it takes the new one when its
    // loop gets to it).
    spdlog::warn("reload incomplete: worker {} did not confirm within {}ms; it applies {} when its loop is free",
                 pending, kWorkerAnswer.count(), config_->path);
    return {Kind::kIncomplete, {"worker " + pending + " did not confirm within " + std::to_string(kWorkerAnswer.count()) + "ms"},
            std::move(warnings)};
  }
  spdlog::info("reloaded {}: {} listener{}; established sessions keep their configuration", config_->path,
               config_->listeners.size(), config_->listeners.size() == 1 ? "" : "s");
  return {Kind::kDone, {}, std::move(warnings)};
}

}  // namespace isoproxy
