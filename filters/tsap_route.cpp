// tsap-route: chooses the upstream (address and source mode) by the called
// and/or calling TSAP of the CR, with an optional default route. The session
// connects only once the CR has been read (it holds the client's bytes until
// then). A CR no route takes, with no default, is refused with a DR and the
// session ends.
#include <algorithm>
#include <cstdio>

#include "codec/text.h"
#include "conf/tls_reader.h"
#include "conf/toml_reader.h"
#include "filters/registry.h"
#include "filters/tsap_match.h"

#include <toml++/toml.h>

namespace isoproxy::filters {

namespace {

struct RouteRule {
  std::string name;
  std::vector<TsapPattern> called, calling;  // empty: any
  conf::SocketAddress upstream;
  std::optional<conf::SourceConfig> source;
  std::optional<std::shared_ptr<const conf::TlsClientConfig>> tls;  // as filters::Route::tls
};

struct RouteSettings {
  std::vector<RouteRule> routes;
  std::optional<conf::SocketAddress> fallback;  // `default`
  std::uint8_t reason = 3;                      // DR reason: address unknown
};

// A route takes a CR only if every copy of a TSAP it names matches
// (match_copies): a CR carrying a TSAP twice, one copy a route's and one
// not, must not reach that route's upstream, which may read the other copy.
bool route_condition(const std::vector<TsapPattern>& pats, const codec::Tpdu& t, std::uint8_t code) {
  return pats.empty() || match_copies(pats, t, code).every;
}

std::string tsap_or_none(const std::optional<codec::Bytes>& t) {
  if (!t) return "(none)";
  // Quoted only when it could be read as more than one value.
  const codec::TsapText text = codec::tsap_text(*t);
  std::string d = text.display();
  return d.find_first_of(" \"=\\") == std::string::npos && d != "(none)" ? d : text.quoted();
}

class TsapRoute final : public Filter {
 public:
  TsapRoute(const std::string& name, const RouteSettings& s) : name_(name), s_(s) {}

  Verdict on_frame(FilterContext& ctx, ChainFrame& frame) override {
    if (decided_ || frame.direction() != Direction::kToUpstream) return Verdict::kContinue;
    decided_ = true;
    const codec::Tpdu& t = frame.decoded().tpdu;
    if (t.type != codec::TpduType::kCR) {
      // Nothing to route by: the default takes it, or the session ends.
      if (s_.fallback) {
        ctx.set_route({name_ + "/default", *s_.fallback, std::nullopt, std::nullopt});
        ctx.count(name_, "default");
        return Verdict::kContinue;
      }
      ctx.count(name_, "no-route");
      ctx.end_session(std::string("no-route: first frame is a ") + std::string(codec::tpdu_type_name(t.type)) +
                      ", not a CR");
      return Verdict::kEndSession;
    }
    const auto called = t.called_tsap();
    const auto calling = t.calling_tsap();
    for (const RouteRule& r : s_.routes) {
      if (route_condition(r.called, t, codec::param::kCalledTsap) &&
          route_condition(r.calling, t, codec::param::kCallingTsap)) {
        ctx.set_route({name_ + "/" + r.name, r.upstream, r.source, r.tls});
        ctx.count(name_, "routed");
        return Verdict::kContinue;
      }
    }
    if (s_.fallback) {
      ctx.set_route({name_ + "/default", *s_.fallback, std::nullopt, std::nullopt});
      ctx.count(name_, "default");
      return Verdict::kContinue;
    }
    // X.224 13.5: refuse the CR with a DR; the session ends once it is written.
    ctx.inject(Direction::kToClient, make_refusal_dr(t.src_ref.value_or(0), s_.reason));
    ctx.count(name_, "no-route");
    std::string reason = "no-route: called=" + tsap_or_none(called) + " calling=" + tsap_or_none(calling);
    for (const auto& field : {std::pair{codec::param::kCalledTsap, "called"}, std::pair{codec::param::kCallingTsap, "calling"}}) {
      // (Not a structured binding: clang 14 cannot capture one in a lambda.)
      const std::uint8_t code = field.first;
      const auto copies = std::count_if(t.params.begin(), t.params.end(), [code](const codec::Param& p) { return p.code == code; });
      if (copies > 1) reason += std::string(" (the CR gives the ") + field.second + " TSAP " + std::to_string(copies) + " times)";
    }
    ctx.end_session(reason);
    return Verdict::kEndSession;
  }

  // Woken from parking: the route was chosen by the CR, long ago.
  void resume_after_handshake() override { decided_ = true; }

 private:
  const std::string& name_;
  const RouteSettings& s_;
  bool decided_ = false;
};

class TsapRouteFactory final : public FilterFactory {
 public:
  TsapRouteFactory(std::string name, RouteSettings s) : FilterFactory(std::move(name)), s_(std::move(s)) {}
  std::string_view kind() const override { return "tsap-route"; }
  std::unique_ptr<Filter> create() const override { return std::make_unique<TsapRoute>(name(), s_); }
  bool needs_data_phase() const override { return false; }
  bool routes() const override { return true; }
  bool uses_client_source() const override {
    for (const auto& r : s_.routes) {
      if (r.source && r.source->mode == conf::SourceMode::kClient) return true;
    }
    return false;
  }
  std::vector<RouteUpstream> route_upstreams() const override {
    std::vector<RouteUpstream> out;
    for (const auto& r : s_.routes) out.push_back({"route " + r.name, r.upstream});
    if (s_.fallback) out.push_back({"default", *s_.fallback});
    return out;
  }
  std::vector<FixedSource> fixed_sources() const override {
    std::vector<FixedSource> out;
    for (const auto& r : s_.routes) {
      if (r.source && r.source->mode == conf::SourceMode::kFixed && r.source->address)
        out.push_back({"route " + r.name, *r.source->address});
    }
    return out;
  }
  std::vector<UpstreamTls> upstream_tls() const override {
    std::vector<UpstreamTls> out;
    for (const auto& r : s_.routes) {
      if (r.tls && *r.tls) out.push_back({"route " + r.name, *r.tls});
    }
    return out;
  }
  std::string settings_toml() const override {
    std::string out;
    if (s_.fallback) out += "default = \"" + s_.fallback->text + "\"\n";
    out += "reason = " + std::to_string(s_.reason) + "\n";
    auto list = [](const std::vector<TsapPattern>& v) {
      std::string l = "[";
      for (std::size_t i = 0; i < v.size(); ++i) l += (i ? ", " : "") + v[i].toml();
      return l + "]";
    };
    for (const auto& r : s_.routes) {
      out += "\n[[filter." + name() + ".route]]\nname = " + conf::toml_string(r.name) + "\nupstream = \"" + r.upstream.text + "\"\n";
      if (!r.called.empty()) out += "called = " + list(r.called) + "\n";
      if (!r.calling.empty()) out += "calling = " + list(r.calling) + "\n";
      if (r.source) {
        out += std::string("source = \"") +
               (r.source->mode == conf::SourceMode::kFixed ? "fixed" : r.source->mode == conf::SourceMode::kClient ? "client" : "auto") +
               "\"\n";
        if (r.source->address) out += "source_address = \"" + r.source->address->text + "\"\n";
      }
      if (r.tls && !*r.tls) out += "tls = false\n";
      if (r.tls && *r.tls) out += conf::tls_client_toml(**r.tls, "filter." + name() + ".route.tls");
    }
    return out;
  }

 private:
  RouteSettings s_;
};

}  // namespace

std::shared_ptr<const FilterFactory> parse_tsap_route(const std::string& name, conf::TableReader& t) {
  RouteSettings s;
  bool ok = true;
  const std::size_t errors_before = t.sink().errors().size();
  s.fallback = t.socket_address("default");
  if (s.fallback && s.fallback->unmapped().is_wildcard()) {
    t.error("default", s.fallback->text + " is the wildcard address, which cannot be connected to: write the upstream's own address");
    ok = false;
  }
  s.reason = static_cast<std::uint8_t>(t.integer("reason", 3, 0, 255));
  t.tables("route", "a table with upstream and called or calling", [&](conf::TableReader& r, std::size_t i) {
    RouteRule rule;
    rule.name = r.string("name", "route-" + std::to_string(i));
    if (r.node("name") != nullptr && r.node("name")->is_string() && !conf::valid_listener_name(rule.name)) {
      r.error("name", "route names may use only letters, digits, _, - and . (at most 64): "
                      "they appear in the close line (route=FILTER/NAME) and the logs");
      ok = false;
    } else if (rule.name == "default" && s.fallback) {
      // Without a `default` key the name is free: nothing else shows as route=FILTER/default.
      r.error("name", "\"default\" names the filter's default in the close line (route=" + name +
                      "/default): choose another name");
      ok = false;
    }
    rule.called = read_tsap_patterns(r, "called", ok);
    rule.calling = read_tsap_patterns(r, "calling", ok);
    auto up = r.socket_address("upstream");
    if (!up) {
      if (r.node("upstream") == nullptr) r.error("upstream", "required: where CRs matching this route are relayed");
      ok = false;
    } else if (up->unmapped().is_wildcard()) {
      r.error("upstream", up->text + " is the wildcard address, which cannot be connected to: write the upstream's own address");
      ok = false;
    } else {
      rule.upstream = *up;
    }
    if (r.node("source") != nullptr) {
      const std::string mode = r.choice("source", "auto", {"auto", "fixed", "client"});
      conf::SourceConfig sc;
      sc.mode = mode == "fixed" ? conf::SourceMode::kFixed : mode == "client" ? conf::SourceMode::kClient : conf::SourceMode::kAuto;
      sc.address = r.ip("source_address");
      if (sc.mode == conf::SourceMode::kFixed && !sc.address) {
        r.error("source", "source = \"fixed\" needs source_address");
        ok = false;
      } else if (sc.mode == conf::SourceMode::kFixed && sc.address->is_wildcard()) {
        r.error("source_address", sc.address->text + " is the wildcard address: with source = \"fixed\" write the "
                                  "address to connect from (source = \"auto\" lets the kernel choose)");
        ok = false;
      } else if (sc.mode != conf::SourceMode::kFixed && r.node("source_address") != nullptr) {
        r.error("source_address", "only used with source = \"fixed\" (source is \"" + mode +
                                      "\"): set source = \"fixed\" or remove source_address");
        ok = false;
      }
      if (sc.address && up && sc.address->family() != up->family()) {
        r.error("source_address", std::string("is an ") + (sc.address->family() == AF_INET6 ? "IPv6" : "IPv4") +
                                      " address but upstream " + up->text + " is " +
                                      (up->family() == AF_INET6 ? "IPv6" : "IPv4") +
                                      ": a connection can only come from an address of its own family");
        ok = false;
      }
      rule.source = sc;
    } else if (r.node("source_address") != nullptr) {
      r.error("source_address", "only used with source = \"fixed\"");
      ok = false;
    }
    rule.tls = conf::read_tls_client(r, "tls", /*allow_off=*/true, ok);
    if (rule.called.empty() && rule.calling.empty() && r.node("called") == nullptr && r.node("calling") == nullptr) {
      r.error("called", "a route needs called and/or calling TSAPs to match (use `default` for everything else)");
      ok = false;
    }
    r.finish();
    s.routes.push_back(std::move(rule));
  });
  if (s.routes.empty() && !s.fallback && ok && t.sink().errors().size() == errors_before) {
    t.error("route", "expected at least one [[filter." + name + ".route]] or a default");
    ok = false;
  }
  t.finish();
  if (!ok || t.sink().errors().size() != errors_before) return nullptr;
  return std::make_shared<TsapRouteFactory>(name, std::move(s));
}

}  // namespace isoproxy::filters
