// X.224 / ISO 8073 TPDU decoder. Frames are built by hand from the tables in
// protocol.md §2.3 (fixed parts), §3 (parameters) and §4 (DR/ER values).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "codec/encode.h"
#include "codec/text.h"
#include "codec/x224.h"
#include "support/vectors.h"

namespace {

using namespace isoproxy::codec;
using ByteVec = std::vector<std::uint8_t>;

struct Decoded {
  isoproxy::Result<Tpdu, DecodeError> result;
  std::vector<Anomaly> anomalies;
};

// Keeps the bytes alive alongside the view that points into them.
struct Holder {
  ByteVec bytes;
  std::vector<Anomaly> anomalies;
  std::optional<isoproxy::Result<Tpdu, DecodeError>> r;
  bool ok() const { return r->ok(); }
  const Tpdu& t() const { return **r; }
  DecodeErrorKind err() const { return r->error().kind; }
  std::size_t err_offset() const { return r->error().offset; }
};

Holder decode(ByteVec bytes, DecodeOptions opts = {}) {
  Holder h;
  h.bytes = std::move(bytes);
  h.r.emplace(decode_tpdu(Bytes(h.bytes), opts, &h.anomalies));
  return h;
}

ByteVec hx(const char* text) { return *parse_hex(text); }
ByteVec hx(const std::string& text) { return *parse_hex(text); }

bool has(const std::vector<Anomaly>& a, AnomalyKind k) {
  return std::any_of(a.begin(), a.end(), [k](const Anomaly& x) { return x.kind == k; });
}

std::multiset<AnomalyKind> kinds(const std::vector<Anomaly>& a) {
  std::multiset<AnomalyKind> s;
  for (const auto& x : a) s.insert(x.kind);
  return s;
}

std::string names(const std::vector<Anomaly>& a) {
  std::string s;
  for (const auto& x : a) s += std::string(anomaly_name(x.kind)) + " (" + x.detail + "); ";
  return s.empty() ? "none" : s;
}

ByteVec bv(Bytes b) { return ByteVec(b.begin(), b.end()); }

// Unedited decode -> OwnedTpdu -> encode is byte-exact.
void check_round_trip(const Holder& h) {
  REQUIRE(h.ok());
  auto enc = OwnedTpdu::from(h.t()).encode();
  REQUIRE(enc.ok());
  CHECK(to_hex(Bytes(*enc)) == to_hex(Bytes(h.bytes)));
}

ByteVec cr_with_size(std::uint8_t size_code, std::uint8_t class_octet = 0x00) {
  return ByteVec{0x09, 0xE0, 0x00, 0x00, 0x00, 0x01, class_octet, 0xC0, 0x01, size_code};
}

}  // namespace

// ---------------------------------------------------------------------------
// Each TPDU type

TEST_CASE("x224: CR, class 0", "[x224]") {
  // V5's TPDU: LI 17, E0, DST-REF 0, SRC-REF 7, class 0, C1 0100, C2 0102, C0 0A.
  auto h = decode(hx("11e00000000700c1020100c2020102c0010a"));
  REQUIRE(h.ok());
  const Tpdu& t = h.t();
  CHECK(t.type == TpduType::kCR);
  CHECK(t.format == TpduFormat::kClass0);
  CHECK(t.li == 0x11);
  CHECK(t.code == 0xE0);
  CHECK(t.cdt == 0);
  CHECK(t.dst_ref == 0);
  CHECK(t.src_ref == 7);
  CHECK(t.class_option == 0);
  CHECK(t.preferred_class() == 0);
  CHECK(t.fixed_length() == 6);
  REQUIRE(t.params.size() == 3);
  CHECK(t.params[0].code == 0xC1);
  CHECK(t.params[0].offset == 7);
  CHECK(t.params[1].offset == 11);
  CHECK(t.params[2].offset == 15);
  CHECK(bv(*t.calling_tsap()) == ByteVec{0x01, 0x00});
  CHECK(bv(*t.called_tsap()) == ByteVec{0x01, 0x02});
  CHECK(t.tpdu_size_code() == 0x0A);
  CHECK(t.user_data.empty());
  CHECK(t.trailing.empty());
  CHECK_FALSE(t.eot.has_value());
  CHECK_FALSE(t.reason.has_value());
  INFO(names(h.anomalies));
  CHECK(h.anomalies.empty());
  check_round_trip(h);

  SECTION("minimal, no parameters") {
    auto m = decode(hx("06e00000000100"));
    REQUIRE(m.ok());
    CHECK(m.t().params.empty());
    CHECK_FALSE(m.t().calling_tsap().has_value());
    CHECK_FALSE(m.t().tpdu_size_code().has_value());
    CHECK(m.anomalies.empty());
    check_round_trip(m);
  }
  SECTION("option bits in class 0 are flagged, each") {
    for (const std::uint8_t options : {0x01, 0x02, 0x04, 0x08}) {
      ByteVec cr = hx("06e00000000100");
      cr.back() = options;
      auto o = decode(cr);
      INFO(int(options));
      REQUIRE(o.ok());
      CHECK(o.t().class_option == options);
      CHECK(kinds(o.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kClassOptions});
    }
    // Class 2 may use them: not this anomaly (class-not-zero is).
    auto c2 = decode(hx("06e00000000122"));
    REQUIRE(c2.ok());
    CHECK_FALSE(has(c2.anomalies, AnomalyKind::kClassOptions));
  }
}

TEST_CASE("x224: CC", "[x224]") {
  auto h = decode(hx("06d0002a000500"));
  REQUIRE(h.ok());
  CHECK(h.t().type == TpduType::kCC);
  CHECK(h.t().dst_ref == 0x2A);
  CHECK(h.t().src_ref == 5);
  CHECK(h.t().class_option == 0);
  CHECK(h.anomalies.empty());
  check_round_trip(h);
}

TEST_CASE("x224: DR", "[x224]") {
  auto h = decode(hx("06800001000203cafe"));
  REQUIRE(h.ok());
  const Tpdu& t = h.t();
  CHECK(t.type == TpduType::kDR);
  CHECK(t.dst_ref == 1);
  CHECK(t.src_ref == 2);
  CHECK(t.reason == 3);
  CHECK(bv(t.user_data) == ByteVec{0xCA, 0xFE});
  CHECK_FALSE(t.calling_tsap().has_value());  // CR/CC only
  CHECK(h.anomalies.empty());
  check_round_trip(h);

  SECTION("with additional clearing information (0xE0)") {
    auto e = decode(hx("09800001000280e00180"));
    REQUIRE(e.ok());
    REQUIRE(e.t().params.size() == 1);
    CHECK(e.t().params[0].code == 0xE0);
    CHECK_FALSE(has(e.anomalies, AnomalyKind::kParamUnknown));
    check_round_trip(e);
  }
}

TEST_CASE("x224: DC", "[x224]") {
  auto h = decode(hx("05c000010002"));
  REQUIRE(h.ok());
  CHECK(h.t().type == TpduType::kDC);
  CHECK(h.t().dst_ref == 1);
  CHECK(h.t().src_ref == 2);
  CHECK(h.t().fixed_length() == 5);
  CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kClassNotZero});
  check_round_trip(h);

  SECTION("with checksum, LI 9") {
    auto c = decode(hx("09c000010002c3021234"));
    REQUIRE(c.ok());
    REQUIRE(c.t().params.size() == 1);
    CHECK(c.t().params[0].code == param::kChecksum);
    CHECK_FALSE(has(c.anomalies, AnomalyKind::kParamUnknown));
    check_round_trip(c);
  }
}

TEST_CASE("x224: DT in class 0, normal and extended formats", "[x224]") {
  SECTION("class 0: LI 2, EOT + NR") {
    auto h = decode(hx("02f080010203"));
    REQUIRE(h.ok());
    const Tpdu& t = h.t();
    CHECK(t.type == TpduType::kDT);
    CHECK(t.format == TpduFormat::kClass0);
    CHECK(t.eot == true);
    CHECK(t.nr == 0u);
    CHECK_FALSE(t.dst_ref.has_value());
    CHECK(bv(t.user_data) == ByteVec{1, 2, 3});
    CHECK(t.fixed_length() == 2);
    CHECK(h.anomalies.empty());
    check_round_trip(h);
  }
  SECTION("class 0: EOT with no data is legal (X.224 §6.3.3)") {
    auto h = decode(hx("02f080"));
    REQUIRE(h.ok());
    CHECK(h.t().user_data.empty());
    CHECK(h.anomalies.empty());
  }
  SECTION("class 0: non-EOT with no data is flagged (S7 quirk)") {
    auto h = decode(hx("02f000"));
    REQUIRE(h.ok());
    CHECK(h.t().eot == false);
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kEmptyNonEotDt});
  }
  SECTION("class 0: TPDU-NR != 0 counted, or refused in strict mode") {
    auto h = decode(hx("02f005aa"));
    REQUIRE(h.ok());
    CHECK(h.t().nr == 5u);
    CHECK(h.t().eot == false);
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kTpduNrNonZero});
    auto s = decode(hx("02f005aa"), DecodeOptions{true});
    REQUIRE_FALSE(s.ok());
    CHECK(s.err() == DecodeErrorKind::kTpduNrNonZero);
    CHECK(s.err_offset() == 2);
  }
  SECTION("normal format: LI 4, DST-REF, EOT+NR") {
    auto h = decode(hx("04f0000785aa"));
    REQUIRE(h.ok());
    const Tpdu& t = h.t();
    CHECK(t.format == TpduFormat::kNormal);
    CHECK(t.dst_ref == 7);
    CHECK(t.eot == true);
    CHECK(t.nr == 5u);
    CHECK(bv(t.user_data) == ByteVec{0xAA});
    CHECK(t.fixed_length() == 4);
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kClassNotZero});
    check_round_trip(h);
    // Strict mode only polices class 0 numbering.
    CHECK(decode(hx("04f0000785aa"), DecodeOptions{true}).ok());
  }
  SECTION("normal format with checksum: LI 8") {
    auto h = decode(hx("08f0000705c3021234bb"));
    REQUIRE(h.ok());
    CHECK(h.t().format == TpduFormat::kNormal);
    CHECK(h.t().eot == false);
    REQUIRE(h.t().params.size() == 1);
    CHECK(h.t().params[0].code == 0xC3);
    CHECK(bv(h.t().user_data) == ByteVec{0xBB});
    check_round_trip(h);
  }
  SECTION("extended format: LI 7, 4-octet EOT+NR") {
    auto h = decode(hx("07f0000780000102cc"));
    REQUIRE(h.ok());
    const Tpdu& t = h.t();
    CHECK(t.format == TpduFormat::kExtended);
    CHECK(t.dst_ref == 7);
    CHECK(t.eot == true);
    CHECK(t.nr == 0x102u);
    CHECK(t.fixed_length() == 7);
    CHECK(bv(t.user_data) == ByteVec{0xCC});
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kClassNotZero, AnomalyKind::kExtendedFormat});
    check_round_trip(h);
  }
  SECTION("extended format with checksum: LI 11") {
    auto h = decode(hx("0bf000077fffffffc3020000"));
    REQUIRE(h.ok());
    CHECK(h.t().format == TpduFormat::kExtended);
    CHECK(h.t().eot == false);
    CHECK(h.t().nr == 0x7FFFFFFFu);
    CHECK(h.t().user_data.empty());
    check_round_trip(h);
  }
}

TEST_CASE("x224: ED", "[x224]") {
  SECTION("RFC 1006 form: LI 2") {
    auto h = decode(hx("021080aa"));
    REQUIRE(h.ok());
    CHECK(h.t().type == TpduType::kED);
    CHECK(h.t().format == TpduFormat::kClass0);
    CHECK(h.t().eot == true);
    CHECK(bv(h.t().user_data) == ByteVec{0xAA});
    CHECK(h.anomalies.empty());
    check_round_trip(h);
    auto nr = decode(hx("021083aa"));
    REQUIRE(nr.ok());
    CHECK(has(nr.anomalies, AnomalyKind::kTpduNrNonZero));
    CHECK_FALSE(decode(hx("021083aa"), DecodeOptions{true}).ok());
  }
  SECTION("RFC 1006 form: 1 to 16 octets of user data") {
    CHECK(decode(hx("021080" + std::string(32, 'b'))).anomalies.empty());  // 16 octets
    for (const std::string& data : {std::string(), std::string(34, 'b')}) {  // none, 17
      auto h = decode(hx("021080" + data));
      INFO(data.size() / 2 << " octets");
      REQUIRE(h.ok());
      CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kEdDataLength});
      REQUIRE(h.anomalies.size() == 1);
      CHECK(h.anomalies[0].detail ==
            "ED with " + std::to_string(data.size() / 2) + " octets of user data (RFC 1006 §5: 1 to 16)");
    }
  }
  SECTION("normal: LI 4") {
    auto h = decode(hx("0410000781aa"));
    REQUIRE(h.ok());
    CHECK(h.t().format == TpduFormat::kNormal);
    CHECK(h.t().dst_ref == 7);
    CHECK(h.t().nr == 1u);
    CHECK(has(h.anomalies, AnomalyKind::kClassNotZero));
    check_round_trip(h);
  }
  SECTION("extended: LI 7") {
    auto h = decode(hx("071000078000000daa"));
    REQUIRE(h.ok());
    CHECK(h.t().format == TpduFormat::kExtended);
    CHECK(h.t().nr == 13u);
    CHECK(has(h.anomalies, AnomalyKind::kExtendedFormat));
    check_round_trip(h);
  }
  SECTION("any other LI is invalid") {
    for (const char* bad : {"031080aaaa", "0510000780aaaa", "0910000780aaaaaaaaaa"}) {
      INFO(bad);
      auto h = decode(hx(bad));
      REQUIRE_FALSE(h.ok());
      CHECK(h.err() == DecodeErrorKind::kLiInvalid);
    }
  }
}

TEST_CASE("x224: AK", "[x224]") {
  SECTION("normal: LI 4, CDT in the low nibble") {
    auto h = decode(hx("0463000705"));
    REQUIRE(h.ok());
    const Tpdu& t = h.t();
    CHECK(t.type == TpduType::kAK);
    CHECK(t.format == TpduFormat::kNormal);
    CHECK(t.cdt == 3);
    CHECK(t.dst_ref == 7);
    CHECK(t.nr == 5u);
    CHECK_FALSE(t.credit.has_value());
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kClassNotZero});
    CHECK_FALSE(has(h.anomalies, AnomalyKind::kCodeLowNibble));  // the low nibble is a credit
    check_round_trip(h);
  }
  SECTION("normal with a subsequence number: LI 8 (even)") {
    auto h = decode(hx("08610007058a020001"));
    REQUIRE(h.ok());
    CHECK(h.t().format == TpduFormat::kNormal);
    REQUIRE(h.t().params.size() == 1);
    CHECK(h.t().params[0].code == 0x8A);
    CHECK_FALSE(has(h.anomalies, AnomalyKind::kParamUnknown));
    check_round_trip(h);
  }
  SECTION("extended: LI 9, 4-octet NR, 2-octet credit") {
    auto h = decode(hx("096000070000000900ff"));
    REQUIRE(h.ok());
    const Tpdu& t = h.t();
    CHECK(t.format == TpduFormat::kExtended);
    CHECK(t.nr == 9u);
    CHECK(t.credit == 0xFF);
    CHECK(t.fixed_length() == 9);
    CHECK(has(h.anomalies, AnomalyKind::kExtendedFormat));
    check_round_trip(h);
  }
  SECTION("a header-only TPDU keeps extra octets as trailing, flagged") {
    auto h = decode(hx("0460000705dead"));
    REQUIRE(h.ok());
    CHECK(bv(h.t().trailing) == ByteVec{0xDE, 0xAD});
    CHECK(h.t().user_data.empty());
    CHECK(has(h.anomalies, AnomalyKind::kTrailingBytes));
    check_round_trip(h);
  }
}

TEST_CASE("x224: EA", "[x224]") {
  auto n = decode(hx("0420000705"));
  REQUIRE(n.ok());
  CHECK(n.t().type == TpduType::kEA);
  CHECK(n.t().format == TpduFormat::kNormal);
  CHECK(n.t().nr == 5u);
  CHECK(n.t().dst_ref == 7);
  CHECK(has(n.anomalies, AnomalyKind::kClassNotZero));
  check_round_trip(n);
  auto e = decode(hx("072000078000000a"));
  REQUIRE(e.ok());
  CHECK(e.t().format == TpduFormat::kExtended);
  CHECK(e.t().nr == 10u);
  check_round_trip(e);
  auto c = decode(hx("0820000705c3020000"));  // normal + checksum
  REQUIRE(c.ok());
  CHECK(c.t().format == TpduFormat::kNormal);
  CHECK(c.t().params.size() == 1);
}

TEST_CASE("x224: RJ", "[x224]") {
  auto n = decode(hx("0452000705"));
  REQUIRE(n.ok());
  CHECK(n.t().type == TpduType::kRJ);
  CHECK(n.t().format == TpduFormat::kNormal);
  CHECK(n.t().cdt == 2);
  CHECK(n.t().nr == 5u);
  check_round_trip(n);
  auto e = decode(hx("09500007000000050002"));
  REQUIRE(e.ok());
  CHECK(e.t().format == TpduFormat::kExtended);
  CHECK(e.t().nr == 5u);
  CHECK(e.t().credit == 2);
  check_round_trip(e);
}

TEST_CASE("x224: ER", "[x224]") {
  SECTION("minimal: LI 4") {
    auto h = decode(hx("0470000702"));
    REQUIRE(h.ok());
    CHECK(h.t().type == TpduType::kER);
    CHECK(h.t().dst_ref == 7);
    CHECK(h.t().cause == 2);
    CHECK_FALSE(h.t().src_ref.has_value());
    CHECK(h.anomalies.empty());
    check_round_trip(h);
  }
  SECTION("with the invalid TPDU (0xC1), LI 9 (the KB Q123824 ER)") {
    auto h = decode(hx("0970001a00c10302f080"));
    REQUIRE(h.ok());
    const Param* p = h.t().find(param::kInvalidTpdu);
    REQUIRE(p != nullptr);
    CHECK(bv(p->value) == ByteVec{0x02, 0xF0, 0x80});
    CHECK(param_name(TpduType::kER, 0xC1) == "invalid-tpdu");
    CHECK_FALSE(h.t().calling_tsap().has_value());  // 0xC1 in an ER is not a TSAP
    CHECK(h.anomalies.empty());
    check_round_trip(h);
  }
  SECTION("octets after the header are trailing, flagged") {
    auto h = decode(hx("047000070000"));
    REQUIRE(h.ok());
    CHECK(bv(h.t().trailing) == ByteVec{0x00});
    CHECK(has(h.anomalies, AnomalyKind::kTrailingBytes));
    check_round_trip(h);
  }
}

// ---------------------------------------------------------------------------
// LI and type errors

TEST_CASE("x224: LI rules", "[x224]") {
  SECTION("no bytes") {
    ByteVec none;
    auto r = decode_tpdu(Bytes(none));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind == DecodeErrorKind::kEmpty);
  }
  SECTION("LI 0") {
    auto h = decode(hx("00f080"));
    REQUIRE_FALSE(h.ok());
    CHECK(h.err() == DecodeErrorKind::kLiZero);
  }
  SECTION("LI 255 is reserved") {
    ByteVec b(256, 0x00);
    b[0] = 0xFF;
    b[1] = 0xE0;
    auto h = decode(b);
    REQUIRE_FALSE(h.ok());
    CHECK(h.err() == DecodeErrorKind::kLiReserved);
  }
  SECTION("LI runs past the TPDU") {
    auto h = decode(hx("06e000000001"));
    REQUIRE_FALSE(h.ok());
    CHECK(h.err() == DecodeErrorKind::kLiOverrun);
    auto one = decode(hx("02"));
    REQUIRE_FALSE(one.ok());
    CHECK(one.err() == DecodeErrorKind::kLiOverrun);
  }
  SECTION("LI exactly fills the TPDU") {
    CHECK(decode(hx("06e00000000100")).ok());
  }
  SECTION("LI 254, the largest allowed, with parameters filling it") {
    ByteVec b{0xFE, 0xE0, 0x00, 0x00, 0x00, 0x01, 0x00};
    // 248 octets of variable part: 0xC5 (protection) 246 octets.
    b.push_back(0xC5);
    b.push_back(246);
    b.insert(b.end(), 246, 0x42);
    REQUIRE(b.size() == 255);
    auto h = decode(b);
    REQUIRE(h.ok());
    CHECK(h.t().li == 254);
    CHECK(h.t().params.size() == 1);
    CHECK(has(h.anomalies, AnomalyKind::kCrTooLong));
    check_round_trip(h);
  }
  SECTION("LI below the fixed part") {
    for (const char* bad : {"05e0000000000100", "05d000000000", "05800000000000", "0370000000", "04c000000000",
                            "03600007", "03200007", "03500007"}) {
      INFO(bad);
      auto h = decode(hx(bad));
      REQUIRE_FALSE(h.ok());
      CHECK(h.err() == DecodeErrorKind::kLiTooShort);
    }
  }
  SECTION("DT LI other than 2/4/7/8/11 is invalid") {
    for (std::uint8_t li : {1, 3, 5, 6, 9, 10, 12, 20, 254}) {
      INFO("LI " << int(li));
      ByteVec b(li + 1u, 0x00);
      b[0] = li;
      b[1] = 0xF0;
      auto h = decode(b);
      REQUIRE_FALSE(h.ok());
      CHECK(h.err() == DecodeErrorKind::kLiInvalid);
    }
  }
}

TEST_CASE("x224: unknown type nibbles", "[x224]") {
  std::set<std::uint8_t> known{0x1, 0x2, 0x5, 0x6, 0x7, 0x8, 0xC, 0xD, 0xE, 0xF};
  for (std::uint8_t n = 0; n < 16; ++n) {
    INFO("type nibble " << int(n));
    ByteVec b{0x06, static_cast<std::uint8_t>(n << 4), 0, 0, 0, 0, 0};
    auto h = decode(b);
    if (known.count(n)) {
      if (!h.ok()) CHECK(h.err() != DecodeErrorKind::kUnknownType);
      CHECK(tpdu_type_name(static_cast<TpduType>(n)).size() == 2);
      CHECK_FALSE(tpdu_type_long_name(static_cast<TpduType>(n)).empty());
    } else {
      REQUIRE_FALSE(h.ok());
      CHECK(h.err() == DecodeErrorKind::kUnknownType);
      CHECK(h.err_offset() == 1);
    }
  }
  auto ud = decode(hx("06400000000000"));
  REQUIRE_FALSE(ud.ok());
  CHECK_THAT(ud.r->error().detail, Catch::Contains("UD"));
  CHECK(tpdu_type_name(TpduType::kCR) == "CR");
  CHECK(tpdu_type_long_name(TpduType::kCR) == "Connection Request");
}

// ---------------------------------------------------------------------------
// Parameters

TEST_CASE("x224: parameter overrun and stray octet", "[x224]") {
  SECTION("length runs past LI (N3 shape)") {
    auto h = decode(hx("0ae00000000100c1030102"));
    REQUIRE_FALSE(h.ok());
    CHECK(h.err() == DecodeErrorKind::kParamOverrun);
    CHECK(h.err_offset() == 7);
  }
  SECTION("length runs past LI into user data: still an overrun, LI is the bound") {
    auto h = decode(hx("0ae00000000100c1030102ffff"));
    REQUIRE_FALSE(h.ok());
    CHECK(h.err() == DecodeErrorKind::kParamOverrun);
  }
  SECTION("a stray octet at the end of the variable part") {
    auto h = decode(hx("07e00000000100c0"));
    REQUIRE_FALSE(h.ok());
    CHECK(h.err() == DecodeErrorKind::kParamOverrun);
    CHECK(h.err_offset() == 7);
    CHECK_THAT(h.r->error().detail, Catch::Contains("stray"));
  }
  SECTION("a stray octet after a good parameter") {
    auto h = decode(hx("0ae00000000100c0010ac1"));
    REQUIRE_FALSE(h.ok());
    CHECK(h.err() == DecodeErrorKind::kParamOverrun);
    CHECK(h.err_offset() == 10);
  }
  SECTION("a zero-length parameter is fine") {
    auto h = decode(hx("08e00000000100c600"));
    REQUIRE(h.ok());
    REQUIRE(h.t().params.size() == 1);
    CHECK(h.t().params[0].value.empty());
    CHECK(has(h.anomalies, AnomalyKind::kParamBadLength));  // 0xC6 must be 1 octet
  }
}

TEST_CASE("x224: duplicate parameter: anomaly, both kept", "[x224]") {
  auto h = decode(hx("0ee00000000100c1020001c1020002"));
  REQUIRE(h.ok());
  REQUIRE(h.t().params.size() == 2);
  CHECK(bv(h.t().params[0].value) == ByteVec{0x00, 0x01});
  CHECK(bv(h.t().params[1].value) == ByteVec{0x00, 0x02});
  CHECK(bv(*h.t().calling_tsap()) == ByteVec{0x00, 0x01});  // first occurrence
  CHECK(bv(h.t().find(0xC1)->value) == ByteVec{0x00, 0x01});
  CHECK(std::count_if(h.anomalies.begin(), h.anomalies.end(),
                      [](const Anomaly& a) { return a.kind == AnomalyKind::kParamDuplicate; }) == 1);
  CHECK_THAT(h.anomalies[0].detail, Catch::Contains("0xC1"));
  check_round_trip(h);
}

TEST_CASE("x224: unknown parameter kept and skipped", "[x224]") {
  auto h = decode(hx("0fe00000000100ab03010203c2020102"));
  REQUIRE(h.ok());
  REQUIRE(h.t().params.size() == 2);
  CHECK(h.t().params[0].code == 0xAB);
  CHECK(bv(h.t().params[0].value) == ByteVec{1, 2, 3});
  CHECK(bv(*h.t().called_tsap()) == ByteVec{0x01, 0x02});
  REQUIRE(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kParamUnknown});
  CHECK_THAT(h.anomalies[0].detail, Catch::Contains("0xAB"));
  check_round_trip(h);

  SECTION("codes are per type: 0xC1 is unknown in a DR, 0xE0 unknown in a CR") {
    auto dr = decode(hx("0a800001000200c1020001"));
    REQUIRE(dr.ok());
    CHECK(has(dr.anomalies, AnomalyKind::kParamUnknown));
    auto cr = decode(hx("09e00000000100e00180"));
    REQUIRE(cr.ok());
    CHECK(has(cr.anomalies, AnomalyKind::kParamUnknown));
  }
  SECTION("names") {
    CHECK(param_name(TpduType::kCR, 0xC0) == "tpdu-size");
    CHECK(param_name(TpduType::kCC, 0xC1) == "calling-tsap");
    CHECK(param_name(TpduType::kCC, 0xC2) == "called-tsap");
    CHECK(param_name(TpduType::kCR, 0xC7) == "alternative-classes");
    CHECK(param_name(TpduType::kDT, 0xC3) == "checksum");
    CHECK(param_name(TpduType::kDR, 0xE0) == "additional-clearing-info");
    CHECK(param_name(TpduType::kCR, 0xAB).empty());
  }
}

TEST_CASE("x224: TPDU size codes", "[x224]") {
  struct Row {
    std::uint8_t code;
    std::uint32_t octets;
  };
  const Row table[] = {{0x07, 128},  {0x08, 256},  {0x09, 512},   {0x0A, 1024},  {0x0B, 2048},
                       {0x0C, 4096}, {0x0D, 8192}, {0x0E, 16384}, {0x0F, 32768}, {0x10, 65531}};
  for (const Row& r : table) CHECK(tpdu_size_octets(r.code) == r.octets);
  for (int c = 0; c < 256; ++c) {
    if (c >= 0x07 && c <= 0x10) continue;
    INFO("code " << c);
    CHECK_FALSE(tpdu_size_octets(static_cast<std::uint8_t>(c)).has_value());
  }

  for (int c = 0; c < 256; ++c) {
    const auto code = static_cast<std::uint8_t>(c);
    INFO("class 0 CR with TPDU size code " << c);
    auto h = decode(cr_with_size(code));
    REQUIRE(h.ok());
    CHECK(h.t().tpdu_size_code() == code);
    const bool defined = c >= 0x07 && c <= 0x10;
    const bool nonstandard = !defined || c >= 0x0E;
    const bool over_class0 = defined && c >= 0x0C;
    CHECK(has(h.anomalies, AnomalyKind::kTpduSizeNonStandard) == nonstandard);
    CHECK(has(h.anomalies, AnomalyKind::kTpduSizeOverClass0) == over_class0);
    std::size_t expected_count = (nonstandard ? 1 : 0) + (over_class0 ? 1 : 0);
    CHECK(h.anomalies.size() == expected_count);
  }
  SECTION("the code is named in two hex digits, whatever its value") {
    for (auto [code, text] : {std::pair{0x00, "0x00"}, std::pair{0x05, "0x05"}, std::pair{0xFF, "0xFF"}}) {
      auto h = decode(cr_with_size(static_cast<std::uint8_t>(code)));
      REQUIRE(h.ok());
      REQUIRE(has(h.anomalies, AnomalyKind::kTpduSizeNonStandard));
      CHECK_THAT(h.anomalies[0].detail, Catch::Contains(std::string("TPDU size code ") + text + " is undefined"));
    }
  }
  SECTION("above 2048 is fine outside class 0") {
    auto h = decode(cr_with_size(0x0D, 0x20));
    REQUIRE(h.ok());
    CHECK(h.t().preferred_class() == 2);
    CHECK_FALSE(has(h.anomalies, AnomalyKind::kTpduSizeOverClass0));
    CHECK(has(h.anomalies, AnomalyKind::kClassNotZero));
  }
  SECTION("wrong parameter length") {
    auto h = decode(hx("0ae00000000100c0020a0b"));
    REQUIRE(h.ok());
    CHECK(has(h.anomalies, AnomalyKind::kParamBadLength));
    CHECK_FALSE(h.t().tpdu_size_code().has_value());
  }
}

// ---------------------------------------------------------------------------
// DR reasons, ER causes

TEST_CASE("x224: DR reasons", "[x224]") {
  const std::set<int> named{0x00, 0x01, 0x02, 0x03, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x87, 0x88, 0x8A};
  for (int r = 0; r < 256; ++r) {
    const auto reason = static_cast<std::uint8_t>(r);
    INFO("reason " << r);
    const auto name = dr_reason_name(reason);
    CHECK(name.has_value() == (named.count(r) == 1));
    CHECK(dr_reason_is_class0(reason) == (r <= 3));
    auto h = decode(ByteVec{0x06, 0x80, 0x00, 0x01, 0x00, 0x00, reason});
    REQUIRE(h.ok());
    CHECK(h.t().reason == reason);
    CHECK(has(h.anomalies, AnomalyKind::kDrReasonUnknown) == !name.has_value());
    CHECK(has(h.anomalies, AnomalyKind::kDrReasonNotClass0) == (name.has_value() && r > 3));
    CHECK(h.anomalies.size() == (r <= 3 ? 0u : 1u));
  }
  CHECK(dr_reason_name(0x00) == "reason not specified");
  CHECK(dr_reason_name(0x03) == "address unknown");
  CHECK(dr_reason_name(0x80) == "normal disconnect initiated by session entity");
  // ISO 8073 numbering, not snap7's (protocol.md §4).
  CHECK(dr_reason_name(0x82) == "connection negotiation failed");
  CHECK(dr_reason_name(0x85) == "protocol error");
  CHECK(dr_reason_name(0x8A) == "header or parameter length invalid");
  CHECK_FALSE(dr_reason_name(0x86).has_value());
  CHECK_FALSE(dr_reason_name(0x89).has_value());
  CHECK_FALSE(dr_reason_name(0x04).has_value());
  CHECK_FALSE(dr_reason_name(0x8B).has_value());
  CHECK_FALSE(dr_reason_name(200).has_value());
}

TEST_CASE("x224: ER causes", "[x224]") {
  for (int c = 0; c < 256; ++c) {
    const auto cause = static_cast<std::uint8_t>(c);
    INFO("cause " << c);
    CHECK(er_cause_name(cause).has_value() == (c <= 3));
    auto h = decode(ByteVec{0x04, 0x70, 0x00, 0x01, cause});
    REQUIRE(h.ok());
    CHECK(h.t().cause == cause);
    CHECK(has(h.anomalies, AnomalyKind::kErCauseUnknown) == (c > 3));
  }
  CHECK(er_cause_name(0) == "reason not specified");
  CHECK(er_cause_name(1) == "invalid parameter code");
  CHECK(er_cause_name(2) == "invalid TPDU type");
  CHECK(er_cause_name(3) == "invalid parameter value");
}

// ---------------------------------------------------------------------------
// Other anomalies

TEST_CASE("x224: anomalies", "[x224]") {
  SECTION("CDT in a class 0 CR") {
    auto h = decode(hx("06e10000000100"));
    REQUIRE(h.ok());
    CHECK(h.t().cdt == 1);
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kCdtNonZero});
  }
  SECTION("CDT is fine in class 2") {
    auto h = decode(hx("06e10000000120"));
    REQUIRE(h.ok());
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kClassNotZero});
  }
  SECTION("low nibble on a DR or DT") {
    auto dr = decode(hx("06810001000200"));
    REQUIRE(dr.ok());
    CHECK(kinds(dr.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kCodeLowNibble});
    auto dt = decode(hx("02f180aa"));
    REQUIRE(dt.ok());
    CHECK(dt.t().type == TpduType::kDT);
    CHECK(kinds(dt.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kCodeLowNibble});
  }
  SECTION("DST-REF in a CR") {
    auto h = decode(hx("06e00005000100"));
    REQUIRE(h.ok());
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kDstRefInCr});
  }
  SECTION("class 5 and class 1") {
    auto c5 = decode(hx("06e00000000150"));
    REQUIRE(c5.ok());
    CHECK(c5.t().preferred_class() == 5);
    CHECK(kinds(c5.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kClassUndefined});
    auto c1 = decode(hx("06d00001000210"));
    REQUIRE(c1.ok());
    CHECK(kinds(c1.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kClassNotZero});
  }
  SECTION("user data in a class 0 CR/CC") {
    auto h = decode(hx("06e00000000100010203"));
    REQUIRE(h.ok());
    CHECK(bv(h.t().user_data) == ByteVec{1, 2, 3});
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kUserDataInClass0});
  }
  SECTION("CR over 128 octets") {
    ByteVec b = hx("06e00000000120");  // class 2: user data allowed
    b.insert(b.end(), 122, 0x55);      // 129 octets
    auto h = decode(b);
    REQUIRE(h.ok());
    CHECK(has(h.anomalies, AnomalyKind::kCrTooLong));
    b.pop_back();  // 128: fine
    auto ok = decode(b);
    REQUIRE(ok.ok());
    CHECK_FALSE(has(ok.anomalies, AnomalyKind::kCrTooLong));
  }
  SECTION("TSAP lengths 0 and 33") {
    auto z = decode(hx("08e00000000100c100"));
    REQUIRE(z.ok());
    CHECK(has(z.anomalies, AnomalyKind::kTsapLength));
    ByteVec b = hx("29e00000000100c221");
    b.insert(b.end(), 33, 0x41);
    auto l = decode(b);
    REQUIRE(l.ok());
    CHECK(has(l.anomalies, AnomalyKind::kTsapLength));
    b = hx("28e00000000100c220");
    b.insert(b.end(), 32, 0x41);
    auto ok = decode(b);
    REQUIRE(ok.ok());
    CHECK(ok.anomalies.empty());
  }
  SECTION("bad fixed-length parameters") {
    for (const char* bad : {"0ae00000000100c6020000", "0ae00000000100c4020101", "09e00000000100c30100",
                            "0de00000000100f0050000000001"}) {
      INFO(bad);
      auto h = decode(hx(bad));
      REQUIRE(h.ok());
      CHECK(has(h.anomalies, AnomalyKind::kParamBadLength));
    }
    for (const char* good : {"09e00000000100c40101", "0ae00000000100c3021234", "0ae00000000100f0020010"}) {
      INFO(good);
      auto h = decode(hx(good));
      REQUIRE(h.ok());
      CHECK_FALSE(has(h.anomalies, AnomalyKind::kParamBadLength));
    }
  }
  SECTION("additional options: reverse connection (bit 4)") {
    auto h = decode(hx("09e00000000100c60108"));
    REQUIRE(h.ok());
    CHECK(has(h.anomalies, AnomalyKind::kReverseConnection));
    auto ed = decode(hx("09e00000000100c60101"));  // expedited data only
    REQUIRE(ed.ok());
    CHECK(ed.anomalies.empty());
  }
  SECTION("DR user data over 64 octets") {
    ByteVec b = hx("06800001000200");
    b.insert(b.end(), 65, 0x00);
    auto h = decode(b);
    REQUIRE(h.ok());
    CHECK(kinds(h.anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kDrDataTooLong});
    b.pop_back();
    CHECK(decode(b).anomalies.empty());
  }
  SECTION("alternative classes (V18 shape)") {
    auto h = decode(hx("15E00000000000C00108C703001030AB0548656C6C6F010203"));
    REQUIRE(h.ok());
    const Param* p = h.t().find(param::kAlternativeClasses);
    REQUIRE(p != nullptr);
    CHECK(bv(p->value) == ByteVec{0x00, 0x10, 0x30});
    CHECK(h.t().tpdu_size_code() == 0x08);
    CHECK(bv(h.t().user_data) == ByteVec{1, 2, 3});
  }
}

TEST_CASE("x224: names are stable and distinct", "[x224]") {
  std::set<std::string> seen;
  for (std::size_t k = 0; k < kAnomalyKinds; ++k) {
    const auto n = std::string(anomaly_name(static_cast<AnomalyKind>(k)));
    INFO("anomaly " << k);
    CHECK_FALSE(n.empty());
    CHECK(n != "unknown");
    CHECK(seen.insert(n).second);
  }
  seen.clear();
  for (std::size_t k = 0; k < kDecodeErrorKinds; ++k) {
    const auto n = std::string(decode_error_name(static_cast<DecodeErrorKind>(k)));
    INFO("decode error " << k);
    CHECK(n != "unknown");
    CHECK(seen.insert(n).second);
  }
  CHECK(anomaly_name(AnomalyKind::kReservedNonZero) == "reserved-nonzero");
  CHECK(anomaly_name(AnomalyKind::kTpduNrNonZero) == "tpdu-nr-nonzero");
  CHECK(anomaly_name(AnomalyKind::kEmptyNonEotDt) == "empty-non-eot-dt");
  CHECK(decode_error_name(DecodeErrorKind::kParamOverrun) == "param-overrun");
  CHECK(tpdu_format_name(TpduFormat::kClass0) == "class 0");
  CHECK(tpdu_format_name(TpduFormat::kNormal) == "normal");
  CHECK(tpdu_format_name(TpduFormat::kExtended) == "extended");
}

// ---------------------------------------------------------------------------
// decode_frame

TEST_CASE("x224: decode_frame checks the TPKT header too", "[x224]") {
  SECTION("clean") {
    const ByteVec f = hx("0300000702f080");
    auto r = decode_frame(Bytes(f));
    REQUIRE(r.ok());
    CHECK(r->header.version == 3);
    CHECK(r->header.length == 7);
    CHECK(r->raw.data() == f.data());
    CHECK(r->tpdu.bytes.data() == f.data() + 4);  // a view, no copy
    CHECK(r->anomalies.empty());
  }
  SECTION("reserved byte non-zero is an anomaly, not an error") {
    const ByteVec f = hx("0311000702f080");
    auto r = decode_frame(Bytes(f));
    REQUIRE(r.ok());
    CHECK(r->header.reserved == 0x11);
    CHECK(kinds(r->anomalies) == std::multiset<AnomalyKind>{AnomalyKind::kReservedNonZero});
    CHECK_THAT(r->anomalies[0].detail, Catch::Contains("0x11"));
  }
  for (const char* bad : {"030000", "0400000702f080", "0300000602f0", "0300000802f080", "0300000702f08000"}) {
    DYNAMIC_SECTION("framer-level error: " << bad) {
      const ByteVec f = hx(bad);
      auto r = decode_frame(Bytes(f));
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().kind == DecodeErrorKind::kFramer);
    }
  }
  SECTION("max_length") {
    const ByteVec f = hx("0300000902f080aabb");
    CHECK(decode_frame(Bytes(f), {}, 9).ok());
    auto r = decode_frame(Bytes(f), {}, 8);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind == DecodeErrorKind::kFramer);
  }
  SECTION("TPDU errors come through") {
    const ByteVec f = hx("0300000700f080");
    auto r = decode_frame(Bytes(f));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind == DecodeErrorKind::kLiZero);
  }
}

TEST_CASE("x224: clean real frames have no anomalies", "[x224][vectors]") {
  const auto rows = isoproxy::test::load_vectors();
  for (const char* id : {"V2", "V3", "V4", "V5", "V6", "V7", "V8", "V9a", "V9b", "V10", "V10r", "V15", "V16a"}) {
    INFO(id);
    const ByteVec bytes = isoproxy::test::find_vector(rows, id).bytes();
    auto r = decode_frame(Bytes(bytes));
    REQUIRE(r.ok());
    INFO(names(r->anomalies));
    CHECK(r->anomalies.empty());
  }
  for (const char* id : {"V17a", "V17b"}) {
    INFO(id);
    auto h = decode(isoproxy::test::find_vector(rows, id).bytes());
    REQUIRE(h.ok());
    CHECK(h.anomalies.empty());
  }
  SECTION("and the ones that are not clean say why") {
    const auto anomalies_of = [&rows](const char* id) {
      const ByteVec bytes = isoproxy::test::find_vector(rows, id).bytes();
      auto r = decode_frame(Bytes(bytes));
      REQUIRE(r.ok());
      return kinds(r->anomalies);
    };
    CHECK(anomalies_of("V1") == std::multiset<AnomalyKind>{AnomalyKind::kReservedNonZero});
    CHECK(anomalies_of("V16b") == std::multiset<AnomalyKind>{AnomalyKind::kReservedNonZero});
    CHECK(anomalies_of("V11") == std::multiset<AnomalyKind>{AnomalyKind::kEmptyNonEotDt});
    CHECK(anomalies_of("V14") == std::multiset<AnomalyKind>{AnomalyKind::kDrReasonNotClass0});
    CHECK(anomalies_of("N1") == std::multiset<AnomalyKind>{AnomalyKind::kDrReasonUnknown});
    CHECK(anomalies_of("N2") == std::multiset<AnomalyKind>{AnomalyKind::kClassUndefined});
    CHECK(anomalies_of("V13").empty());
  }
}

TEST_CASE("x224: a CR concatenated after a TPDU without user data is found as Wireshark reads it", "[x224]") {
  const auto concat_bytes = [](std::initializer_list<ByteVec> parts) {
    ByteVec out;
    for (const ByteVec& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  };
  const ByteVec cr = hx("11e00000000100c1020100c2020999c0010a");
  // ER (LI 4) then the CR: the ER's trailing octets.
  auto h = decode(concat_bytes({hx("0470000000"), cr}));
  REQUIRE(h.ok());
  CHECK(bv(h.t().trailing) == cr);
  CHECK(trailing_holds_cr(h.t().trailing));
  // Behind a further header-only TPDU (an AK, LI 4), and whatever its credit nibble.
  CHECK(trailing_holds_cr(concat_bytes({hx("0461000001"), cr})));
  ByteVec credit = cr;
  credit[1] = 0xE3;
  CHECK(trailing_holds_cr(credit));
  // Not a CR, or not read as one: a DT or DR takes the rest as user data, an LI of 0
  // stops, and a lone octet is no TPDU.
  CHECK_FALSE(trailing_holds_cr(hx("0461000001")));
  CHECK_FALSE(trailing_holds_cr(concat_bytes({hx("02f080"), cr})));
  CHECK_FALSE(trailing_holds_cr(concat_bytes({hx("0680000000000003"), cr})));
  CHECK_FALSE(trailing_holds_cr(concat_bytes({hx("00e0"), cr})));
  CHECK_FALSE(trailing_holds_cr(hx("e0")));
  CHECK_FALSE(trailing_holds_cr({}));
}
