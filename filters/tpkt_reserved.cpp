// tpkt-reserved: sets the TPKT reserved byte to 0, in place, on the TPDU types
// and directions configured. Exchange 4.0's MTA writes 0x11 in its CC (KB
// Q151626) and CR (KB Q157015); RFC 2126 §4.3 says 0 and strict stacks
// (libiec61850, signature engines matching "03 00") refuse anything else.
// Nothing else in the frame changes, so no length is touched.
#include <array>
#include <bitset>

#include "codec/text.h"
#include "conf/toml_reader.h"
#include "filters/registry.h"

namespace isoproxy::filters {

namespace {

constexpr std::array<std::string_view, 10> kTypeNames = {"CR", "CC", "DR", "DC", "DT", "ED", "AK", "EA", "RJ", "ER"};

struct ReservedSettings {
  std::array<bool, 16> types{};  // by TPDU type nibble
  bool to_client = true;
  bool to_upstream = true;
  std::vector<std::string> type_names;  // as configured, for settings_toml
};

class TpktReserved final : public Filter {
 public:
  TpktReserved(const std::string& name, const ReservedSettings& s) : name_(name), s_(s) {}

  Verdict on_frame(FilterContext& ctx, ChainFrame& frame) override {
    auto bytes = frame.bytes();
    const std::uint8_t old = bytes[1];
    if (old == 0) return Verdict::kContinue;
    const bool dir_ok = frame.direction() == Direction::kToClient ? s_.to_client : s_.to_upstream;
    if (!dir_ok || !s_.types[static_cast<std::size_t>(frame.type())]) return Verdict::kContinue;
    codec::set_reserved(bytes, 0);
    ctx.count(name_, "repaired");
    // Connection-phase TPDUs are logged each time; data TPDUs once per value
    // per session (a peer that stamps every DT would flood the log), the rest
    // are in the counter and the close line.
    const bool data = frame.type() == codec::TpduType::kDT || frame.type() == codec::TpduType::kED;
    if (!data || !logged_values_[old]) {
      logged_values_[old] = true;
      // "NAME: CC to-client: TPKT reserved byte 0x11 -> 0x00", without printf
      // (the default config logs it for every session of a vendor MTA).
      std::string msg;
      msg.reserve(128);
      msg.append(name_).append(": ").append(codec::tpdu_type_name(frame.type())).append(" ");
      msg.append(direction_name(frame.direction())).append(": TPKT reserved byte 0x");
      msg += codec::to_hex(codec::Bytes(&old, 1));
      msg += " -> 0x00";
      if (data) msg += " (further data repairs counted, not logged)";
      ctx.log(msg);
    }
    return Verdict::kContinue;
  }

 private:
  const std::string& name_;
  const ReservedSettings& s_;
  std::bitset<256> logged_values_;  // one bit per value: every session of the default config has one
};

class TpktReservedFactory final : public FilterFactory {
 public:
  TpktReservedFactory(std::string name, ReservedSettings s) : FilterFactory(std::move(name)), s_(std::move(s)) {}
  std::string_view kind() const override { return "tpkt-reserved"; }
  std::unique_ptr<Filter> create() const override { return std::make_unique<TpktReserved>(name(), s_); }
  // Only CR and CC belong to the connection phase: any other type (a DT, or
  // a DR or ER after the CC) can only be repaired while the relay frames.
  bool needs_data_phase() const override {
    for (std::size_t nib = 0; nib < s_.types.size(); ++nib) {
      const auto type = static_cast<codec::TpduType>(nib);
      if (s_.types[nib] && type != codec::TpduType::kCR && type != codec::TpduType::kCC) return true;
    }
    return false;
  }
  std::string settings_toml() const override {
    std::string out = "tpdu = [";
    for (std::size_t i = 0; i < s_.type_names.size(); ++i) out += (i ? ", \"" : "\"") + s_.type_names[i] + "\"";
    out += "]\ndirections = [";
    bool first = true;
    if (s_.to_client) { out += "\"to-client\""; first = false; }
    if (s_.to_upstream) out += std::string(first ? "" : ", ") + "\"to-upstream\"";
    return out + "]\n";
  }

 private:
  ReservedSettings s_;
};

}  // namespace

std::shared_ptr<const FilterFactory> parse_tpkt_reserved(const std::string& name, conf::TableReader& t) {
  ReservedSettings s;
  bool ok = true;
  s.type_names = t.string_list("tpdu", {"CC"});
  if (s.type_names.empty()) {
    t.error("tpdu", "expected at least one TPDU type (CR, CC, DR, DC, DT, ED, AK, EA, RJ, ER) or \"any\"");
    ok = false;
  }
  for (std::size_t i = 0; i < s.type_names.size(); ++i) {
    const std::string& n = s.type_names[i];
    if (n == "any") {
      s.types.fill(true);
      continue;
    }
    bool found = false;
    for (std::string_view k : kTypeNames) {
      if (n == k) {
        found = true;
        for (int nib = 0; nib < 16; ++nib) {
          // Map the name to its type nibble through the codec's own names.
          if (codec::tpdu_type_name(static_cast<codec::TpduType>(nib)) == k) s.types[static_cast<std::size_t>(nib)] = true;
        }
      }
    }
    if (!found) {
      t.element_error("tpdu", i, "unknown TPDU type \"" + n + "\": expected CR, CC, DR, DC, DT, ED, AK, EA, RJ, ER or \"any\"");
      ok = false;
    }
  }
  const auto dirs = t.string_list("directions", {"to-client", "to-upstream"});
  s.to_client = s.to_upstream = false;
  for (std::size_t i = 0; i < dirs.size(); ++i) {
    const std::string& d = dirs[i];
    if (d == "to-client") s.to_client = true;
    else if (d == "to-upstream") s.to_upstream = true;
    else {
      t.element_error("directions", i, "unknown direction \"" + d + "\": expected \"to-client\" or \"to-upstream\"");
      ok = false;
    }
  }
  if (dirs.empty()) {
    t.error("directions", "expected at least one of \"to-client\", \"to-upstream\"");
    ok = false;
  }
  t.finish();
  if (!ok) return nullptr;
  return std::make_shared<TpktReservedFactory>(name, std::move(s));
}

}  // namespace isoproxy::filters
