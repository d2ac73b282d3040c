// tsap-route through a fake context: which route a CR takes, the default,
// the DR for a CR no route takes, and configuration errors.
#include <catch2/catch.hpp>

#include "filters/tsap_match.h"
#include "unit/filters/fake_context.h"
#include "unit/filters/frame_util.h"

namespace isoproxy::test {
namespace {

using filters::Direction;
using filters::Verdict;

const char* kRoutes =
    "[[route]]\nname = \"exchange\"\ncalled = \"EXCHANGETSAP1\"\nupstream = \"192.0.2.20:102\"\n"
    "[[route]]\nname = \"s7\"\ncalled = [\"hex:0102\", \"PLC*\"]\ncalling = \"hex:0100\"\nupstream = \"192.0.2.30:102\"\n"
    "source = \"fixed\"\nsource_address = \"192.0.2.5\"\n";

std::vector<std::string> errors_for(std::string_view body) {
  std::vector<conf::ConfigError> errors;
  CHECK(factory_from_toml("tsap-route", body, &errors, "r") == nullptr);
  std::vector<std::string> out;
  for (const auto& e : errors) out.push_back(e.to_string());
  return out;
}

}  // namespace

TEST_CASE("tsap-route: the first matching route takes the CR", "[filters][tsap-route]") {
  auto f = factory_from_toml("tsap-route", kRoutes, nullptr, "r");
  REQUIRE(f);
  CHECK(f->routes());
  {
    FakeContext ctx;
    auto filter = f->create();
    // A first frame that is not a CR cannot be routed: without a default the session ends.
    CHECK(run_filter(*filter, ctx, row("V1"), Direction::kToUpstream).verdict == Verdict::kEndSession);
    CHECK_FALSE(ctx.route);
    CHECK(ctx.ended == "no-route: first frame is a CC, not a CR");
  }
  {
    FakeContext ctx;
    auto filter = f->create();
    const ByteVec cr = with_param(row("V3"), codec::param::kCalledTsap, ByteVec{'E', 'X', 'C', 'H', 'A', 'N', 'G', 'E', 'T', 'S', 'A', 'P', '1'});
    const auto r = run_filter(*filter, ctx, cr, Direction::kToUpstream);
    CHECK(r.verdict == Verdict::kContinue);
    CHECK(r.bytes == cr);  // routing changes nothing on the wire
    REQUIRE(ctx.route);
    CHECK(ctx.route->name == "r/exchange");
    CHECK(ctx.route->upstream.text == "192.0.2.20:102");
    CHECK_FALSE(ctx.route->source);
    CHECK(ctx.count_of("r.routed") == 1);
  }
  {
    FakeContext ctx;
    auto filter = f->create();
    // V5: calling 0100, called 0102 (S7 PG, rack 0, slot 2).
    REQUIRE(run_filter(*filter, ctx, row("V5"), Direction::kToUpstream).verdict == Verdict::kContinue);
    REQUIRE(ctx.route);
    CHECK(ctx.route->name == "r/s7");
    REQUIRE(ctx.route->source);
    CHECK(ctx.route->source->mode == conf::SourceMode::kFixed);
    CHECK(ctx.route->source->address->text == "192.0.2.5");
  }
}

TEST_CASE("tsap-route: no route and no default refuses the CR with a DR", "[filters][tsap-route]") {
  auto f = factory_from_toml("tsap-route", std::string("reason = 2\n") + kRoutes, nullptr, "r");
  REQUIRE(f);
  FakeContext ctx;
  auto filter = f->create();
  const ByteVec cr = row("V7");  // called "0-0ZYXW1": no route
  CHECK(run_filter(*filter, ctx, cr, Direction::kToUpstream).verdict == Verdict::kEndSession);
  CHECK_FALSE(ctx.route);
  REQUIRE(ctx.injected.size() == 1);
  CHECK(ctx.injected[0].first == Direction::kToClient);
  auto dr = codec::decode_frame(ctx.injected[0].second);
  REQUIRE(dr.ok());
  CHECK(dr->tpdu.type == codec::TpduType::kDR);
  CHECK(dr->tpdu.reason == 2);
  CHECK(dr->tpdu.dst_ref == codec::decode_frame(cr)->tpdu.src_ref);
  CHECK(ctx.ended == "no-route: called=0-0ZYXW1 calling=0-0ABCD0");
  CHECK(ctx.count_of("r.no-route") == 1);
  // A TSAP that reads "(none)" is quoted: bare, it says the CR had none.
  FakeContext none_ctx;
  auto g = f->create();
  const ByteVec none_cr = with_param(cr, codec::param::kCallingTsap, ByteVec{'(', 'n', 'o', 'n', 'e', ')'});
  CHECK(run_filter(*g, none_ctx, none_cr, Direction::kToUpstream).verdict == Verdict::kEndSession);
  CHECK(none_ctx.ended == "no-route: called=0-0ZYXW1 calling=\"(none)\"");
}

TEST_CASE("tsap-route: a TSAP given twice takes a route only if every copy matches", "[filters][tsap-route]") {
  // V5 (calling 0100, called 0102: route s7) with a second called TSAP 0999
  // appended: a peer reading the last copy would be dialled at 0999.
  codec::OwnedTpdu t = owned(row("V5"));
  t.params.push_back({codec::param::kCalledTsap, {0x09, 0x99}});
  const ByteVec twice = encode(t);
  // The filter `body` configures, run on `twice`: its verdict, and what the context saw.
  FakeContext ctx;
  const auto judge = [&](const std::string& body) {
    auto f = factory_from_toml("tsap-route", body, nullptr, "r");
    REQUIRE(f);
    auto filter = f->create();
    return run_filter(*filter, ctx, twice, Direction::kToUpstream).verdict;
  };
  SECTION("one copy matches no route: refused with a DR, the reason says why") {
    CHECK(judge(kRoutes) == Verdict::kEndSession);
    CHECK_FALSE(ctx.route);
    REQUIRE(ctx.injected.size() == 1);
    CHECK(codec::decode_frame(ctx.injected[0].second)->tpdu.type == codec::TpduType::kDR);
    CHECK(ctx.ended == "no-route: called=hex:0102 calling=hex:0100 (the CR gives the called TSAP 2 times)");
  }
  SECTION("with a default, the default takes it") {
    CHECK(judge(std::string("default = \"192.0.2.10:102\"\n") + kRoutes) == Verdict::kContinue);
    REQUIRE(ctx.route);
    CHECK(ctx.route->name == "r/default");
  }
  SECTION("a route naming both copies takes it") {
    CHECK(judge("[[route]]\nname = \"both\"\ncalled = [\"hex:0102\", \"hex:0999\"]\nupstream = \"192.0.2.40:102\"\n") ==
          Verdict::kContinue);
    REQUIRE(ctx.route);
    CHECK(ctx.route->name == "r/both");
  }
}

TEST_CASE("tsap-route: the default takes what no route does", "[filters][tsap-route]") {
  auto f = factory_from_toml("tsap-route", std::string("default = \"192.0.2.10:102\"\n") + kRoutes, nullptr, "r");
  REQUIRE(f);
  FakeContext ctx;
  auto filter = f->create();
  CHECK(run_filter(*filter, ctx, row("V7"), Direction::kToUpstream).verdict == Verdict::kContinue);
  REQUIRE(ctx.route);
  CHECK(ctx.route->name == "r/default");
  CHECK(ctx.route->upstream.text == "192.0.2.10:102");
  CHECK(ctx.count_of("r.default") == 1);
}

TEST_CASE("tsap-route: configuration errors, one each, with their key", "[filters][tsap-route]") {
  CHECK(errors_for("") == std::vector<std::string>{"test.toml:1:1: filter.r.route: expected at least one [[filter.r.route]] or a default"});
  CHECK(errors_for("route = 3\n") ==
        std::vector<std::string>{"test.toml:1:9: filter.r.route: expected [[filter.r.route]] tables (an array of tables, "
                                 "double brackets), found an integer"});
  CHECK(errors_for("route = [1]\n") ==
        std::vector<std::string>{"test.toml:1:10: filter.r.route[0]: expected a table with upstream and called or calling, found an integer"});
  const auto no_up = errors_for("[[route]]\ncalled = \"X\"\n");
  REQUIRE(no_up.size() == 1);
  CHECK(no_up[0].find("filter.r.route[0].upstream: required") != std::string::npos);
  const auto bad_tsap = errors_for("[[route]]\ncalled = \"hex:0\"\nupstream = \"192.0.2.1:102\"\n");
  REQUIRE(bad_tsap.size() == 1);
  CHECK(bad_tsap[0].find("filter.r.route[0].called") != std::string::npos);
  // An empty list would match nothing; read as "any", it routed every CR.
  const auto empty = errors_for("[[route]]\ncalled = []\nupstream = \"192.0.2.1:102\"\n");
  REQUIRE(empty.size() == 1);
  CHECK(empty[0] == "test.toml:2:10: filter.r.route[0].called: an empty list matches nothing: list at least one TSAP, "
                    "or leave the key out to match any");
  const auto not_string = errors_for("[[route]]\ncalling = [\"A\", 7]\nupstream = \"192.0.2.1:102\"\n");
  REQUIRE(not_string.size() == 1);
  CHECK(not_string[0].find("filter.r.route[0].calling[1]: expected a TSAP string, found an integer") != std::string::npos);
  const auto unknown = errors_for("[[route]]\ncaled = \"X\"\nupstream = \"192.0.2.1:102\"\n");
  bool suggested = false;
  for (const auto& e : unknown) suggested = suggested || e.find("filter.r.route[0].caled: unknown key; did you mean \"called\"?") != std::string::npos;
  CHECK(suggested);
  // A route's name is shown in the close line: no newline or space in it.
  const auto bad_name = errors_for("[[route]]\nname = \"a\\nreason=fake\"\ncalled = \"X\"\nupstream = \"192.0.2.1:102\"\n");
  REQUIRE(bad_name.size() == 1);
  CHECK(bad_name[0] == "test.toml:2:8: filter.r.route[0].name: route names may use only letters, digits, _, - and . (at most 64): "
                       "they appear in the close line (route=FILTER/NAME) and the logs");
  std::vector<conf::ConfigError> none;
  CHECK(factory_from_toml("tsap-route", "[[route]]\nname = \"Exchange-2.b_x\"\ncalled = \"X\"\nupstream = \"192.0.2.1:102\"\n",
                          &none, "r") != nullptr);
  CHECK(none.empty());
  // A route's upstream and source are checked as a listener's are.
  const std::string route = "[[route]]\ncalled = \"X\"\n";
  CHECK(errors_for("default = \"0.0.0.0:102\"\n") ==
        std::vector<std::string>{"test.toml:1:11: filter.r.default: 0.0.0.0:102 is the wildcard address, which cannot be "
                                 "connected to: write the upstream's own address"});
  CHECK(errors_for("default = \"[::ffff:0.0.0.0]:102\"\n") ==
        std::vector<std::string>{"test.toml:1:11: filter.r.default: [::ffff:0.0.0.0]:102 is the wildcard address, which cannot be "
                                 "connected to: write the upstream's own address"});
  CHECK(errors_for(route + "upstream = \"[::]:102\"\n") ==
        std::vector<std::string>{"test.toml:3:12: filter.r.route[0].upstream: [::]:102 is the wildcard address, which cannot "
                                 "be connected to: write the upstream's own address"});
  CHECK(errors_for(route + "upstream = \"192.0.2.1:102\"\nsource = \"auto\"\nsource_address = \"192.0.2.5\"\n") ==
        std::vector<std::string>{"test.toml:5:18: filter.r.route[0].source_address: only used with source = \"fixed\" "
                                 "(source is \"auto\"): set source = \"fixed\" or remove source_address"});
  CHECK(errors_for(route + "upstream = \"192.0.2.1:102\"\nsource = \"fixed\"\nsource_address = \"::1\"\n") ==
        std::vector<std::string>{"test.toml:5:18: filter.r.route[0].source_address: is an IPv6 address but upstream "
                                 "192.0.2.1:102 is IPv4: a connection can only come from an address of its own family"});
  CHECK(errors_for(route + "upstream = \"192.0.2.1:102\"\nsource = \"fixed\"\nsource_address = \"0.0.0.0\"\n") ==
        std::vector<std::string>{"test.toml:5:18: filter.r.route[0].source_address: 0.0.0.0 is the wildcard address: with "
                                 "source = \"fixed\" write the address to connect from (source = \"auto\" lets the kernel choose)"});
  // A route named "default" beside a default could not be told from it in the close line.
  CHECK(errors_for("default = \"192.0.2.9:102\"\n[[route]]\nname = \"default\"\ncalled = \"A\"\nupstream = \"192.0.2.1:102\"\n") ==
        std::vector<std::string>{"test.toml:3:8: filter.r.route[0].name: \"default\" names the filter's default in the close "
                                 "line (route=r/default): choose another name"});
  // Without a default the name is free; two routes may share a name (one logical route, two TSAP pairs).
  std::vector<conf::ConfigError> fine;
  CHECK(factory_from_toml("tsap-route",
                          "[[route]]\nname = \"default\"\ncalled = \"A\"\nupstream = \"192.0.2.1:102\"\n"
                          "[[route]]\nname = \"default\"\ncalling = \"B\"\nupstream = \"192.0.2.1:102\"\n",
                          &fine, "r") != nullptr);
  CHECK(fine.empty());
}

}  // namespace isoproxy::test
