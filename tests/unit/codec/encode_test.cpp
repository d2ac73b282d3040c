// Re-encoding and editing: in place (same length) and length-changing.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "codec/encode.h"
#include "codec/text.h"
#include "codec/x224.h"
#include "support/vectors.h"

namespace {

using namespace isoproxy::codec;
using ByteVec = std::vector<std::uint8_t>;

ByteVec bv(Bytes b) { return ByteVec(b.begin(), b.end()); }
ByteVec ascii(const std::string& s) { return ByteVec(s.begin(), s.end()); }
ByteVec hx(const char* text) { return *parse_hex(text); }

const std::vector<isoproxy::test::Vector>& rows() {
  static const auto r = isoproxy::test::load_vectors();
  return r;
}
ByteVec row_bytes(const char* id) { return isoproxy::test::find_vector(rows(), id).bytes(); }

std::size_t differing(const ByteVec& a, const ByteVec& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) n += a[i] != b[i];
  return n;
}

}  // namespace

TEST_CASE("encode: in-place reserved repair", "[encode]") {
  const ByteVec v1 = row_bytes("V1");
  REQUIRE(v1[1] == 0x11);
  ByteVec fixed = v1;
  set_reserved(MutableBytes(fixed), 0x00);
  CHECK(fixed.size() == v1.size());
  CHECK(fixed[1] == 0x00);
  CHECK(differing(fixed, v1) == 1);
  CHECK(ByteVec(fixed.begin() + 2, fixed.end()) == ByteVec(v1.begin() + 2, v1.end()));
  CHECK(fixed == row_bytes("V2"));
  auto d = decode_frame(Bytes(fixed));
  REQUIRE(d.ok());
  CHECK(d->header.reserved == 0);
  CHECK(d->anomalies.empty());
  // Idempotent, and any value can be written.
  set_reserved(MutableBytes(fixed), 0x00);
  CHECK(fixed == row_bytes("V2"));
  set_reserved(MutableBytes(fixed), 0xFF);
  CHECK(fixed[1] == 0xFF);
  CHECK(differing(fixed, v1) == 1);
}

TEST_CASE("encode: replace_param_value_in_place", "[encode]") {
  ByteVec frame = row_bytes("V1");
  const ByteVec original = frame;
  auto d = decode_frame(Bytes(frame));
  REQUIRE(d.ok());
  const Param* called = d->tpdu.find(param::kCalledTsap);
  REQUIRE(called != nullptr);
  const Param called_copy = *called;  // the decode views `frame`; keep the offsets

  SECTION("same length: only the value bytes change") {
    const ByteVec value = ascii("EXCHANGETSAP2");
    REQUIRE(value.size() == called_copy.value.size());
    CHECK(replace_param_value_in_place(MutableBytes(frame), called_copy, Bytes(value)));
    CHECK(frame.size() == original.size());
    CHECK(differing(frame, original) == 1);  // "...TSAP1" -> "...TSAP2"
    auto again = decode_frame(Bytes(frame));
    REQUIRE(again.ok());
    CHECK(bv(*again->tpdu.called_tsap()) == value);
    CHECK(bv(*again->tpdu.calling_tsap()) == ascii("SWISSLIFETSAP"));
    CHECK(again->tpdu.li == 39);
    CHECK(again->header.length == 44);
  }
  SECTION("a whole different value of the same length") {
    const ByteVec value = ascii("ABCDEFGHIJKLM");
    CHECK(replace_param_value_in_place(MutableBytes(frame), called_copy, Bytes(value)));
    auto again = decode_frame(Bytes(frame));
    REQUIRE(again.ok());
    CHECK(bv(*again->tpdu.called_tsap()) == value);
    CHECK(again->tpdu.tpdu_size_code() == 0x0B);
  }
  SECTION("different length: refused, nothing changed") {
    for (const std::string& s : {std::string("EXCHANGE"), std::string("EXCHANGETSAP12"), std::string()}) {
      INFO("value \"" << s << "\"");
      const ByteVec value = ascii(s);
      CHECK_FALSE(replace_param_value_in_place(MutableBytes(frame), called_copy, Bytes(value)));
      CHECK(frame == original);
    }
  }
  SECTION("a buffer too short for the parameter: refused, nothing changed") {
    ByteVec shorter(frame.begin(), frame.begin() + 30);
    const ByteVec before = shorter;
    const ByteVec value = ascii("EXCHANGETSAP2");
    CHECK_FALSE(replace_param_value_in_place(MutableBytes(shorter), called_copy, Bytes(value)));
    CHECK(shorter == before);
  }
  SECTION("the one-octet TPDU size") {
    const Param size = *d->tpdu.find(param::kTpduSize);
    const ByteVec value{0x0A};
    CHECK(replace_param_value_in_place(MutableBytes(frame), size, Bytes(value)));
    CHECK(frame.back() == 0x0A);
    CHECK(differing(frame, original) == 1);
  }
}

TEST_CASE("encode: OwnedTpdu::from keeps everything", "[encode]") {
  const ByteVec v1 = row_bytes("V1");
  auto d = decode_frame(Bytes(v1));
  REQUIRE(d.ok());
  OwnedTpdu o = OwnedTpdu::from(d->tpdu);
  CHECK(o.code == 0xD0);
  CHECK(o.fixed == ByteVec{0x01, 0xCA, 0x00, 0x29, 0x00});
  REQUIRE(o.params.size() == 3);
  CHECK(o.params[0].code == 0xC1);
  CHECK(o.params[1].code == 0xC2);
  CHECK(o.params[2].code == 0xC0);
  CHECK(o.params[0].value == ascii("SWISSLIFETSAP"));
  CHECK(o.data.empty());
  REQUIRE(o.find(0xC0) != nullptr);
  CHECK(o.find(0xC0)->value == ByteVec{0x0B});
  CHECK(o.find(0xC5) == nullptr);
  auto enc = encode_frame(0x11, o);
  REQUIRE(enc.ok());
  CHECK(*enc == v1);
  auto repaired = encode_frame(0x00, o);
  REQUIRE(repaired.ok());
  CHECK(*repaired == row_bytes("V2"));

  SECTION("DT: fixed part and user data") {
    const ByteVec dt = hx("02f08032010000");
    auto t = decode_tpdu(Bytes(dt));
    REQUIRE(t.ok());
    const OwnedTpdu od = OwnedTpdu::from(*t);
    CHECK(od.code == 0xF0);
    CHECK(od.fixed == ByteVec{0x80});
    CHECK(od.params.empty());
    CHECK(od.data == ByteVec{0x32, 0x01, 0x00, 0x00});
  }
  SECTION("ER with trailing octets keeps them") {
    const ByteVec er = hx("0470000702ffee");
    auto t = decode_tpdu(Bytes(er));
    REQUIRE(t.ok());
    const OwnedTpdu oe = OwnedTpdu::from(*t);
    CHECK(oe.data == ByteVec{0xFF, 0xEE});
    auto back = oe.encode();
    REQUIRE(back.ok());
    CHECK(*back == er);
  }
  SECTION("duplicate and unknown parameters survive, in wire order") {
    const ByteVec cr = hx("11e00000000100c1020001ab0101c1020002");  // LI 17 = 6 + 4 + 3 + 4
    auto t = decode_tpdu(Bytes(cr));
    REQUIRE(t.ok());
    const OwnedTpdu oc = OwnedTpdu::from(*t);
    REQUIRE(oc.params.size() == 3);
    CHECK(oc.params[0].code == 0xC1);
    CHECK(oc.params[1].code == 0xAB);
    CHECK(oc.params[2].code == 0xC1);
    auto back = oc.encode();
    REQUIRE(back.ok());
    CHECK(*back == cr);
  }
}

TEST_CASE("encode: length-changing edit of V1's called TSAP", "[encode]") {
  const ByteVec v1 = row_bytes("V1");
  auto d = decode_frame(Bytes(v1));
  REQUIRE(d.ok());

  for (const std::string& tsap : {std::string("EXCHANGETSAP1-LONGER-NAME"), std::string("EX"), std::string("EXCHANGETSAP1")}) {
    DYNAMIC_SECTION("called TSAP \"" << tsap << "\"") {
      OwnedTpdu o = OwnedTpdu::from(d->tpdu);
      const ByteVec value = ascii(tsap);
      o.set_param(param::kCalledTsap, Bytes(value));
      REQUIRE(o.params.size() == 3);  // replaced, not appended
      auto enc = encode_frame(d->header.reserved, o);
      REQUIRE(enc.ok());
      const long delta = static_cast<long>(tsap.size()) - 13;
      CHECK(static_cast<long>(enc->size()) == 44 + delta);

      auto e = decode_frame(Bytes(*enc));
      REQUIRE(e.ok());
      // LI and TPKT length recomputed.
      CHECK(static_cast<long>(e->tpdu.li) == 39 + delta);
      CHECK(static_cast<long>(e->header.length) == 44 + delta);
      CHECK(e->header.length == enc->size());
      // The new TSAP, everything else unchanged.
      CHECK(bv(*e->tpdu.called_tsap()) == value);
      CHECK(bv(*e->tpdu.calling_tsap()) == ascii("SWISSLIFETSAP"));
      CHECK(e->header.reserved == 0x11);
      CHECK(e->tpdu.type == TpduType::kCC);
      CHECK(e->tpdu.code == 0xD0);
      CHECK(e->tpdu.dst_ref == 0x01CA);
      CHECK(e->tpdu.src_ref == 0x0029);
      CHECK(e->tpdu.class_option == 0);
      CHECK(e->tpdu.tpdu_size_code() == 0x0B);
      REQUIRE(e->tpdu.params.size() == 3);
      CHECK(e->tpdu.params[0].code == 0xC1);
      CHECK(e->tpdu.params[1].code == 0xC2);
      CHECK(e->tpdu.params[2].code == 0xC0);
      CHECK(e->tpdu.user_data.empty());
      // Only the reserved-byte anomaly V1 already had.
      REQUIRE(e->anomalies.size() == 1);
      CHECK(e->anomalies[0].kind == AnomalyKind::kReservedNonZero);
      if (tsap == "EXCHANGETSAP1") CHECK(*enc == v1);
    }
  }
}

TEST_CASE("encode: edits keep user data and unknown parameters (V18)", "[encode]") {
  const ByteVec v18 = row_bytes("V18");
  auto t = decode_tpdu(Bytes(v18));
  REQUIRE(t.ok());
  OwnedTpdu o = OwnedTpdu::from(*t);
  const ByteVec called = ascii("CALLED");
  o.set_param(param::kCalledTsap, Bytes(called));  // absent: appended at the end
  REQUIRE(o.params.size() == 4);
  CHECK(o.params.back().code == param::kCalledTsap);
  auto enc = o.encode();
  REQUIRE(enc.ok());
  CHECK(enc->size() == v18.size() + 2 + called.size());
  std::vector<Anomaly> anomalies;
  auto e = decode_tpdu(Bytes(*enc), {}, &anomalies);
  REQUIRE(e.ok());
  CHECK(e->li == 0x15 + 2 + called.size());
  CHECK(bv(e->user_data) == ByteVec{1, 2, 3});
  CHECK(e->find(0xAB) != nullptr);
  CHECK(bv(e->find(0xAB)->value) == ascii("Hello"));
  CHECK(bv(*e->called_tsap()) == called);
  CHECK(e->tpdu_size_code() == 0x08);
}

TEST_CASE("encode: remove_param", "[encode]") {
  const ByteVec v1 = row_bytes("V1");
  auto d = decode_frame(Bytes(v1));
  REQUIRE(d.ok());
  OwnedTpdu o = OwnedTpdu::from(d->tpdu);
  CHECK(o.remove_param(param::kTpduSize) == 1);
  CHECK(o.remove_param(param::kTpduSize) == 0);
  CHECK(o.remove_param(0xAB) == 0);
  REQUIRE(o.params.size() == 2);
  auto enc = encode_frame(0, o);
  REQUIRE(enc.ok());
  CHECK(enc->size() == 41);
  auto e = decode_frame(Bytes(*enc));
  REQUIRE(e.ok());
  CHECK(e->tpdu.li == 36);
  CHECK(e->header.length == 41);
  CHECK_FALSE(e->tpdu.tpdu_size_code().has_value());
  CHECK(bv(*e->tpdu.called_tsap()) == ascii("EXCHANGETSAP1"));
  CHECK(e->anomalies.empty());

  SECTION("every duplicate goes") {
    OwnedTpdu dup;
    dup.code = 0xE0;
    dup.fixed = {0x00, 0x00, 0x00, 0x01, 0x00};
    const ByteVec a{0x00, 0x01}, b{0x00, 0x02}, c{0x0A};
    dup.params = {{0xC1, a}, {0xC0, c}, {0xC1, b}};
    CHECK(dup.remove_param(0xC1) == 2);
    REQUIRE(dup.params.size() == 1);
    CHECK(dup.params[0].code == 0xC0);
    auto body = dup.encode();
    REQUIRE(body.ok());
    CHECK(*body == hx("09e00000000100c0010a"));
  }
  SECTION("down to no parameters at all") {
    o.remove_param(param::kCallingTsap);
    o.remove_param(param::kCalledTsap);
    auto bare = encode_frame(0, o);
    REQUIRE(bare.ok());
    CHECK(*bare == hx("0300000b06d001ca002900"));
  }
}

TEST_CASE("encode: limits", "[encode]") {
  const ByteVec v1 = row_bytes("V1");
  auto d = decode_frame(Bytes(v1));
  REQUIRE(d.ok());

  SECTION("LI above 254 is refused") {
    OwnedTpdu o = OwnedTpdu::from(d->tpdu);
    // LI now 39; a called TSAP of 13 + k octets makes it 39 + k.
    ByteVec fits(13 + 215, 0x41);  // LI 254
    o.set_param(param::kCalledTsap, Bytes(fits));
    auto ok = o.encode();
    REQUIRE(ok.ok());
    CHECK((*ok)[0] == 254);
    ByteVec over(13 + 216, 0x41);  // LI 255
    o.set_param(param::kCalledTsap, Bytes(over));
    auto bad = o.encode();
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().kind == "li-too-long");
    CHECK_THAT(bad.error().message, Catch::Contains("255"));
    CHECK_FALSE(encode_frame(0, o).ok());
  }
  SECTION("a parameter value over 255 octets is refused") {
    OwnedTpdu o = OwnedTpdu::from(d->tpdu);
    o.remove_param(param::kCallingTsap);
    o.remove_param(param::kTpduSize);
    ByteVec huge(256, 0x41);
    o.set_param(param::kCalledTsap, Bytes(huge));
    auto bad = o.encode();
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().kind == "param-too-long");
  }
  SECTION("a TPKT above the maximum is refused") {
    OwnedTpdu dt;
    dt.code = 0xF0;
    dt.fixed = {0x80};
    dt.data.assign(93, 0x00);  // 4 + 3 + 93 = 100
    auto at_max = encode_frame(0, dt, 100);
    REQUIRE(at_max.ok());
    CHECK(at_max->size() == 100);
    CHECK((*at_max)[2] == 0x00);
    CHECK((*at_max)[3] == 100);
    dt.data.push_back(0x00);
    auto over = encode_frame(0, dt, 100);
    REQUIRE_FALSE(over.ok());
    CHECK(over.error().kind == "tpkt-too-long");
    CHECK(dt.encode().ok());  // the TPDU itself is fine
  }
  SECTION("the default maximum is 65535") {
    OwnedTpdu dt;
    dt.code = 0xF0;
    dt.fixed = {0x80};
    dt.data.assign(65528, 0x5A);
    auto max = encode_frame(0, dt);
    REQUIRE(max.ok());
    CHECK(max->size() == 65535);
    CHECK((*max)[2] == 0xFF);
    CHECK((*max)[3] == 0xFF);
    auto back = decode_frame(Bytes(*max));
    REQUIRE(back.ok());
    CHECK(back->tpdu.user_data.size() == 65528);
    dt.data.push_back(0);
    CHECK_FALSE(encode_frame(0, dt).ok());
  }
}
