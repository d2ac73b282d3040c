#include "server.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstring>

#include "conf/loader.h"
#include "log.h"
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
    if (want == "stderr") {
      file = stderr;
    } else if (want != "off") {
      file = std::fopen(want.c_str(), "ae");
      if (!file) {
        const std::string msg = "access_log " + want + ": " + std::strerror(errno);
        if (initial) return unexpected(Error{"access-log", msg});
        spdlog::error("reload: {}; the access log stays {}", msg, access_log_path_);
      }
    }
    if (file || want == "off") {
      if (access_log_ && access_log_ != stderr) std::fclose(access_log_);
      access_log_ = file;
      access_log_path_ = want;
    }
  }
  config_ = std::move(config);
  log::set_level(config_->global.log_level);
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

Status<> Server::start() {
  uv_idle_init(&loop_, &reaper_);
  reaper_.data = this;
  uv_timer_init(&loop_, &drain_timer_);
  drain_timer_.data = this;
  for (auto [sig, h] : {std::pair{SIGTERM, &sigterm_}, std::pair{SIGINT, &sigint_}, std::pair{SIGHUP, &sighup_}}) {
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
  for (uv_handle_t* h : {reinterpret_cast<uv_handle_t*>(&sigterm_), reinterpret_cast<uv_handle_t*>(&sigint_),
                         reinterpret_cast<uv_handle_t*>(&sighup_), reinterpret_cast<uv_handle_t*>(&drain_timer_),
                         reinterpret_cast<uv_handle_t*>(&reaper_)}) {
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  }
}

void Server::reload() {
  spdlog::info("SIGHUP: reloading {}", config_->path);
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

void Server::record_closed(std::uint64_t id, nlohmann::json snapshot) {
  const std::size_t keep = config_->admin.closed_sessions;
  if (keep == 0) return;
  closed_.push_back({id, std::move(snapshot)});
  while (closed_.size() > keep) closed_.pop_front();
}

void Server::access_log(const nlohmann::json& snapshot) {
  if (!access_log_) return;
  const std::string line = snapshot.dump() + "\n";
  // One write per line, flushed, so that a line is never split between writers.
  if (std::fwrite(line.data(), 1, line.size(), access_log_) != line.size() || std::fflush(access_log_) != 0) {
    spdlog::warn("access log {}: write failed: {}", access_log_path_, std::strerror(errno));
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

bool ClosedSession::matches_tsap(std::string_view text) const {
  for (const char* k : {"calling_tsap", "called_tsap"}) {
    const auto& t = snapshot[k];
    if (t.is_null()) continue;
    std::string upper(text);
    for (auto& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (t["hex"] == upper || (t["ascii"].is_string() && t["ascii"] == text)) return true;
  }
  return false;
}

bool ClosedSession::matches_peer(std::string_view text) const {
  for (const char* k : {"client", "upstream"}) {
    const auto& v = snapshot[k];
    if (!v.is_string()) continue;
    const std::string a = v.get<std::string>();
    const auto colon = a.rfind(':');
    std::string host = colon == std::string::npos ? a : a.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
    if (a == text || host == text) return true;
  }
  return false;
}

}  // namespace isoproxy
