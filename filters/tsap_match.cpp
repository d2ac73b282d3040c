#include "filters/tsap_match.h"

#include "codec/encode.h"
#include "codec/text.h"
#include "conf/toml_reader.h"

#include <toml++/toml.h>

namespace isoproxy::filters {

Result<std::vector<std::uint8_t>> parse_tsap(std::string_view text) {
  if (text.rfind("hex:", 0) == 0) {
    auto b = codec::parse_hex(text.substr(4));
    if (!b) return unexpected(Error{"bad-tsap", "\"" + std::string(text) + "\": " + b.error().message});
    if (b->empty()) return unexpected(Error{"bad-tsap", "\"" + std::string(text) + "\": no hex digits after \"hex:\""});
    if (b->size() > 255) return unexpected(Error{"bad-tsap", "\"" + std::string(text) + "\": a TSAP has at most 255 octets"});
    return std::move(*b);
  }
  if (text.empty()) return unexpected(Error{"bad-tsap", "an empty TSAP (write hex:... for binary TSAPs)"});
  if (text.size() > 255) return unexpected(Error{"bad-tsap", "\"" + std::string(text) + "\": a TSAP has at most 255 octets"});
  return std::vector<std::uint8_t>(text.begin(), text.end());
}

Result<TsapPattern> TsapPattern::parse(std::string_view text) {
  TsapPattern p;
  p.text_ = std::string(text);
  std::string_view body = text;
  if (!body.empty() && body.back() == '*') {
    p.prefix_ = true;
    body.remove_suffix(1);
    if (body.empty() || body == "hex:") {
      return unexpected(Error{"bad-tsap", "\"" + std::string(text) + "\": a prefix needs at least one octet before '*'"});
    }
  }
  auto b = parse_tsap(body);
  if (!b) return unexpected(b.error());
  p.bytes_ = std::move(*b);
  return p;
}

bool TsapPattern::matches(codec::Bytes tsap) const {
  if (prefix_) {
    return tsap.size() >= bytes_.size() && std::equal(bytes_.begin(), bytes_.end(), tsap.begin());
  }
  return tsap.size() == bytes_.size() && std::equal(bytes_.begin(), bytes_.end(), tsap.begin());
}

TsapCopies match_copies(const std::vector<TsapPattern>& patterns, const codec::Tpdu& t, std::uint8_t code) {
  TsapCopies out;
  bool all = true;
  for (const codec::Param& p : t.params) {
    if (p.code != code) continue;
    bool m = false;
    for (const TsapPattern& pat : patterns) m = m || pat.matches(p.value);
    out.any = out.any || m;
    all = all && m;
  }
  out.every = out.any && all;
  return out;
}

std::vector<std::uint8_t> make_refusal_dr(std::uint16_t cr_src_ref, std::uint8_t reason) {
  codec::OwnedTpdu dr;
  dr.code = 0x80;
  dr.fixed = {static_cast<std::uint8_t>(cr_src_ref >> 8), static_cast<std::uint8_t>(cr_src_ref & 0xFF), 0x00, 0x00, reason};
  return codec::encode_frame(0, dr).value();  // 11 octets: cannot exceed any limit
}

std::string TsapPattern::toml() const {
  bool plain = true;
  for (const char c : text_) plain = plain && c >= 0x20 && c <= 0x7E && c != '"' && c != '\\';
  if (plain) return "\"" + text_ + "\"";
  return "\"hex:" + codec::to_hex(bytes_) + (prefix_ ? "*\"" : "\"");
}

std::vector<TsapPattern> read_tsap_patterns(conf::TableReader& r, std::string_view key, bool& ok) {
  const toml::node* n = r.node(key);
  if (n == nullptr) return {};
  constexpr const char* kExpected = "expected a TSAP such as \"EXCHANGETSAP1\", \"hex:0102\" or \"SIMATIC-*\", or a list of them";
  std::vector<TsapPattern> out;
  if (const auto* s = n->as_string()) {
    auto p = TsapPattern::parse(s->get());
    if (!p) {
      r.error(key, p.error().message);
      ok = false;
      return {};
    }
    out.push_back(std::move(*p));
    return out;
  }
  const auto* a = n->as_array();
  if (a == nullptr) {
    r.error(key, std::string(kExpected) + ", found " + conf::type_name(*n));
    ok = false;
    return {};
  }
  if (a->empty()) {
    r.error(key, "an empty list matches nothing: list at least one TSAP, or leave the key out to match any");
    ok = false;
    return {};
  }
  for (std::size_t i = 0; i < a->size(); ++i) {
    const toml::node& e = *a->get(i);
    const std::string at = r.path() + "." + std::string(key) + "[" + std::to_string(i) + "]";
    const auto* s = e.as_string();
    if (s == nullptr) {
      r.sink().add(&e, at, std::string("expected a TSAP string, found ") + conf::type_name(e));
      ok = false;
      continue;
    }
    auto p = TsapPattern::parse(s->get());
    if (!p) {
      r.sink().add(&e, at, p.error().message);
      ok = false;
      continue;
    }
    out.push_back(std::move(*p));
  }
  return ok ? out : std::vector<TsapPattern>{};
}

}  // namespace isoproxy::filters
