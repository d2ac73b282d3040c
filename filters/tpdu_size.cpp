// tpdu-size: clamps the TPDU size proposed in the CR and confirmed in the CC
// to a maximum. ISO 8073 13.3.4 allows class 0 at most 2048 octets; some
// stacks propose more anyway (libiec61850 proposes 8192, libiec61850 #121;
// Tandem writes codes 0x0E-0x10) and class 0 peers that hold to the limit
// refuse them (protocol.md §3.1, §7.3).
//
// The 1-octet TPDU size parameter (0xC0) is rewritten in place. So is the
// preferred maximum TPDU size (0xF0, a count of 128-octet units, 1-4 octets),
// which X.224 lets a CR carry in class 0 and which a receiver uses in place
// of 0xC0: clamping one and not the other would not clamp. A value no larger
// than the maximum, and a value no standard defines, are left as they are.
//
// A CR or CC without 0xC0 means 65531 under RFC 1006 §5 (not X.224's 128);
// with add_if_missing one carrying the maximum is appended (to a CC, the size
// the CR proposed if that is smaller: a CC confirms no more than was asked). That adds a
// parameter, which DESIGN.md §2.1 allows only when configured (gos7 accepts
// only a 22-byte CC), hence off by default.
#include <array>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "codec/text.h"
#include "conf/toml_reader.h"
#include "filters/registry.h"

namespace isoproxy::filters {

namespace {

constexpr std::array<std::int64_t, 7> kSizes = {128, 256, 512, 1024, 2048, 4096, 8192};

struct SizeSettings {
  std::uint32_t max = 2048;
  std::uint8_t code = 0x0B;  // max = 1 << code
  bool add_if_missing = false;
};

std::string size_text(std::uint32_t octets, std::uint8_t code) {
  char buf[16];
  std::snprintf(buf, sizeof buf, " (0x%02X)", code);
  return std::to_string(octets) + buf;
}

class TpduSize final : public Filter {
 public:
  TpduSize(const std::string& name, const SizeSettings& s) : name_(name), s_(s) {}

  Verdict on_frame(FilterContext& ctx, ChainFrame& frame) override {
    const bool cr = frame.type() == codec::TpduType::kCR && frame.direction() == Direction::kToUpstream;
    const bool cc = frame.type() == codec::TpduType::kCC && frame.direction() == Direction::kToClient;
    if (!cr && !cc) return Verdict::kContinue;
    const char* type = cr ? "CR" : "CC";
    const codec::Tpdu& t = frame.decoded().tpdu;
    bool clamped = false;
    bool has_size = false;
    std::string what;
    // A CC confirms no more than the CR proposed (X.224 13.3.4 b; protocol.md
    // 3.1), as it left this filter: a larger one is lowered to that.
    std::uint8_t limit = s_.code;
    if (cc && cr_code_ && *cr_code_ < limit) limit = *cr_code_;
    for (const codec::Param& p : t.params) {
      if (p.code == codec::param::kTpduSize) {
        has_size = true;
        clamp_size(ctx, frame, p, type, limit, clamped, what);
      } else if (p.code == codec::param::kPreferredMaxTpduSize) {
        clamp_preferred(frame, p, *codec::tpdu_size_octets(limit), clamped, what);
      }
    }
    if (clamped) {
      ctx.count(name_, cr ? "clamped-cr" : "clamped-cc");
      ctx.log(name_ + ": " + type + " " + what);
    }
    if (cr) {
      // What the CR goes on to propose (clamped here), so that the CC
      // confirms no more than that (X.224 13.3.4 b). Of several 0xC0 the
      // smallest: the stricter reading, as peers differ on which they read.
      cr_code_.reset();
      for (const codec::Param& p : t.params) {
        if (p.code == codec::param::kTpduSize && p.value.size() == 1 && codec::tpdu_size_octets(p.value[0]) &&
            (!cr_code_ || p.value[0] < *cr_code_)) {
          cr_code_ = p.value[0];
        }
      }
    }
    if (!has_size && s_.add_if_missing) {
      std::uint8_t code = s_.code;
      if (cr) {
        cr_code_ = code;
      } else if (cr_code_ && *cr_code_ < code) {
        code = *cr_code_;
      }
      add(ctx, frame, type, code);
    }
    return Verdict::kContinue;
  }

 private:
  void clamp_size(FilterContext& ctx, ChainFrame& frame, const codec::Param& p, const char* type, std::uint8_t limit,
                  bool& clamped, std::string& what) {
    if (p.value.size() != 1) {
      ctx.log(name_ + ": " + type + " TPDU size parameter of " + std::to_string(p.value.size()) +
              " octets (X.224: 1) left as it is");
      return;
    }
    const std::uint8_t code = p.value[0];
    const auto octets = codec::tpdu_size_octets(code);
    if (!octets) {
      ctx.log(name_ + ": " + type + " TPDU size code " + codec::to_hex(p.value) + " is undefined; left as it is");
      return;
    }
    const std::uint32_t limit_octets = *codec::tpdu_size_octets(limit);
    if (*octets <= limit_octets) return;
    const std::uint8_t v[1] = {limit};
    if (!codec::replace_param_value_in_place(frame.bytes(), p, v)) std::abort();  // same length by construction
    what += std::string(what.empty() ? "" : ", ") + "TPDU size " + size_text(*octets, code) + " -> " +
            size_text(limit_octets, limit) + (limit != s_.code ? " (what the CR proposed)" : "");
    clamped = true;
  }

  void clamp_preferred(ChainFrame& frame, const codec::Param& p, std::uint32_t limit_octets, bool& clamped,
                       std::string& what) {
    const std::size_t n = p.value.size();
    if (n < 1 || n > 4) return;  // bad length: an anomaly the decoder reports; not ours to fix
    std::uint32_t units = 0;
    for (const std::uint8_t b : p.value) units = units << 8 | b;
    const std::uint32_t max_units = limit_octets / 128;
    if (units <= max_units) return;
    std::array<std::uint8_t, 4> v{};
    for (std::size_t i = 0; i < n; ++i) v[n - 1 - i] = static_cast<std::uint8_t>(max_units >> (8 * i));
    if (!codec::replace_param_value_in_place(frame.bytes(), p, codec::Bytes(v.data(), n))) std::abort();
    what += std::string(what.empty() ? "" : ", ") + "preferred maximum TPDU size " + std::to_string(units) +
            " x 128 -> " + std::to_string(max_units) + " x 128";
    clamped = true;
  }

  void add(FilterContext& ctx, ChainFrame& frame, const char* type, std::uint8_t code) {
    codec::OwnedTpdu o = codec::OwnedTpdu::from(frame.decoded().tpdu);
    const std::uint8_t v[1] = {code};
    o.params.push_back({codec::param::kTpduSize, {v, v + 1}});
    auto bytes = codec::encode_frame(frame.reserved(), o);
    Status<> replaced = bytes ? frame.replace(std::move(*bytes)) : Status<>(unexpected(bytes.error()));
    if (!replaced) {
      ctx.count(name_, "failed");
      ctx.log(name_ + ": " + type + " without a TPDU size left unchanged: " + replaced.error().message);
      return;
    }
    ctx.count(name_, "added");
    ctx.log(name_ + ": " + type + " without a TPDU size (RFC 1006: 65531): added " +
            size_text(*codec::tpdu_size_octets(code), code));
  }

  const std::string& name_;
  const SizeSettings& s_;
  std::optional<std::uint8_t> cr_code_;  // the TPDU size the forwarded CR proposes, if one
};

class TpduSizeFactory final : public FilterFactory {
 public:
  TpduSizeFactory(std::string name, SizeSettings s) : FilterFactory(std::move(name)), s_(s) {}
  std::string_view kind() const override { return "tpdu-size"; }
  std::unique_ptr<Filter> create() const override { return std::make_unique<TpduSize>(name(), s_); }
  bool needs_data_phase() const override { return false; }  // CR and CC only
  std::string settings_toml() const override {
    return "max = " + std::to_string(s_.max) + "\nadd_if_missing = " + (s_.add_if_missing ? "true" : "false") + "\n";
  }

 private:
  SizeSettings s_;
};

}  // namespace

std::shared_ptr<const FilterFactory> parse_tpdu_size(const std::string& name, conf::TableReader& t) {
  SizeSettings s;
  const std::size_t errors_before = t.sink().errors().size();
  const std::int64_t max = t.integer("max", 2048, std::numeric_limits<std::int64_t>::min(),
                                     std::numeric_limits<std::int64_t>::max());
  bool found = false;
  for (std::size_t i = 0; i < kSizes.size(); ++i) {
    if (kSizes[i] != max) continue;
    found = true;
    s.max = static_cast<std::uint32_t>(max);
    s.code = static_cast<std::uint8_t>(0x07 + i);
  }
  if (!found) {
    t.error("max", "must be one of 128, 256, 512, 1024, 2048, 4096, 8192 (the X.224 TPDU sizes; found " +
                       std::to_string(max) + ")");
  }
  s.add_if_missing = t.boolean("add_if_missing", false);
  t.finish();
  if (t.sink().errors().size() != errors_before) return nullptr;
  return std::make_shared<TpduSizeFactory>(name, s);
}

}  // namespace isoproxy::filters
