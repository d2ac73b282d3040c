// tsap-acl: every rule form (called, calling, client, lists, prefixes, no
// condition), first match wins, the default, the DR a refusal injects, what
// passes untouched, every config error with its key, and settings that load
// back. Frames are the shared vectors (V5, V7, V8, V10, V18).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "codec/encode.h"
#include "codec/x224.h"
#include "conf/loader.h"
#include "support/vectors.h"
#include "unit/filters/fake_context.h"
#include "unit/filters/frame_util.h"

namespace isoproxy::test {
namespace {

using filters::Direction;
using filters::Verdict;


// A COTP-only row in a TPKT (reserved 0).
ByteVec in_tpkt(const ByteVec& tpdu) {
  ByteVec out(4 + tpdu.size());
  out[0] = 3;
  out[2] = static_cast<std::uint8_t>(out.size() >> 8);
  out[3] = static_cast<std::uint8_t>(out.size());
  std::copy(tpdu.begin(), tpdu.end(), out.begin() + 4);
  return out;
}



ByteVec ascii(std::string_view s) { return ByteVec(s.begin(), s.end()); }

std::shared_ptr<const filters::FilterFactory> acl(std::string_view body) {
  std::vector<conf::ConfigError> errors;
  auto f = factory_from_toml("tsap-acl", body, &errors, "acl");
  std::string all;
  for (const auto& e : errors) all += e.to_string() + "\n";
  INFO(all);
  REQUIRE(f != nullptr);
  return f;
}

// Runs the CR `frame` from the client through a fresh instance.
struct Outcome {
  FilterRun run;
  FakeContext ctx;
};
Outcome judge(const filters::FilterFactory& f, const ByteVec& frame, const std::string& client = "192.0.2.1:40000") {
  Outcome o{{}, FakeContext(client)};
  auto filter = f.create();
  o.run = run_filter(*filter, o.ctx, frame, Direction::kToUpstream);
  return o;
}

void check_allowed(const Outcome& o, const ByteVec& frame) {
  CHECK(o.run.verdict == Verdict::kContinue);
  CHECK(o.run.bytes == frame);
  CHECK(o.ctx.count_of("acl.allowed") == 1);
  CHECK(o.ctx.count_of("acl.denied") == 0);
  CHECK(o.ctx.injected.empty());
  CHECK(o.ctx.ended.empty());
}

// The refusal: the CR goes no further, one DR toward the client whose DST-REF
// is the CR's SRC-REF, and the session ends with `why`.
void check_denied(const Outcome& o, const ByteVec& cr, std::uint8_t reason, const std::string& why) {
  CHECK(o.run.verdict == Verdict::kEndSession);
  CHECK(o.ctx.count_of("acl.denied") == 1);
  CHECK(o.ctx.count_of("acl.allowed") == 0);
  CHECK(o.ctx.ended == "acl-denied: " + why);
  REQUIRE(o.ctx.injected.size() == 1);
  CHECK(o.ctx.injected[0].first == Direction::kToClient);
  const ByteVec& dr = o.ctx.injected[0].second;
  auto d = codec::decode_frame(dr);
  REQUIRE(d.ok());
  CHECK(d->header.reserved == 0);
  CHECK(d->tpdu.type == codec::TpduType::kDR);
  CHECK(d->tpdu.code == 0x80);
  REQUIRE(d->tpdu.reason.has_value());
  CHECK(*d->tpdu.reason == reason);
  auto c = codec::decode_frame(cr);
  REQUIRE(c.ok());
  CHECK(d->tpdu.dst_ref == c->tpdu.src_ref);
  CHECK(d->tpdu.src_ref == std::uint16_t{0});
  CHECK(d->tpdu.params.empty());
  CHECK(dr.size() == 11);
  REQUIRE(o.ctx.logs.size() == 1);
  CHECK_THAT(o.ctx.logs[0], Catch::Contains("acl: refused CR from " + o.ctx.client_address()));
  CHECK_THAT(o.ctx.logs[0], Catch::Contains(why));
}

std::vector<conf::ConfigError> errors_of(std::string_view body) {
  std::vector<conf::ConfigError> errors;
  auto f = factory_from_toml("tsap-acl", body, &errors, "acl");
  CHECK(f == nullptr);
  return errors;
}

TEST_CASE("tsap-acl: registered, sees the data phase (a later CR), keeps no state that stops parking",
          "[filters][tsap-acl]") {
  const auto* k = filters::find_filter_kind("tsap-acl");
  REQUIRE(k != nullptr);
  auto f = acl("");
  CHECK(f->kind() == "tsap-acl");
  CHECK(f->needs_data_phase());
  CHECK_FALSE(f->keeps_session_state());
  CHECK(f->guards_cr());
  CHECK_FALSE(f->routes());
}

TEST_CASE("tsap-acl: defaults deny with reason 3 (address unknown)", "[filters][tsap-acl]") {
  auto f = acl("");
  CHECK(f->settings_toml() == "default = \"deny\"\nreason = 3\nrule = []\n");
  const ByteVec v7 = row("V7");
  check_denied(judge(*f, v7), v7, 3, "default");
  const ByteVec v5 = row("V5");
  check_denied(judge(*f, v5), v5, 3, "default");
}

TEST_CASE("tsap-acl: default allow and a configured reason", "[filters][tsap-acl]") {
  const ByteVec v5 = row("V5");
  check_allowed(judge(*acl("default = \"allow\"\n"), v5), v5);
  auto f = acl("reason = 128\n[[rule]]\naction = \"deny\"\ncalled = \"hex:0102\"\n[[rule]]\naction = \"allow\"\n");
  check_denied(judge(*f, v5), v5, 0x80, "rule 0");
  const ByteVec v7 = row("V7");
  check_allowed(judge(*f, v7), v7);
}

TEST_CASE("tsap-acl: a TSAP in the refusal line cannot fake the fields after it", "[filters][tsap-acl]") {
  // A calling TSAP that reads, unescaped, as a quote, another called TSAP
  // and a verdict: the line must show it as one escaped value.
  const std::string fake = "X\" called=\"EXCHANGETSAP1\": rule 0; allowed. \\";
  const ByteVec cr = with_param(row("V7"), codec::param::kCallingTsap, ByteVec(fake.begin(), fake.end()));
  const auto o = judge(*acl(""), cr);
  check_denied(o, cr, 3, "default");
  CHECK_THAT(o.ctx.logs[0], Catch::Contains(R"(calling="X\" called=\"EXCHANGETSAP1\": rule 0; allowed. \\" called="0-0ZYXW1": default;)"));
}

TEST_CASE("tsap-acl: called and calling conditions", "[filters][tsap-acl]") {
  const ByteVec v5 = row("V5");  // calling 0100, called 0102
  const ByteVec v7 = row("V7");  // calling "0-0ABCD0", called "0-0ZYXW1"
  SECTION("called, ASCII, exact") {
    auto f = acl("[[rule]]\naction = \"allow\"\ncalled = \"0-0ZYXW1\"\n");
    check_allowed(judge(*f, v7), v7);
    check_denied(judge(*f, v5), v5, 3, "default");
  }
  SECTION("exact means the whole TSAP") {
    auto f = acl("[[rule]]\naction = \"allow\"\ncalled = \"0-0ZYXW\"\n");
    check_denied(judge(*f, v7), v7, 3, "default");
  }
  SECTION("called, prefix") {
    auto f = acl("[[rule]]\naction = \"allow\"\ncalled = \"0-0Z*\"\n");
    check_allowed(judge(*f, v7), v7);
  }
  SECTION("called, hex") {
    auto f = acl("[[rule]]\naction = \"allow\"\ncalled = \"hex:0102\"\n");
    check_allowed(judge(*f, v5), v5);
    check_denied(judge(*f, v7), v7, 3, "default");
  }
  SECTION("a list: any entry") {
    auto f = acl("[[rule]]\naction = \"allow\"\ncalled = [\"hex:0101\", \"hex:01*\", \"NOPE\"]\n");
    check_allowed(judge(*f, v5), v5);
    check_denied(judge(*f, v7), v7, 3, "default");
  }
  SECTION("calling") {
    auto f = acl("[[rule]]\naction = \"allow\"\ncalling = \"hex:0100\"\n");
    check_allowed(judge(*f, v5), v5);
    check_denied(judge(*f, v7), v7, 3, "default");
    auto g = acl("[[rule]]\naction = \"allow\"\ncalling = [\"0-0ABCD0\"]\n");
    check_allowed(judge(*g, v7), v7);
  }
  SECTION("calling and called must both match") {
    auto f = acl("[[rule]]\naction = \"allow\"\ncalling = \"hex:0100\"\ncalled = \"0-0ZYXW1\"\n");
    check_denied(judge(*f, v5), v5, 3, "default");
    check_denied(judge(*f, v7), v7, 3, "default");
    auto g = acl("[[rule]]\naction = \"allow\"\ncalling = \"hex:0100\"\ncalled = \"hex:0102\"\n");
    check_allowed(judge(*g, v5), v5);
  }
  SECTION("a CR without the TSAP matches no TSAP condition") {
    const ByteVec v18 = in_tpkt(row("V18"));  // C0, C7, an unknown parameter, user data: no TSAPs
    auto f = acl("default = \"allow\"\n[[rule]]\naction = \"deny\"\ncalled = \"hex:00*\"\n");
    check_allowed(judge(*f, v18), v18);
    auto g = acl("[[rule]]\naction = \"allow\"\ncalling = \"hex:00*\"\n");
    check_denied(judge(*g, v18), v18, 3, "default");
  }
}

TEST_CASE("tsap-acl: client address ranges", "[filters][tsap-acl]") {
  const ByteVec v7 = row("V7");
  auto f = acl("[[rule]]\naction = \"allow\"\nclient = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n");
  check_allowed(judge(*f, v7, "10.1.2.3:5000"), v7);
  check_allowed(judge(*f, v7, "[2001:db8::7]:5000"), v7);
  check_denied(judge(*f, v7, "192.0.2.1:40000"), v7, 3, "default");
  check_denied(judge(*f, v7, "[2001:db9::7]:5000"), v7, 3, "default");
  // An IPv4 client seen on an IPv6 socket still matches the IPv4 range.
  check_allowed(judge(*f, v7, "[::ffff:10.9.9.9]:5000"), v7);
  SECTION("a single range as a string, a bare address") {
    auto g = acl("[[rule]]\naction = \"allow\"\nclient = \"192.0.2.1\"\n");
    check_allowed(judge(*g, v7, "192.0.2.1:1"), v7);
    check_denied(judge(*g, v7, "192.0.2.2:1"), v7, 3, "default");
  }
  SECTION("with a TSAP condition: both") {
    auto g = acl("[[rule]]\naction = \"allow\"\nclient = \"10.0.0.0/8\"\ncalled = \"0-0ZYXW1\"\n");
    check_allowed(judge(*g, v7, "10.0.0.1:1"), v7);
    check_denied(judge(*g, v7, "11.0.0.1:1"), v7, 3, "default");
    const ByteVec v5 = row("V5");
    check_denied(judge(*g, v5, "10.0.0.1:1"), v5, 3, "default");
  }
}

TEST_CASE("tsap-acl: the first matching rule wins, a rule without conditions matches all", "[filters][tsap-acl]") {
  const ByteVec v5 = row("V5");
  const ByteVec v7 = row("V7");
  auto f = acl(R"(default = "allow"
[[rule]]
action = "allow"
called = "0-0ZYXW1"
[[rule]]
action = "deny"
client = "192.0.2.0/24"
[[rule]]
action = "allow"
)");
  check_allowed(judge(*f, v7), v7);                       // rule 0
  check_denied(judge(*f, v5), v5, 3, "rule 1");           // rule 1 before rule 2
  check_allowed(judge(*f, v5, "198.51.100.1:9"), v5);     // rule 2
  auto g = acl("[[rule]]\naction = \"deny\"\n[[rule]]\naction = \"allow\"\ncalled = \"0-0ZYXW1\"\n");
  check_denied(judge(*g, v7), v7, 3, "rule 0");
}

TEST_CASE("tsap-acl: a TSAP given twice is judged by the stricter reading", "[filters][tsap-acl]") {
  // V5 with a second called TSAP parameter appended.
  codec::OwnedTpdu t = owned(row("V5"));
  t.params.push_back({codec::param::kCalledTsap, {0x01, 0x01}});
  const ByteVec twice = encode(t);
  SECTION("an allow rule needs every copy") {
    auto f = acl("[[rule]]\naction = \"allow\"\ncalled = \"hex:0102\"\n");
    check_denied(judge(*f, twice), twice, 3, "default");
    auto g = acl("[[rule]]\naction = \"allow\"\ncalled = [\"hex:0102\", \"hex:0101\"]\n");
    check_allowed(judge(*g, twice), twice);
  }
  SECTION("a deny rule needs any copy") {
    auto f = acl("default = \"allow\"\n[[rule]]\naction = \"deny\"\ncalled = \"hex:0101\"\n");
    check_denied(judge(*f, twice), twice, 3, "rule 0");
  }
}

TEST_CASE("tsap-acl: frames other than the client's CR pass", "[filters][tsap-acl]") {
  auto f = acl("");  // deny everything
  auto filter = f->create();
  FakeContext ctx;
  for (const char* id : {"V8", "V10", "V14"}) {
    const ByteVec b = row(id);
    for (auto dir : {Direction::kToClient, Direction::kToUpstream}) {
      auto r = run_filter(*filter, ctx, b, dir);
      CHECK(r.verdict == Verdict::kContinue);
      CHECK(r.bytes == b);
    }
  }
  // A CR travelling toward the client is not the client's CR.
  const ByteVec v7 = row("V7");
  auto r = run_filter(*filter, ctx, v7, Direction::kToClient);
  CHECK(r.verdict == Verdict::kContinue);
  CHECK(ctx.counts.empty());
  CHECK(ctx.injected.empty());
  CHECK(ctx.ended.empty());
  // A session whose first frame is not a CR still has its CR judged later.
  r = run_filter(*filter, ctx, v7, Direction::kToUpstream);
  CHECK(r.verdict == Verdict::kEndSession);
  CHECK(ctx.count_of("acl.denied") == 1);
}

TEST_CASE("tsap-acl: after a refusal nothing more from the client passes", "[filters][tsap-acl]") {
  // The session closes once the DR is written; a DT the client sent in the
  // same segment as its CR may still be framed before that.
  auto f = acl("");
  auto filter = f->create();
  FakeContext ctx;
  CHECK(run_filter(*filter, ctx, row("V7"), Direction::kToUpstream).verdict == Verdict::kEndSession);
  CHECK(run_filter(*filter, ctx, row("V10"), Direction::kToUpstream).verdict == Verdict::kDrop);
  CHECK(run_filter(*filter, ctx, row("V7"), Direction::kToUpstream).verdict == Verdict::kDrop);
  CHECK(run_filter(*filter, ctx, row("V10r"), Direction::kToClient).verdict == Verdict::kContinue);
  CHECK(ctx.count_of("acl.denied") == 1);
  CHECK(ctx.injected.size() == 1);
}

void check_error(std::string_view body, const std::string& key, const std::string& message) {
  INFO(body);
  const auto errors = errors_of(body);
  std::string all;
  for (const auto& e : errors) all += e.to_string() + "\n";
  INFO(all);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].key == key);
  CHECK_THAT(errors[0].message, Catch::Contains(message));
  CHECK(errors[0].line > 0);
}

TEST_CASE("tsap-acl: configuration errors name their key", "[filters][tsap-acl]") {
  check_error("default = \"maybe\"\n", "filter.acl.default", "expected one of \"allow\", \"deny\", found \"maybe\"");
  check_error("reason = 256\n", "filter.acl.reason", "must be between 0 and 255");
  check_error("reason = \"3\"\n", "filter.acl.reason", "expected an integer");
  check_error("defualt = \"allow\"\n", "filter.acl.defualt", "unknown key; did you mean \"default\"?");
  check_error("rule = \"allow\"\n", "filter.acl.rule", "expected [[filter.acl.rule]] tables");
  check_error("[rule]\naction = \"allow\"\n", "filter.acl.rule", "expected [[filter.acl.rule]] tables");
  check_error("rule = [1]\n", "filter.acl.rule[0]", "expected a table");
  check_error("[[rule]]\ncalled = \"X\"\n", "filter.acl.rule[0].action", "required: \"allow\" or \"deny\"");
  check_error("[[rule]]\naction = \"permit\"\n", "filter.acl.rule[0].action",
              "expected one of \"allow\", \"deny\", found \"permit\"");
  check_error("[[rule]]\naction = \"allow\"\ncalld = \"X\"\n", "filter.acl.rule[0].calld",
              "unknown key; did you mean \"called\"?");
  check_error("[[rule]]\naction = \"allow\"\n[[rule]]\naction = \"deny\"\nclient = \"10.0.0.1/8\"\n",
              "filter.acl.rule[1].client", "10.0.0.1/8");
  check_error("[[rule]]\naction = \"allow\"\nclient = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n", "filter.acl.rule[0].client[1]",
              "out of range");
  check_error("[[rule]]\naction = \"allow\"\nclient = \"example.org\"\n", "filter.acl.rule[0].client",
              "is not an address range");
  check_error("[[rule]]\naction = \"allow\"\nclient = []\n", "filter.acl.rule[0].client", "an empty list matches nothing");
  check_error("[[rule]]\naction = \"allow\"\ncalled = \"hex:01x\"\n", "filter.acl.rule[0].called", "hex:01x");
  check_error("[[rule]]\naction = \"allow\"\ncalling = [\"OK\", \"hex:\"]\n", "filter.acl.rule[0].calling[1]",
              "no hex digits");
  check_error("[[rule]]\naction = \"allow\"\ncalled = \"*\"\n", "filter.acl.rule[0].called",
              "a prefix needs at least one octet");
  check_error("[[rule]]\naction = \"allow\"\ncalled = \"\"\n", "filter.acl.rule[0].called", "an empty TSAP");
  check_error("[[rule]]\naction = \"allow\"\ncalled = 102\n", "filter.acl.rule[0].called", "found an integer");
  check_error("[[rule]]\naction = \"allow\"\ncalled = [1]\n", "filter.acl.rule[0].called[0]", "expected a TSAP string");
  check_error("[[rule]]\naction = \"allow\"\ncalled = []\n", "filter.acl.rule[0].called", "an empty list matches nothing");

  SECTION("every error at once, at its line and column") {
    const auto errors = errors_of("default = \"no\"\n[[rule]]\naction = \"x\"\n[[rule]]\ncalled = \"hex:1\"\n");
    REQUIRE(errors.size() == 4);
    CHECK(errors[0].to_string() == "test.toml:1:11: filter.acl.default: expected one of \"allow\", \"deny\", found \"no\"");
    CHECK(errors[1].key == "filter.acl.rule[0].action");
    CHECK(errors[1].line == 3);
    CHECK(errors[2].key == "filter.acl.rule[1].action");
    CHECK(errors[3].key == "filter.acl.rule[1].called");
    CHECK(errors[3].line == 5);
  }
}

TEST_CASE("tsap-acl: settings_toml loads back to the same settings", "[filters][tsap-acl]") {
  auto f = acl(R"(default = "allow"
reason = 0
[[rule]]
action = "deny"
called = ["EXCHANGETSAP1", "SIMATIC-*"]
calling = "hex:0100"
client = ["10.0.0.0/8", "2001:db8::/32"]
[[rule]]
action = "allow"
called = 'A"B\C'
[[rule]]
action = "deny"
)");
  const std::string text = f->settings_toml();
  CHECK(text ==
        "default = \"allow\"\nreason = 0\nrule = [\n"
        "  { action = \"deny\", calling = [\"hex:0100\"], called = [\"EXCHANGETSAP1\", \"SIMATIC-*\"], "
        "client = [\"10.0.0.0/8\", \"2001:db8::/32\"] },\n"
        "  { action = \"allow\", called = [\"hex:4122425C43\"] },\n"
        "  { action = \"deny\" },\n]\n");
  auto g = acl(text);
  CHECK(g->settings_toml() == text);
  // The re-loaded filter judges the same way (the quoted TSAP kept its bytes).
  codec::OwnedTpdu t = owned(row("V7"));
  t.set_param(codec::param::kCalledTsap, ascii("A\"B\\C"));
  const ByteVec odd = encode(t);
  Outcome o = judge(*g, odd, "203.0.113.1:1");
  CHECK(o.run.verdict == Verdict::kContinue);
  CHECK(o.ctx.count_of("acl.allowed") == 1);

  SECTION("inside a whole configuration, through the loader") {
    const std::string config = "[[listener]]\nlisten = \"0.0.0.0:102\"\nupstream = \"192.0.2.10:102\"\nfilters = [\"acl\"]\n"
                               "\n[filter.acl]\nkind = \"tsap-acl\"\n" + text;
    auto c = conf::load_config_string(config, "test.toml");
    REQUIRE(c.ok());
    const std::string effective = conf::effective_config_toml(*c);
    auto again = conf::load_config_string(effective, "effective.toml");
    REQUIRE(again.ok());
    CHECK(again->filters.at("acl").factory->settings_toml() == text);
    CHECK(conf::effective_config_toml(*again) == effective);
  }
}

}  // namespace
}  // namespace isoproxy::test
