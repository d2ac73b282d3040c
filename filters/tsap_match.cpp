#include "filters/tsap_match.h"

#include "codec/encode.h"
#include "codec/text.h"

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

}  // namespace isoproxy::filters
