// TSAP selectors as the configuration writes them, shared by the filters that
// choose by TSAP (tsap-route, tsap-acl, tsap-rewrite, trace): "EXCHANGETSAP1"
// is ASCII, "hex:0102" is hex, and a trailing "*" makes it a prefix
// ("SIMATIC-*", "hex:01*").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "codec/tpkt.h"
#include "codec/x224.h"
#include "result.h"

namespace isoproxy::conf {
class TableReader;
}

namespace isoproxy::filters {

// "EXCHANGETSAP1" -> bytes; "hex:0102" -> {0x01, 0x02}. Errors name what is wrong.
Result<std::vector<std::uint8_t>> parse_tsap(std::string_view text);

class TsapPattern {
 public:
  static Result<TsapPattern> parse(std::string_view text);
  bool matches(codec::Bytes tsap) const;
  bool prefix() const { return prefix_; }
  const std::vector<std::uint8_t>& bytes() const { return bytes_; }
  const std::string& text() const { return text_; }
  // As a TOML string that reads back to the same pattern: as written when
  // that is plain printable ASCII, else in its hex form.
  std::string toml() const;

 private:
  std::vector<std::uint8_t> bytes_;
  bool prefix_ = false;
  std::string text_;
};

// The copies of one TSAP parameter (`code`) in a CR against a list of
// patterns: `any`, some copy matches one of them; `every`, there is a copy
// and each matches one of them. A CR carrying the same TSAP parameter twice
// is ambiguous (peers differ on which copy they read): a filter that lets a
// CR through by its TSAP (an ACL's allow, a route) asks `every`, one that
// refuses or selects it (a deny, trace) asks `any`.
struct TsapCopies {
  bool any = false;
  bool every = false;
};
TsapCopies match_copies(const std::vector<TsapPattern>& patterns, const codec::Tpdu& t, std::uint8_t code);

// A key of TSAP patterns in a filter's table: one string or a non-empty list
// of them (an empty list would match nothing). Absent: an empty vector, which
// callers read as "any". Errors go to the reader's sink and clear `ok`.
std::vector<TsapPattern> read_tsap_patterns(conf::TableReader& r, std::string_view key, bool& ok);

// A DR refusing a CR (X.224 13.5): DST-REF = the CR's SRC-REF, SRC-REF 0.
std::vector<std::uint8_t> make_refusal_dr(std::uint16_t cr_src_ref, std::uint8_t reason);

}  // namespace isoproxy::filters
