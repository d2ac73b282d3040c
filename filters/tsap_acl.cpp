// tsap-acl: allows or refuses a connection on its CR, by calling and called
// TSAP and by the client's address. A refused CR is not forwarded: the client
// gets a DR (X.224 13.5: DST-REF = the CR's SRC-REF) with the configured
// reason, and the session ends. Rules are tried in order, the first whose
// every condition matches decides; none matching, `default` decides.
//
// Only CRs from the client are judged, each one (class 0 has a single CR, but
// a client that sends a DT first, or a second CR in the data phase, must not
// get around the rules). Every other frame passes. The session closes rather
// than relay the client's bytes raw (guards_cr(): a stream that is not
// RFC 1006, or a frame that does not decode, could hide a CR).
#include <toml++/toml.h>


#include "codec/text.h"
#include "conf/toml_reader.h"
#include "filters/registry.h"
#include "filters/tsap_match.h"

namespace isoproxy::filters {

namespace {

struct AclRule {
  bool allow = false;
  std::vector<TsapPattern> calling, called;  // empty: no condition
  std::vector<conf::Cidr> clients;           // empty: no condition
};

struct AclSettings {
  bool default_allow = false;
  std::uint8_t reason = 3;  // protocol.md §4: address unknown
  std::vector<AclRule> rules;
};

// A TSAP condition against every copy of the parameter in the CR, by the
// stricter reading (match_copies): an allow rule needs every copy to match,
// a deny rule any one. With no copy, nothing matches.
bool tsap_condition(const std::vector<TsapPattern>& patterns, const codec::Tpdu& t, std::uint8_t code, bool allow) {
  const TsapCopies c = match_copies(patterns, t, code);
  return allow ? c.every : c.any;
}

bool rule_matches(const AclRule& r, const codec::Tpdu& t, const sockaddr* client) {
  if (!r.calling.empty() && !tsap_condition(r.calling, t, codec::param::kCallingTsap, r.allow)) return false;
  if (!r.called.empty() && !tsap_condition(r.called, t, codec::param::kCalledTsap, r.allow)) return false;
  if (!r.clients.empty()) {
    bool in = false;
    for (const conf::Cidr& c : r.clients) in = in || c.contains(client);
    if (!in) return false;
  }
  return true;
}

std::string tsap_display(std::optional<codec::Bytes> b) {
  return b ? codec::tsap_text(*b).quoted() : std::string("-");
}

class TsapAcl final : public Filter {
 public:
  TsapAcl(const std::string& name, const AclSettings& s) : name_(name), s_(s) {}

  Verdict on_frame(FilterContext& ctx, ChainFrame& frame) override {
    // The session closes once the DR is written; until then, frames that
    // followed the refused CR in the same read must not reach the upstream.
    if (denied_) return frame.direction() == Direction::kToUpstream ? Verdict::kDrop : Verdict::kContinue;
    if (frame.type() != codec::TpduType::kCR || frame.direction() != Direction::kToUpstream) return Verdict::kContinue;
    const codec::Tpdu& t = frame.decoded().tpdu;
    const auto* client = ctx.client_sockaddr();
    std::optional<std::size_t> hit;
    for (std::size_t i = 0; i < s_.rules.size() && !hit; ++i) {
      if (rule_matches(s_.rules[i], t, client)) hit = i;
    }
    const bool allow = hit ? s_.rules[*hit].allow : s_.default_allow;
    if (allow) {
      ctx.count(name_, "allowed");
      return Verdict::kContinue;
    }
    ctx.count(name_, "denied");
    // The index is the one config errors use (rule[0] is the first).
    const std::string why = hit ? "rule " + std::to_string(*hit) : std::string("default");
    ctx.log(name_ + ": refused CR from " + ctx.client_address() + " calling=" + tsap_display(t.calling_tsap()) +
            " called=" + tsap_display(t.called_tsap()) + ": " + why + "; DR reason " + std::to_string(s_.reason) +
            " to the client");
    ctx.inject(Direction::kToClient, make_refusal_dr(t.src_ref.value_or(0), s_.reason));
    ctx.end_session("acl-denied: " + why);
    denied_ = true;
    return Verdict::kEndSession;  // the CR itself goes no further
  }

 private:
  const std::string& name_;
  const AclSettings& s_;
  bool denied_ = false;
};

class TsapAclFactory final : public FilterFactory {
 public:
  TsapAclFactory(std::string name, AclSettings s) : FilterFactory(std::move(name)), s_(std::move(s)) {}
  std::string_view kind() const override { return "tsap-acl"; }
  std::unique_ptr<Filter> create() const override { return std::make_unique<TsapAcl>(name(), s_); }
  // Every CR is judged, a later one in the data phase too (an S7 server
  // such as snap7's answers a CR at any time, protocol.md 6.3): the
  // client's frames are never spliced unseen. Nothing is remembered of
  // them, so the session still parks.
  bool needs_data_phase() const override { return true; }
  bool keeps_session_state() const override { return false; }
  bool guards_cr() const override { return true; }
  // Rules as an inline array: it stays inside this filter's table wherever
  // the caller puts the lines.
  std::string settings_toml() const override {
    std::string out = std::string("default = \"") + (s_.default_allow ? "allow" : "deny") + "\"\n";
    out += "reason = " + std::to_string(s_.reason) + "\n";
    if (s_.rules.empty()) return out + "rule = []\n";
    out += "rule = [\n";
    for (const AclRule& r : s_.rules) {
      out += std::string("  { action = \"") + (r.allow ? "allow" : "deny") + "\"";
      auto list = [&out](const char* key, const auto& items, auto text) {
        if (items.empty()) return;
        out += std::string(", ") + key + " = [";
        for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + text(items[i]);
        out += "]";
      };
      list("calling", r.calling, [](const TsapPattern& p) { return p.toml(); });
      list("called", r.called, [](const TsapPattern& p) { return p.toml(); });
      list("client", r.clients, [](const conf::Cidr& c) { return "\"" + c.text + "\""; });
      out += " },\n";
    }
    return out + "]\n";
  }

 private:
  AclSettings s_;
};


// `key` as one TSAP pattern or a list of them; an empty result with `ok`
// still true means the key is absent.
bool parse_rule(conf::TableReader& r, AclRule& rule) {
  bool ok = true;
  if (r.node("action") == nullptr) {
    r.error("action", "required: \"allow\" or \"deny\"");
    ok = false;
  } else {
    const std::string a = r.choice("action", "", {"allow", "deny"});
    if (a.empty()) ok = false;
    rule.allow = a == "allow";
  }
  rule.calling = read_tsap_patterns(r, "calling", ok);
  rule.called = read_tsap_patterns(r, "called", ok);
  if (const toml::node* n = r.node("client"); n != nullptr) {
    rule.clients = r.cidrs("client");
    if (rule.clients.empty()) {
      // cidrs() has reported a bad entry; an empty list is reported here.
      if (const auto* arr = n->as_array(); arr != nullptr && arr->empty()) {
        r.error("client", "an empty list matches nothing: list at least one address range, or leave the key out to match any");
      }
      ok = false;
    }
  }
  r.finish();
  return ok;
}

}  // namespace

std::shared_ptr<const FilterFactory> parse_tsap_acl(const std::string& name, conf::TableReader& t) {
  AclSettings s;
  const std::size_t errors_before = t.sink().errors().size();
  // Fail closed: an ACL whose author forgot the default refuses what no rule allows.
  s.default_allow = t.choice("default", "deny", {"allow", "deny"}) == "allow";
  s.reason = static_cast<std::uint8_t>(t.integer("reason", 3, 0, 255));
  t.tables("rule", "a table with an action", [&](conf::TableReader& r, std::size_t) {
    AclRule rule;
    if (parse_rule(r, rule)) s.rules.push_back(std::move(rule));
  });
  t.finish();
  if (t.sink().errors().size() != errors_before) return nullptr;
  return std::make_shared<TsapAclFactory>(name, std::move(s));
}

}  // namespace isoproxy::filters
