#include "server.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <set>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf/loader.h"
#include "log.h"
#include "notify.h"
#include "tls.h"
#include "upstream.h"

namespace isoproxy {

namespace {

std::shared_ptr<const ListenerRuntime> make_runtime(const conf::Config& c, const conf::ListenerConfig& l) {
  auto rt = std::make_shared<ListenerRuntime>();
  rt->cfg = l;
  for (const auto& name : l.filters) rt->factories.push_back(c.filters.at(name).factory);
  return rt;
}

bool same_sockets(const conf::ListenerConfig& a, const conf::ListenerConfig& b) {
  if (a.transparent != b.transparent || a.listen.size() != b.listen.size()) return false;
  for (std::size_t i = 0; i < a.listen.size(); ++i) {
    if (a.listen[i].text != b.listen[i].text) return false;
  }
  return true;
}

}  // namespace

Server::Server(std::shared_ptr<const conf::Config> config) : config_(std::move(config)) { uv_loop_init(&loop_); }

Server::~Server() {
  if (access_log_ && access_log_ != stderr) std::fclose(access_log_);
  if (journal_fd_ >= 0) ::close(journal_fd_);
  // run() closed every handle; a Server that never ran closes its loop here.
  if (!handles_closed_) {
    uv_walk(&loop_, [](uv_handle_t* h, void*) noexcept {
      if (!uv_is_closing(h)) uv_close(h, nullptr);
    }, nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }
}

Status<> Server::apply(std::shared_ptr<const conf::Config> config, bool initial) {
  // Host checks first, so that a config this host cannot serve changes nothing.
  for (const auto& l : config->listeners) {
    if (l.source.mode == conf::SourceMode::kFixed && l.source.address) {
      if (auto ok = check_source_is_local(*l.source.address); !ok) {
        return unexpected(Error{ok.error().kind, "listener " + l.name + ": source_address " + ok.error().message +
                                                     " (outbound connections could not be bound to it)"});
      }
    }
  }
  // Listeners whose sockets are unchanged keep them and take the new settings;
  // the others are replaced. New sockets are bound first: if one fails,
  // nothing changes and the running configuration stays in force.
  std::vector<std::pair<Listener*, std::shared_ptr<const ListenerRuntime>>> keep;
  std::vector<std::unique_ptr<Listener>> fresh;
  for (const auto& lc : config->listeners) {
    auto rt = make_runtime(*config, lc);
    auto it = std::find_if(listeners_.begin(), listeners_.end(), [&](const auto& l) {
      return l->name() == lc.name && same_sockets(l->runtime()->cfg, lc);
    });
    if (it != listeners_.end()) {
      keep.emplace_back(it->get(), rt);
    } else {
      fresh.push_back(std::make_unique<Listener>(*this, rt));
    }
  }
  for (auto& l : fresh) {
    auto ok = l->start();
    if (!ok) {
      for (auto& f : fresh) {
        f->stop();
        stopping_listeners_.push_back(std::move(f));
      }
      std::string msg = ok.error().message;
      if (!initial) msg += " (a listener that keeps an address while changing others must be renamed, or restart isoproxy)";
      return unexpected(Error{ok.error().kind, msg});
    }
  }
  // Everything is bound: commit.
  std::vector<std::unique_ptr<Listener>> next;
  for (auto& [l, rt] : keep) l->set_runtime(rt);
  for (auto& l : listeners_) {
    const bool kept = std::any_of(keep.begin(), keep.end(), [&](const auto& k) { return k.first == l.get(); });
    if (kept) {
      next.push_back(std::move(l));
      continue;
    }
    spdlog::info("listener {} removed or changed: no longer accepting on {}", l->name(), fmt::join(l->bound(), ", "));
    l->stop();
    stopping_listeners_.push_back(std::move(l));
  }
  for (auto& l : fresh) next.push_back(std::move(l));
  listeners_ = std::move(next);
  // The access log follows the configuration; a file that cannot be opened
  // is an error at start-up and a logged error (log kept as it was) on reload.
  const std::string& want = config->global.access_log;
  if (want != access_log_path_) {
    std::FILE* file = nullptr;
    int journal = -1;
    std::string failed;
    if (want == "stderr") {
      file = stderr;
    } else if (want == "journal") {
      journal = open_journal_socket();
      if (journal < 0) failed = "access_log journal: cannot reach journald at " + std::string(kJournalSocket) + ": " + std::strerror(-journal);
    } else if (want != "off") {
      file = std::fopen(want.c_str(), "ae");
      if (!file) failed = "access_log " + want + ": " + std::strerror(errno);
    }
    if (!failed.empty()) {
      if (initial) return unexpected(Error{"access-log", failed});
      spdlog::error("reload: {}; the access log stays {}", failed, access_log_path_);
    } else {
      if (access_log_ && access_log_ != stderr) std::fclose(access_log_);
      if (journal_fd_ >= 0) ::close(journal_fd_);
      access_log_ = file;
      journal_fd_ = journal;
      access_log_path_ = want;
    }
  }
  config_ = std::move(config);
  log::set_level(config_->global.log_level);
  ReverseDns::Options dns;
  dns.enabled = config_->global.reverse_dns;
  dns.ttl_ms = static_cast<std::uint64_t>(config_->global.reverse_dns_ttl.count());
  dns.failure_ttl_ms = static_cast<std::uint64_t>(config_->global.reverse_dns_failure_ttl.count());
  rdns_.configure(dns);
  // From the loop, not now: start() runs before `--user` drops privileges,
  // and a lookup would start libuv's thread pool with root's capabilities.
  uv_timer_start(&dns_check_timer_, [](uv_timer_t* t) noexcept { static_cast<Server*>(t->data)->check_source_names(); }, 0, 0);
  // What the TLS settings in force present and trust, and what they do not
  // check, at every start and reload.
  for (const auto& w : config_->warnings) spdlog::warn("{}", w);
  for (const auto& l : config_->listeners) {
    if (l.tls && l.tls->context && l.tls->context->own_certificate()) {
      const auto& own = *l.tls->context->own_certificate();
      spdlog::info("listener {}: TLS certificate {} (issuer {}), valid until {}; client certificates {}", l.name,
                   log::quote(own.subject), log::quote(own.issuer), own.not_after, l.tls->verify_client);
    }
  }
  return Ok{};
}

void Server::check_source_names() {
  // A receiver that finds the connector for an incoming connection by the
  // caller's host name refuses a source IP without one: say so at start-up,
  // not at 3 a.m. Asynchronous; the answer is logged when it comes.
  if (!config_->global.reverse_dns || draining_) return;
  std::set<std::string> seen;
  for (const auto& l : config_->listeners) {
    if (l.source.mode != conf::SourceMode::kFixed || !l.source.address) continue;
    const std::string ip = l.source.address->text;
    if (!seen.insert(ip).second) continue;
    const std::string who = "listener " + l.name + ": source_address " + ip;
    const std::string canonical = numeric_host(l.source.address->sa());  // as getaddrinfo prints it
    rdns_.lookup(l.source.address->sa(), [this, ip, who, canonical](std::optional<std::string> name, std::string error) {
      if (draining_) return;  // cancelled by the shutdown: nothing was learnt
      if (!name) {
        spdlog::warn("{} has no reverse-DNS (PTR) name ({}): receivers that identify the calling MTA by its host name "
                     "(a connector matched by FQDN, an address check by name) will refuse connections from it; "
                     "publish a PTR record for {}",
                     who, error, ip);
        return;
      }
      rdns_.forward(*name, [this, who, canonical, name = *name](std::vector<std::string> hosts, std::string ferror) {
        if (draining_) return;
        if (std::find(hosts.begin(), hosts.end(), canonical) != hosts.end()) {
          spdlog::info("{} is {} (PTR, and the name resolves back to it)", who, name);
        } else {
          spdlog::warn("{} is {} by its PTR record, but {} does not resolve back to it ({}): receivers that check "
                       "forward-confirmed reverse DNS will refuse connections from it",
                       who, name, name, ferror.empty() ? "resolves to " + (hosts.empty() ? std::string("nothing") : fmt::format("{}", fmt::join(hosts, ", "))) : ferror);
        }
      });
    });
  }
}

Status<> Server::start() {
  uv_idle_init(&loop_, &reaper_);
  reaper_.data = this;
  uv_timer_init(&loop_, &drain_timer_);
  drain_timer_.data = this;
  uv_timer_init(&loop_, &dns_check_timer_);
  dns_check_timer_.data = this;
  splice_.start([this](std::uint64_t id) {
    if (Session* s = find_session(id)) s->enter_passthrough();
  });
  for (auto [sig, h] : {std::pair{SIGTERM, &sigterm_}, std::pair{SIGINT, &sigint_}, std::pair{SIGHUP, &sighup_},
                        std::pair{SIGUSR1, &sigusr1_}}) {
    uv_signal_init(&loop_, h);
    h->data = this;
    uv_signal_start(h, [](uv_signal_t* s, int signum) noexcept { static_cast<Server*>(s->data)->on_signal(signum); }, sig);
  }
  // A peer that resets while we write must not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  // The admin endpoint first, so that it is up when the listeners announce themselves.
  Status<> ok = Ok{};
  if (config_->admin.enabled) {
    admin_http_ = std::make_unique<AdminHttpServer>(&loop_, admin_);
    auto listening = admin_http_->listen(config_->admin.listen);
    if (!listening) {
      ok = unexpected(Error{"admin", "admin endpoint: cannot listen on " + config_->admin.listen + ": " +
                                         listening.error().message + " (set [admin] listen, or \"off\")"});
    } else {
      spdlog::info("admin endpoint on {}{}", admin_http_->bound(),
                   config_->admin.token.empty() ? " (read-only: no admin.token)" : "");
    }
  }
  if (ok) ok = apply(config_, true);
  if (!ok) {
    begin_drain();  // closes what was opened, so that run() can end cleanly
    return ok;
  }
  spdlog::info("isoproxy ready: {} listener{}, config {}", listeners_.size(), listeners_.size() == 1 ? "" : "s", config_->path);
  return Ok{};
}

int Server::run() {
  uv_run(&loop_, UV_RUN_DEFAULT);
  handles_closed_ = true;
  const int r = uv_loop_close(&loop_);
  if (r != 0) {
    spdlog::error("event loop closed with handles still open: {}", uv_strerror(r));
    return 1;
  }
  // The process-wide totals, so that a run's filter actions and close
  // reasons can be read from its log without the admin endpoint.
  auto join = [](const std::map<std::string, std::uint64_t>& m) {
    std::string out;
    for (const auto& [k, v] : m) out += (out.empty() ? "" : ",") + k + "=" + std::to_string(v);
    return out.empty() ? std::string("-") : out;
  };
  spdlog::info("stopped: {} sessions served, {} refused; filters={} close_reasons={} connect_failures={}", stats_.closed,
               stats_.refused, join(stats_.filter_actions), join(stats_.close_reasons), join(stats_.connect_failures));
  return 0;
}

Session* Server::new_session(Listener& l, const std::shared_ptr<const ListenerRuntime>& rt) {
  const std::uint64_t id = next_session_id_++;
  auto s = std::make_unique<Session>(*this, l, id, rt);
  Session* raw = s.get();
  sessions_.emplace(id, std::move(s));
  l.session_started();
  stats_.accepted++;
  return raw;
}

void Server::session_closed(std::uint64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  it->second->owner().session_ended();
  // Destroyed from the reaper, never inside the session's own callback.
  finished_.push_back(std::move(it->second));
  sessions_.erase(it);
  schedule_reap();
}

void Server::listener_closed() { schedule_reap(); }

void Server::schedule_reap() {
  if (!reaper_active_ && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&reaper_))) {
    reaper_active_ = true;
    uv_idle_start(&reaper_, [](uv_idle_t* h) noexcept {
      auto* self = static_cast<Server*>(h->data);
      self->finished_.clear();
      self->reaper_active_ = false;
      uv_idle_stop(h);
      std::erase_if(self->stopping_listeners_, [](const auto& l) { return l->stopped() && l->active() == 0; });
      self->maybe_stop();
    });
  }
}

void Server::on_signal(int signum) {
  if (signum == SIGHUP) {
    // Shutting down: re-reading would bind the listeners again and the
    // process would never finish.
    if (draining_) {
      spdlog::warn("SIGHUP while shutting down: ignored");
      return;
    }
    reload();
    return;
  }
  if (signum == SIGUSR1) {
    reopen_access_log();
    return;
  }
  if (draining_) {
    spdlog::warn("{} again: closing {} sessions now", signum == SIGINT ? "SIGINT" : "SIGTERM", sessions_.size());
    std::vector<Session*> all;
    for (auto& [id, s] : sessions_) all.push_back(s.get());
    for (Session* s : all) s->close("shutdown");
    return;
  }
  spdlog::info("{}: draining {} session{} (deadline {})", signum == SIGINT ? "SIGINT" : "SIGTERM", sessions_.size(),
               sessions_.size() == 1 ? "" : "s", conf::format_duration(config_->global.drain_timeout));
  begin_drain();
}

void Server::begin_drain() {
  if (draining_) return;
  draining_ = true;
  rdns_.shutdown();
  notify::stopping("draining " + std::to_string(sessions_.size()) + (sessions_.size() == 1 ? " session" : " sessions"));
  if (admin_http_) admin_http_->stop();
  for (auto& l : listeners_) {
    l->stop();
    stopping_listeners_.push_back(std::move(l));
  }
  listeners_.clear();
  std::vector<Session*> all;
  for (auto& [id, s] : sessions_) all.push_back(s.get());
  for (Session* s : all) s->drain();
  uv_timer_start(&drain_timer_, [](uv_timer_t* t) noexcept {
    auto* self = static_cast<Server*>(t->data);
    std::vector<Session*> left;
    for (auto& [id, s] : self->sessions_) left.push_back(s.get());
    if (!left.empty()) spdlog::warn("drain deadline passed: closing {} sessions", left.size());
    for (Session* s : left) s->close("drain-timeout");
  }, static_cast<std::uint64_t>(config_->global.drain_timeout.count()), 0);
  maybe_stop();
}

void Server::maybe_stop() {
  if (!draining_ || !sessions_.empty() || !finished_.empty()) return;
  for (auto& l : stopping_listeners_) {
    if (!l->stopped()) return;
  }
  if (admin_http_ && !admin_http_->closed()) {
    schedule_reap();  // look again once its connections have closed
    return;
  }
  // Nothing is left to serve: close our own handles and let the loop end.
  splice_.close();
  for (uv_handle_t* h : {reinterpret_cast<uv_handle_t*>(&sigterm_), reinterpret_cast<uv_handle_t*>(&sigint_),
                         reinterpret_cast<uv_handle_t*>(&sighup_), reinterpret_cast<uv_handle_t*>(&sigusr1_),
                         reinterpret_cast<uv_handle_t*>(&drain_timer_), reinterpret_cast<uv_handle_t*>(&dns_check_timer_),
                         reinterpret_cast<uv_handle_t*>(&reaper_)}) {
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  }
}

void Server::reload() {
  spdlog::info("SIGHUP: reloading {}", config_->path);
  // RELOADING=1 now and READY=1 however the reload ends.
  const notify::Reload reloading("reloading " + config_->path, [this] {
    return "serving " + std::to_string(listeners_.size()) + " listener" + (listeners_.size() == 1 ? "" : "s");
  });
  auto loaded = conf::load_config_file(config_->path);
  if (!loaded) {
    for (const auto& e : loaded.error()) spdlog::error("reload: {}", e.to_string());
    spdlog::error("reload failed: {} error{}; the running configuration stays in force", loaded.error().size(),
                  loaded.error().size() == 1 ? "" : "s");
    return;
  }
  auto cfg = std::make_shared<const conf::Config>(std::move(*loaded));
  auto ok = apply(cfg, false);
  if (!ok) {
    spdlog::error("reload failed: {}; the running configuration stays in force", ok.error().message);
    return;
  }
  spdlog::info("reloaded {}: {} listener{}; established sessions keep their configuration", config_->path,
               listeners_.size(), listeners_.size() == 1 ? "" : "s");
}

void Server::reopen_access_log() {
  if (access_log_ == nullptr || access_log_ == stderr) {
    spdlog::info("SIGUSR1: no access-log file to reopen (access_log = \"{}\")", access_log_path_.empty() ? "off" : access_log_path_);
    return;
  }
  // The new file first: if it cannot be opened, lines keep going to the old one.
  std::FILE* file = std::fopen(access_log_path_.c_str(), "ae");
  if (file == nullptr) {
    spdlog::error("SIGUSR1: cannot reopen access_log {}: {}; still writing to the file opened before",
                  access_log_path_, std::strerror(errno));
    return;
  }
  std::fclose(access_log_);
  access_log_ = file;
  spdlog::info("SIGUSR1: reopened access log {}", access_log_path_);
}

std::vector<Session*> Server::sessions_in_order() {
  std::vector<Session*> out;
  out.reserve(sessions_.size());
  for (auto& [id, s] : sessions_) out.push_back(s.get());
  std::sort(out.begin(), out.end(), [](const Session* a, const Session* b) { return a->id() < b->id(); });
  return out;
}

Session* Server::find_session(std::uint64_t id) {
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : it->second.get();
}

std::vector<const Listener*> Server::listeners() const {
  std::vector<const Listener*> out;
  for (const auto& l : listeners_) out.push_back(l.get());
  return out;
}

bool Server::wants_closed_snapshots() const {
  return access_log_path_ != "off" || config_->admin.closed_sessions > 0;
}

void Server::session_record(const nlohmann::json& snapshot) {
  // Dumped once, for the access log and the closed-session list alike.
  const std::string text = snapshot.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (access_log_path_ == "journal") {
    journal_access_log(snapshot, text);
  } else if (access_log_) {
    const std::string line = text + "\n";
    // One write per line, flushed, so that a line is never split between writers.
    if (std::fwrite(line.data(), 1, line.size(), access_log_) != line.size() || std::fflush(access_log_) != 0) {
      spdlog::warn("access log {}: write failed: {}", access_log_path_, std::strerror(errno));
    }
  }
  const std::size_t keep = config_->admin.closed_sessions;
  if (keep == 0) return;
  closed_.push_back(ClosedSession::from(snapshot, text));
  while (closed_.size() > keep) closed_.pop_front();
}

int Server::open_journal_socket() {
  // Our own non-blocking datagram socket in journald's native protocol, not
  // sd_journal_send(): libsystemd's socket blocks when journald's queue is
  // full, and a stalled journal must never stall the relay.
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -errno;
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", kJournalSocket);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
    const int err = errno;
    ::close(fd);
    return -err;
  }
  // Room for a burst of closes while journald catches up.
  const int size = 4 * 1024 * 1024;
  (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  return fd;
}

void Server::journal_access_log(const nlohmann::json& snapshot, const std::string& text_line) {
  // The JSON line as MESSAGE, and the fields operators filter on as journal
  // fields: journalctl -t isoproxy-access ISOPROXY_CLOSE_REASON=connect-refused
  auto text = [&](const char* key) -> std::string {
    const auto it = snapshot.find(key);
    if (it == snapshot.end() || it->is_null()) return "";
    return it->is_string() ? it->get<std::string>() : it->dump();
  };
  auto tsap = [&](const char* key) -> std::string {
    const auto it = snapshot.find(key);
    if (it == snapshot.end() || !it->is_object()) return "";
    const auto& a = (*it)["ascii"];
    return a.is_string() ? a.get<std::string>() : (*it)["hex"].get<std::string>();
  };
  // KEY=VALUE lines; a value never holds a newline (compact JSON escapes
  // them, TSAPs are printable, the rest are addresses and names).
  std::string d;
  auto field = [&](const char* key, std::string value) {
    std::replace(value.begin(), value.end(), '\n', ' ');
    d += key;
    d += '=';
    d += value;
    d += '\n';
  };
  field("MESSAGE", text_line);
  field("PRIORITY", "6");
  field("SYSLOG_IDENTIFIER", "isoproxy-access");
  field("ISOPROXY_SESSION", text("id"));
  field("ISOPROXY_LISTENER", text("listener"));
  field("ISOPROXY_CLIENT", text("client"));
  field("ISOPROXY_UPSTREAM", text("upstream"));
  field("ISOPROXY_CALLING_TSAP", tsap("calling_tsap"));
  field("ISOPROXY_CALLED_TSAP", tsap("called_tsap"));
  field("ISOPROXY_CLOSE_REASON", text("close_reason"));
  ssize_t n = ::send(journal_fd_, d.data(), d.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n < 0 && errno == ECONNREFUSED) {
    // journald restarted and made a new socket: connect again, once.
    if (const int fd = open_journal_socket(); fd >= 0) {
      ::close(journal_fd_);
      journal_fd_ = fd;
      n = ::send(journal_fd_, d.data(), d.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
  }
  if (n < 0) {
    ++stats_.access_log_dropped;
    // Once per failure streak: a journal that is down must not flood stderr.
    if (!journal_failing_) {
      spdlog::warn("access log journal: line dropped: {}{}", std::strerror(errno),
                   errno == EAGAIN ? " (journald is not keeping up; counted in access_log_dropped)" : "");
    }
    journal_failing_ = true;
  } else {
    journal_failing_ = false;
  }
}

void Server::count_called_tsap(const std::string& display) {
  const std::size_t limit = config_->admin.metrics_tsap_labels;
  if (limit == 0) return;
  // Bounded label set: new values beyond the limit count as "other".
  auto it = stats_.sessions_by_called_tsap.find(display);
  if (it != stats_.sessions_by_called_tsap.end()) {
    ++it->second;
  } else if (stats_.sessions_by_called_tsap.size() < limit) {
    stats_.sessions_by_called_tsap[display] = 1;
  } else {
    ++stats_.sessions_by_called_tsap["other"];
  }
}

ClosedSession ClosedSession::from(const nlohmann::json& snapshot, std::string json_text) {
  ClosedSession c;
  c.id = snapshot.value("id", std::uint64_t{0});
  c.json = std::move(json_text);
  auto text = [&](const char* k) {
    const auto it = snapshot.find(k);
    return it != snapshot.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  auto tsap = [&](const char* k, std::string& hex, std::string& ascii) {
    const auto it = snapshot.find(k);
    if (it == snapshot.end() || !it->is_object()) return;
    if ((*it)["hex"].is_string()) hex = (*it)["hex"].get<std::string>();
    if ((*it)["ascii"].is_string()) ascii = (*it)["ascii"].get<std::string>();
  };
  tsap("calling_tsap", c.calling_hex, c.calling_ascii);
  tsap("called_tsap", c.called_hex, c.called_ascii);
  c.client = text("client");
  c.upstream = text("upstream");
  return c;
}

bool ClosedSession::matches_tsap(std::string_view text) const {
  std::string upper(text);
  for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  for (const auto* t : {&calling_hex, &called_hex}) {
    if (!t->empty() && *t == upper) return true;
  }
  for (const auto* t : {&calling_ascii, &called_ascii}) {
    if (!t->empty() && *t == text) return true;
  }
  return false;
}

bool ClosedSession::matches_peer(std::string_view text) const {
  for (const auto* a : {&client, &upstream}) {
    if (a->empty()) continue;
    const auto colon = a->rfind(':');
    std::string host = colon == std::string::npos ? *a : a->substr(0, colon);
    if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    if (*a == text || host == text) return true;
  }
  return false;
}

}  // namespace isoproxy
