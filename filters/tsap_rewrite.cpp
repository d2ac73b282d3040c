// tsap-rewrite: replaces a calling (0xC1) or called (0xC2) TSAP in the CR the
// client sends, and puts the original back in the CC the upstream answers
// with: a CC echoes the CR's TSAPs under the same codes (protocol.md §3.2),
// and snap7-derived clients refuse a CC that does not echo theirs (python-snap7
// #889). So the upstream sees the TSAP it knows and the client the one it sent.
//
// Only the parameter's value changes: parameter order, every other parameter
// and byte, and the TPKT reserved byte stay as they were. A value of the same
// length is written in place; otherwise the TPDU is re-encoded with LI and the
// TPKT length recomputed (codec/encode.h).
#include <toml++/toml.h>

#include <algorithm>
#include <cstdlib>

#include "codec/text.h"
#include "conf/toml_reader.h"
#include "filters/registry.h"
#include "filters/tsap_match.h"

namespace isoproxy::filters {

namespace {

enum class Field : std::uint8_t { kCalling, kCalled };

std::uint8_t field_code(Field f) { return f == Field::kCalling ? codec::param::kCallingTsap : codec::param::kCalledTsap; }
const char* field_name(Field f) { return f == Field::kCalling ? "calling" : "called"; }

struct RewriteRule {
  Field field = Field::kCalled;
  TsapPattern from;                // exact (no prefix)
  std::vector<std::uint8_t> to;
  std::string to_text;             // as configured
  std::size_t index = 0;           // rule[index] in the configuration
};

struct RewriteSettings {
  std::vector<RewriteRule> rules;
};

std::string show(codec::Bytes b) { return codec::tsap_text(b).quoted(); }

// One parameter to give a new value.
struct Edit {
  std::size_t param;  // index in Tpdu::params
  codec::Bytes value;
};

class TsapRewrite final : public Filter {
 public:
  TsapRewrite(const std::string& name, const RewriteSettings& s) : name_(name), s_(s) {}

  Verdict on_frame(FilterContext& ctx, ChainFrame& frame) override {
    if (frame.type() == codec::TpduType::kCR && frame.direction() == Direction::kToUpstream) {
      on_cr(ctx, frame);
    } else if (frame.type() == codec::TpduType::kCC && frame.direction() == Direction::kToClient) {
      on_cc(ctx, frame);
    }
    return Verdict::kContinue;
  }

 private:
  // Every copy of a TSAP parameter that a rule's `from` matches is rewritten
  // (a CR carrying one twice is an anomaly, and the upstream may read either).
  void on_cr(FilterContext& ctx, ChainFrame& frame) {
    const codec::Tpdu& t = frame.decoded().tpdu;
    // What the CC puts back is this CR's rewrite only: after a later CR
    // that is not rewritten (or whose rewrite fails), a CC value equal to
    // an earlier rewrite's `to` is the peer's own.
    restore_.clear();
    std::vector<Edit> edits;
    std::vector<const RewriteRule*> applied;
    for (std::size_t i = 0; i < t.params.size(); ++i) {
      const codec::Param& p = t.params[i];
      for (const RewriteRule& r : s_.rules) {
        if (p.code != field_code(r.field) || !r.from.matches(p.value)) continue;
        edits.push_back({i, r.to});
        applied.push_back(&r);
        break;  // the first rule for this value wins
      }
    }
    if (edits.empty()) return;
    std::string what;
    for (std::size_t i = 0; i < edits.size(); ++i) {
      what += std::string(i ? ", " : "") + field_name(applied[i]->field) + " " +
              show(t.params[edits[i].param].value) + " -> " + show(applied[i]->to);
    }
    if (!apply(ctx, frame, edits, "CR")) return;
    restore_ = std::move(applied);
    ctx.count(name_, "rewritten-cr");
    ctx.log(name_ + ": CR " + what);
  }

  // Puts back what the CR's rewrite changed, where the CC echoes it.
  void on_cc(FilterContext& ctx, ChainFrame& frame) {
    if (restore_.empty()) return;
    const codec::Tpdu& t = frame.decoded().tpdu;
    std::vector<Edit> edits;
    std::string what;
    for (std::size_t i = 0; i < t.params.size(); ++i) {
      const codec::Param& p = t.params[i];
      for (const RewriteRule* r : restore_) {
        if (p.code != field_code(r->field) || !std::ranges::equal(p.value, r->to)) continue;
        edits.push_back({i, r->from.bytes()});
        what += std::string(what.empty() ? "" : ", ") + field_name(r->field) + " " + show(p.value) + " -> " +
                show(r->from.bytes());
        break;
      }
    }
    if (edits.empty()) return;
    if (!apply(ctx, frame, edits, "CC")) return;
    ctx.count(name_, "restored-cc");
    ctx.log(name_ + ": CC " + what);
  }

  // In place when every new value has its old length, else re-encoded. On
  // failure (the header would pass LI 254) the frame is left as it was.
  bool apply(FilterContext& ctx, ChainFrame& frame, const std::vector<Edit>& edits, const char* type) {
    const codec::Tpdu& t = frame.decoded().tpdu;
    bool same_length = true;
    for (const Edit& e : edits) same_length = same_length && e.value.size() == t.params[e.param].value.size();
    if (same_length) {
      for (const Edit& e : edits) {
        if (!codec::replace_param_value_in_place(frame.bytes(), t.params[e.param], e.value)) std::abort();  // lengths checked
      }
      return true;
    }
    codec::OwnedTpdu o = codec::OwnedTpdu::from(t);
    for (const Edit& e : edits) o.params[e.param].value.assign(e.value.begin(), e.value.end());
    auto bytes = codec::encode_frame(frame.reserved(), o);
    Status<> replaced = bytes ? frame.replace(std::move(*bytes)) : Status<>(unexpected(bytes.error()));
    if (!replaced) {
      ctx.count(name_, "failed");
      ctx.log(name_ + ": " + type + " left unchanged: " + replaced.error().message);
      return false;
    }
    return true;
  }

  const std::string& name_;
  const RewriteSettings& s_;
  std::vector<const RewriteRule*> restore_;  // rules the CR's rewrite applied
};

std::string toml_tsap(const std::string& text, codec::Bytes bytes) {
  bool plain = true;
  for (const char c : text) plain = plain && c >= 0x20 && c <= 0x7E && c != '"' && c != '\\';
  return plain ? "\"" + text + "\"" : "\"hex:" + codec::to_hex(bytes) + "\"";
}

class TsapRewriteFactory final : public FilterFactory {
 public:
  TsapRewriteFactory(std::string name, RewriteSettings s) : FilterFactory(std::move(name)), s_(std::move(s)) {}
  std::string_view kind() const override { return "tsap-rewrite"; }
  std::unique_ptr<Filter> create() const override { return std::make_unique<TsapRewrite>(name(), s_); }
  bool needs_data_phase() const override { return false; }  // CR and CC only
  // Rules as an inline array: it stays inside this filter's table wherever
  // the caller puts the lines.
  std::string settings_toml() const override {
    std::string out = "rule = [\n";
    for (const RewriteRule& r : s_.rules) {
      out += std::string("  { field = \"") + field_name(r.field) + "\", from = " + toml_tsap(r.from.text(), r.from.bytes()) +
             ", to = " + toml_tsap(r.to_text, r.to) + " },\n";
    }
    return out + "]\n";
  }

 private:
  RewriteSettings s_;
};


bool parse_rule(conf::TableReader& r, RewriteRule& rule) {
  bool ok = true;
  auto required = [&r, &ok](std::string_view key, const char* what) {
    if (r.node(key) != nullptr) return true;
    r.error(key, std::string("required: ") + what);
    ok = false;
    return false;
  };
  if (required("field", "\"calling\" or \"called\"")) {
    const std::string f = r.choice("field", "", {"calling", "called"});
    if (f.empty()) ok = false;
    rule.field = f == "calling" ? Field::kCalling : Field::kCalled;
  }
  if (required("from", "the TSAP to replace, e.g. \"EXCHANGETSAP1\" or \"hex:0102\"")) {
    if (auto text = r.optional_string("from")) {
      auto p = TsapPattern::parse(*text);
      if (!p) {
        r.error("from", p.error().message);
        ok = false;
      } else if (p->prefix()) {
        r.error("from", "\"" + *text + "\": a prefix ('*') cannot be rewritten; give the whole TSAP");
        ok = false;
      } else {
        rule.from = std::move(*p);
      }
    } else {
      ok = false;  // not a string: reported
    }
  }
  if (required("to", "the TSAP to put in its place, e.g. \"EXCHANGETSAP2\" or \"hex:0102\"")) {
    if (auto text = r.optional_string("to")) {
      auto b = parse_tsap(*text);
      if (!b) {
        r.error("to", b.error().message);
        ok = false;
      } else {
        rule.to = std::move(*b);
        rule.to_text = *text;
      }
    } else {
      ok = false;
    }
  }
  if (ok && rule.from.bytes() == rule.to) {
    r.error("to", "is the same TSAP as from: the rule would change nothing");
    ok = false;
  }
  r.finish();
  return ok;
}

}  // namespace

std::shared_ptr<const FilterFactory> parse_tsap_rewrite(const std::string& name, conf::TableReader& t) {
  RewriteSettings s;
  const std::size_t errors_before = t.sink().errors().size();
  const bool present = t.node("rule") != nullptr;
  const std::size_t n = t.tables("rule", "a table with field, from and to", [&](conf::TableReader& r, std::size_t i) {
    RewriteRule rule;
    rule.index = i;
    if (!parse_rule(r, rule)) return;
    // A second rule for the same TSAP could never fire.
    for (const RewriteRule& earlier : s.rules) {
      if (earlier.field == rule.field && earlier.from.bytes() == rule.from.bytes()) {
        r.error("from", "\"" + rule.from.text() + "\" is already rewritten by rule[" + std::to_string(earlier.index) +
                            "] (" + field_name(rule.field) + "); only the first rule for a TSAP applies");
      }
    }
    s.rules.push_back(std::move(rule));
  });
  if (!present) {
    t.error("rule", "required: at least one [[" + t.path() + ".rule]] with field, from and to");
  } else if (n == 0 && t.node("rule")->is_array()) {
    t.error("rule", "required: at least one rule with field, from and to");
  }
  t.finish();
  if (t.sink().errors().size() != errors_before) return nullptr;
  return std::make_shared<TsapRewriteFactory>(name, std::move(s));
}

}  // namespace isoproxy::filters
