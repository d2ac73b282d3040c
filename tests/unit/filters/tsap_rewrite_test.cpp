// tsap-rewrite: same-length edits in place, length-changing edits re-encoded
// (LI and TPKT length recomputed, order and every other byte kept), the CC's
// echo put back to what the client sent, what is left alone, every config
// error with its key, and settings that load back. Frames are the shared
// vectors (V5 S7 CR, V7/V8 ASCII CR/CC pair, V18 rich CR).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "codec/encode.h"
#include "codec/x224.h"
#include "support/vectors.h"
#include "unit/filters/fake_context.h"
#include "unit/filters/frame_util.h"

namespace isoproxy::test {
namespace {

using filters::Direction;
using filters::Verdict;

ByteVec ascii(std::string_view s) { return ByteVec(s.begin(), s.end()); }
ByteVec bv(codec::Bytes b) { return ByteVec(b.begin(), b.end()); }

ByteVec in_tpkt(const ByteVec& tpdu) {
  ByteVec out(4 + tpdu.size());
  out[0] = 3;
  out[2] = static_cast<std::uint8_t>(out.size() >> 8);
  out[3] = static_cast<std::uint8_t>(out.size());
  std::copy(tpdu.begin(), tpdu.end(), out.begin() + 4);
  return out;
}




std::vector<std::uint8_t> codes(const codec::OwnedTpdu& t) {
  std::vector<std::uint8_t> out;
  for (const auto& p : t.params) out.push_back(p.code);
  return out;
}

std::shared_ptr<const filters::FilterFactory> rewrite(std::string_view body) {
  std::vector<conf::ConfigError> errors;
  auto f = factory_from_toml("tsap-rewrite", body, &errors, "rw");
  std::string all;
  for (const auto& e : errors) all += e.to_string() + "\n";
  INFO(all);
  REQUIRE(f != nullptr);
  return f;
}

std::size_t differing(const ByteVec& a, const ByteVec& b) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) n += a[i] != b[i];
  return n;
}

// The frame decodes, and its TPKT length and LI say what its bytes are.
void check_lengths(const ByteVec& frame) {
  auto f = codec::decode_frame(frame);
  REQUIRE(f.ok());
  CHECK(f->header.length == frame.size());
  std::size_t header = 1 + 4 + 1;  // code, DST-REF, SRC-REF, class option (CR/CC fixed part after LI)
  for (const auto& p : f->tpdu.params) header += 2 + p.value.size();
  CHECK(f->tpdu.li == header);
}

TEST_CASE("tsap-rewrite: registered, acts on the connection phase only", "[filters][tsap-rewrite]") {
  auto f = rewrite("[[rule]]\nfield = \"called\"\nfrom = \"A\"\nto = \"B\"\n");
  CHECK(f->kind() == "tsap-rewrite");
  CHECK_FALSE(f->needs_data_phase());
  CHECK_FALSE(f->routes());
}

TEST_CASE("tsap-rewrite: same length, in place", "[filters][tsap-rewrite]") {
  const ByteVec v5 = row("V5");  // calling 0100, called 0102; C1, C2, C0
  auto f = rewrite("[[rule]]\nfield = \"called\"\nfrom = \"hex:0102\"\nto = \"hex:0203\"\n");
  auto filter = f->create();
  FakeContext ctx;
  auto r = run_filter(*filter, ctx, v5, Direction::kToUpstream);
  CHECK(r.verdict == Verdict::kContinue);
  REQUIRE(r.bytes.size() == v5.size());
  CHECK(differing(r.bytes, v5) == 2);  // 01 02 -> 02 03: both octets
  auto d = codec::decode_frame(r.bytes);
  REQUIRE(d.ok());
  CHECK(bv(*d->tpdu.called_tsap()) == ByteVec{0x02, 0x03});
  CHECK(bv(*d->tpdu.calling_tsap()) == ByteVec{0x01, 0x00});
  CHECK(codes(owned(r.bytes)) == codes(owned(v5)));
  CHECK(ctx.count_of("rw.rewritten-cr") == 1);
  REQUIRE(ctx.logs.size() == 1);
  CHECK(ctx.logs[0] == "rw: CR called \"hex:0102\" -> \"hex:0203\"");
}

TEST_CASE("tsap-rewrite: a longer TSAP in the CR, and the CC put back", "[filters][tsap-rewrite]") {
  const ByteVec v7 = row("V7");  // calling "0-0ABCD0", called "0-0ZYXW1"; C1, C2, C0
  const ByteVec v8 = row("V8");  // the CC echoing V7's TSAPs
  auto f = rewrite("[[rule]]\nfield = \"called\"\nfrom = \"0-0ZYXW1\"\nto = \"EXCHANGETSAP1\"\n");
  auto filter = f->create();
  FakeContext ctx;

  auto cr = run_filter(*filter, ctx, v7, Direction::kToUpstream);
  CHECK(cr.verdict == Verdict::kContinue);
  CHECK(cr.bytes.size() == v7.size() + 5);
  check_lengths(cr.bytes);
  auto in = codec::decode_frame(v7);
  auto out = codec::decode_frame(cr.bytes);
  REQUIRE(in.ok());
  REQUIRE(out.ok());
  CHECK(out->tpdu.li == in->tpdu.li + 5);
  CHECK(out->header.length == in->header.length + 5);
  CHECK(out->header.reserved == in->header.reserved);
  CHECK(out->tpdu.code == in->tpdu.code);
  CHECK(out->tpdu.dst_ref == in->tpdu.dst_ref);
  CHECK(out->tpdu.src_ref == in->tpdu.src_ref);
  CHECK(out->tpdu.class_option == in->tpdu.class_option);
  CHECK(bv(*out->tpdu.called_tsap()) == ascii("EXCHANGETSAP1"));
  CHECK(bv(*out->tpdu.calling_tsap()) == bv(*in->tpdu.calling_tsap()));
  CHECK(out->tpdu.tpdu_size_code() == in->tpdu.tpdu_size_code());
  CHECK(codes(owned(cr.bytes)) == codes(owned(v7)));
  CHECK(bv(out->tpdu.user_data) == bv(in->tpdu.user_data));
  // Nothing but the called TSAP changed: putting it back gives V7 exactly.
  CHECK(with_param(cr.bytes, codec::param::kCalledTsap, ascii("0-0ZYXW1")) == v7);
  CHECK(ctx.count_of("rw.rewritten-cr") == 1);

  SECTION("a CC echoing the rewritten TSAP gets the original back, byte-exact") {
    const ByteVec cc_in = with_param(v8, codec::param::kCalledTsap, ascii("EXCHANGETSAP1"));
    auto cc = run_filter(*filter, ctx, cc_in, Direction::kToClient);
    CHECK(cc.verdict == Verdict::kContinue);
    CHECK(cc.bytes == v8);
    check_lengths(cc.bytes);
    CHECK(ctx.count_of("rw.restored-cc") == 1);
    REQUIRE(ctx.logs.size() == 2);
    CHECK(ctx.logs[1] == "rw: CC called \"EXCHANGETSAP1\" -> \"0-0ZYXW1\"");
  }
  SECTION("a CC carrying something else is left alone") {
    auto cc = run_filter(*filter, ctx, v8, Direction::kToClient);
    CHECK(cc.bytes == v8);
    CHECK(ctx.count_of("rw.restored-cc") == 0);
  }
  SECTION("after a later CR not rewritten, a CC carrying the rewritten value is the peer's own") {
    // The client's second CR (snap7 answers one at any time) names the new TSAP itself.
    const ByteVec cr2 = with_param(v7, codec::param::kCalledTsap, ascii("EXCHANGETSAP1"));
    CHECK(run_filter(*filter, ctx, cr2, Direction::kToUpstream).bytes == cr2);
    const ByteVec cc_in = with_param(v8, codec::param::kCalledTsap, ascii("EXCHANGETSAP1"));
    auto cc = run_filter(*filter, ctx, cc_in, Direction::kToClient);
    CHECK(cc.bytes == cc_in);
    CHECK(ctx.count_of("rw.restored-cc") == 0);
  }
  SECTION("the TSAP under the other code is not the one rewritten") {
    const ByteVec cc_in = with_param(v8, codec::param::kCallingTsap, ascii("EXCHANGETSAP1"));
    auto cc = run_filter(*filter, ctx, cc_in, Direction::kToClient);
    CHECK(cc.bytes == cc_in);
    CHECK(ctx.count_of("rw.restored-cc") == 0);
  }
}

TEST_CASE("tsap-rewrite: a shorter TSAP, both fields, the reserved byte kept", "[filters][tsap-rewrite]") {
  ByteVec v7 = row("V7");
  v7[1] = 0x11;  // a non-zero reserved byte is not this filter's business
  auto f = rewrite(R"([[rule]]
field = "calling"
from = "0-0ABCD0"
to = "AB"
[[rule]]
field = "called"
from = "0-0ZYXW1"
to = "hex:0102"
)");
  auto filter = f->create();
  FakeContext ctx;
  auto cr = run_filter(*filter, ctx, v7, Direction::kToUpstream);
  CHECK(cr.bytes.size() == v7.size() - 6 - 6);
  check_lengths(cr.bytes);
  CHECK(cr.bytes[1] == 0x11);
  auto out = codec::decode_frame(cr.bytes);
  REQUIRE(out.ok());
  CHECK(bv(*out->tpdu.calling_tsap()) == ascii("AB"));
  CHECK(bv(*out->tpdu.called_tsap()) == ByteVec{0x01, 0x02});
  CHECK(ctx.count_of("rw.rewritten-cr") == 1);  // one per CR, however many TSAPs
  CHECK(ctx.logs.at(0) == "rw: CR calling \"0-0ABCD0\" -> \"AB\", called \"0-0ZYXW1\" -> \"hex:0102\"");

  // The CC echoes both rewritten values; both are put back.
  ByteVec cc_in = with_param(row("V8"), codec::param::kCallingTsap, ascii("AB"));
  cc_in = with_param(cc_in, codec::param::kCalledTsap, {0x01, 0x02});
  auto cc = run_filter(*filter, ctx, cc_in, Direction::kToClient);
  CHECK(cc.bytes == row("V8"));
  CHECK(ctx.count_of("rw.restored-cc") == 1);
}

TEST_CASE("tsap-rewrite: user data and unknown parameters survive a length change (V18)", "[filters][tsap-rewrite]") {
  // V18 (C0, C7, unknown AB, user data) with a calling TSAP appended.
  const ByteVec v18 = in_tpkt(row("V18"));
  const ByteVec cr_in = with_param(v18, codec::param::kCallingTsap, ascii("LOCAL"));
  auto f = rewrite("[[rule]]\nfield = \"calling\"\nfrom = \"LOCAL\"\nto = \"hex:0001\"\n");
  auto filter = f->create();
  FakeContext ctx;
  auto cr = run_filter(*filter, ctx, cr_in, Direction::kToUpstream);
  CHECK(cr.bytes.size() == cr_in.size() - 3);
  check_lengths(cr.bytes);
  const codec::OwnedTpdu a = owned(cr_in);
  const codec::OwnedTpdu b = owned(cr.bytes);
  CHECK(codes(b) == codes(a));
  REQUIRE(b.params.size() == a.params.size());
  for (std::size_t i = 0; i + 1 < a.params.size(); ++i) CHECK(b.params[i].value == a.params[i].value);
  CHECK(b.params.back().value == ByteVec{0x00, 0x01});
  CHECK(b.fixed == a.fixed);
  CHECK(b.data == a.data);
  CHECK(b.data == ByteVec{0x01, 0x02, 0x03});
}

TEST_CASE("tsap-rewrite: what is left alone", "[filters][tsap-rewrite]") {
  const ByteVec v7 = row("V7");
  auto f = rewrite(R"([[rule]]
field = "called"
from = "0-0ZYXW1"
to = "X"
[[rule]]
field = "calling"
from = "0-0ZYXW1"
to = "Y"
)");
  SECTION("a TSAP no rule names; a rule's TSAP under the other code") {
    auto filter = f->create();
    FakeContext ctx;
    const ByteVec v5 = row("V5");
    CHECK(run_filter(*filter, ctx, v5, Direction::kToUpstream).bytes == v5);
    // "0-0ZYXW1" as the calling TSAP only matches the calling rule.
    const ByteVec swapped = with_param(v7, codec::param::kCallingTsap, ascii("0-0ZYXW1"));
    auto r = run_filter(*filter, ctx, swapped, Direction::kToUpstream);
    auto d = codec::decode_frame(r.bytes);
    REQUIRE(d.ok());
    CHECK(bv(*d->tpdu.calling_tsap()) == ascii("Y"));
    CHECK(bv(*d->tpdu.called_tsap()) == ascii("X"));
  }
  SECTION("a prefix of the TSAP is not the TSAP") {
    auto g = rewrite("[[rule]]\nfield = \"called\"\nfrom = \"0-0ZYXW\"\nto = \"X\"\n");
    auto filter = g->create();
    FakeContext ctx;
    CHECK(run_filter(*filter, ctx, v7, Direction::kToUpstream).bytes == v7);
    CHECK(ctx.counts.empty());
  }
  SECTION("frames other than the client's CR and the upstream's CC") {
    auto filter = f->create();
    FakeContext ctx;
    CHECK(run_filter(*filter, ctx, v7, Direction::kToClient).bytes == v7);
    for (const char* id : {"V10", "V14", "V13"}) {
      const ByteVec b = row(id);
      CHECK(run_filter(*filter, ctx, b, Direction::kToUpstream).bytes == b);
      CHECK(run_filter(*filter, ctx, b, Direction::kToClient).bytes == b);
    }
    // Without a rewritten CR, the CC is not touched even if it carries a `to`.
    const ByteVec cc = with_param(row("V8"), codec::param::kCalledTsap, ascii("X"));
    CHECK(run_filter(*filter, ctx, cc, Direction::kToClient).bytes == cc);
    CHECK(ctx.counts.empty());
    CHECK(ctx.injected.empty());
  }
}

TEST_CASE("tsap-rewrite: every copy of a duplicated TSAP is rewritten", "[filters][tsap-rewrite]") {
  codec::OwnedTpdu t = owned(row("V5"));
  t.params.push_back({codec::param::kCalledTsap, {0x01, 0x02}});
  const ByteVec twice = encode(t);
  auto f = rewrite("[[rule]]\nfield = \"called\"\nfrom = \"hex:0102\"\nto = \"SEVEN\"\n");
  auto filter = f->create();
  FakeContext ctx;
  auto r = run_filter(*filter, ctx, twice, Direction::kToUpstream);
  check_lengths(r.bytes);
  const codec::OwnedTpdu o = owned(r.bytes);
  REQUIRE(o.params.size() == 4);
  CHECK(o.params[1].value == ascii("SEVEN"));
  CHECK(o.params[3].value == ascii("SEVEN"));
  CHECK(ctx.count_of("rw.rewritten-cr") == 1);
}

TEST_CASE("tsap-rewrite: a rewrite that would pass LI 254 leaves the CR unchanged", "[filters][tsap-rewrite]") {
  const ByteVec v7 = row("V7");
  const std::string long_tsap = "hex:" + std::string(2 * 240, 'A');  // 240 octets: LI 29 - 8 + 240 > 254
  auto f = rewrite("[[rule]]\nfield = \"calling\"\nfrom = \"0-0ABCD0\"\nto = \"" + long_tsap + "\"\n");
  auto filter = f->create();
  FakeContext ctx;
  auto r = run_filter(*filter, ctx, v7, Direction::kToUpstream);
  CHECK(r.verdict == Verdict::kContinue);
  CHECK(r.bytes == v7);
  CHECK(ctx.count_of("rw.failed") == 1);
  CHECK(ctx.count_of("rw.rewritten-cr") == 0);
  REQUIRE(ctx.logs.size() == 1);
  CHECK_THAT(ctx.logs[0], Catch::Contains("CR left unchanged"));
  // Nothing was rewritten, so nothing is restored.
  const ByteVec v8 = row("V8");
  CHECK(run_filter(*filter, ctx, v8, Direction::kToClient).bytes == v8);
}

TEST_CASE("tsap-rewrite: a rewrite that would pass the listener's max_frame leaves the CR unchanged",
          "[filters][tsap-rewrite]") {
  const ByteVec v7 = row("V7");
  auto f = rewrite("[[rule]]\nfield = \"called\"\nfrom = \"0-0ZYXW1\"\nto = \"EXCHANGETSAP1\"\n");  // 5 octets more
  auto filter = f->create();
  FakeContext ctx;
  // Room for the longer CR: rewritten.
  CHECK(run_filter(*filter, ctx, v7, Direction::kToUpstream, v7.size() + 5).bytes.size() == v7.size() + 5);
  // One octet short: unchanged, counted and said.
  auto r = run_filter(*filter, ctx, v7, Direction::kToUpstream, v7.size() + 4);
  CHECK(r.bytes == v7);
  CHECK(ctx.count_of("rw.failed") == 1);
  REQUIRE(ctx.logs.size() == 2);
  CHECK(ctx.logs[1] == "rw: CR left unchanged: the frame would be " + std::to_string(v7.size() + 5) +
                           " octets, over the listener's max_frame (" + std::to_string(v7.size() + 4) + ")");
}

void check_error(std::string_view body, const std::string& key, const std::string& message) {
  INFO(body);
  std::vector<conf::ConfigError> errors;
  auto f = factory_from_toml("tsap-rewrite", body, &errors, "rw");
  CHECK(f == nullptr);
  std::string all;
  for (const auto& e : errors) all += e.to_string() + "\n";
  INFO(all);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].key == key);
  CHECK_THAT(errors[0].message, Catch::Contains(message));
  CHECK(errors[0].line > 0);
}

TEST_CASE("tsap-rewrite: configuration errors name their key", "[filters][tsap-rewrite]") {
  check_error("", "filter.rw.rule", "required: at least one [[filter.rw.rule]]");
  check_error("rule = []\n", "filter.rw.rule", "required: at least one rule");
  check_error("[rule]\nfield = \"called\"\n", "filter.rw.rule", "expected [[filter.rw.rule]] tables");
  check_error("rule = [\"x\"]\n", "filter.rw.rule[0]", "expected a table");
  check_error("verbose = true\n[[rule]]\nfield = \"called\"\nfrom = \"A\"\nto = \"B\"\n", "filter.rw.verbose",
              "unknown key");
  check_error("[[rule]]\nfrom = \"A\"\nto = \"B\"\n", "filter.rw.rule[0].field", "required: \"calling\" or \"called\"");
  check_error("[[rule]]\nfield = \"callee\"\nfrom = \"A\"\nto = \"B\"\n", "filter.rw.rule[0].field",
              "expected one of \"calling\", \"called\", found \"callee\"");
  check_error("[[rule]]\nfield = \"called\"\nto = \"B\"\n", "filter.rw.rule[0].from", "required: the TSAP to replace");
  check_error("[[rule]]\nfield = \"called\"\nfrom = \"A\"\n", "filter.rw.rule[0].to", "required: the TSAP to put");
  check_error("[[rule]]\nfield = \"called\"\nfrom = \"SIMATIC-*\"\nto = \"B\"\n", "filter.rw.rule[0].from",
              "a prefix ('*') cannot be rewritten");
  check_error("[[rule]]\nfield = \"called\"\nfrom = \"hex:0g\"\nto = \"B\"\n", "filter.rw.rule[0].from", "hex:0g");
  check_error("[[rule]]\nfield = \"called\"\nfrom = [\"A\"]\nto = \"B\"\n", "filter.rw.rule[0].from",
              "expected a string");
  check_error("[[rule]]\nfield = \"called\"\nfrom = \"A\"\nto = \"hex:\"\n", "filter.rw.rule[0].to", "no hex digits");
  check_error("[[rule]]\nfield = \"called\"\nfrom = \"A\"\nto = \"\"\n", "filter.rw.rule[0].to", "an empty TSAP");
  check_error("[[rule]]\nfield = \"called\"\nfrom = \"hex:41\"\nto = \"A\"\n", "filter.rw.rule[0].to",
              "is the same TSAP as from");
  check_error("[[rule]]\nfield = \"called\"\nfrom = \"A\"\nto = \"B\"\nform = \"C\"\n", "filter.rw.rule[0].form",
              "unknown key; did you mean \"from\"?");
  check_error(R"([[rule]]
field = "called"
from = "A"
to = "B"
[[rule]]
field = "calling"
from = "A"
to = "C"
[[rule]]
field = "called"
from = "hex:41"
to = "D"
)",
              "filter.rw.rule[2].from", "\"hex:41\" is already rewritten by rule[0] (called)");
}

TEST_CASE("tsap-rewrite: settings_toml loads back to the same settings", "[filters][tsap-rewrite]") {
  auto f = rewrite(R"([[rule]]
field = "called"
from = "EXCHANGETSAP1"
to = "hex:0102"
[[rule]]
field = "calling"
from = 'Q"\'
to = "SIMATIC-ROOT-ES*"
)");
  const std::string text = f->settings_toml();
  CHECK(text ==
        "rule = [\n"
        "  { field = \"called\", from = \"EXCHANGETSAP1\", to = \"hex:0102\" },\n"
        "  { field = \"calling\", from = \"hex:51225C\", to = \"SIMATIC-ROOT-ES*\" },\n]\n");
  auto g = rewrite(text);
  CHECK(g->settings_toml() == text);
  // `to` is a TSAP, not a pattern: its '*' is an octet and survives the trip.
  auto filter = g->create();
  FakeContext ctx;
  const ByteVec cr_in = with_param(row("V7"), codec::param::kCallingTsap, ascii("Q\"\\"));
  auto r = run_filter(*filter, ctx, cr_in, Direction::kToUpstream);
  auto d = codec::decode_frame(r.bytes);
  REQUIRE(d.ok());
  CHECK(bv(*d->tpdu.calling_tsap()) == ascii("SIMATIC-ROOT-ES*"));
}

}  // namespace
}  // namespace isoproxy::test
